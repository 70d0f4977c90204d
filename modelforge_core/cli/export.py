"""``modelforge export``: the adapter merged into its base, checked for parity, with a model card."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from .output import dump_json

DTYPE_CHOICES = ("float32", "float16", "bfloat16")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--merge", is_flag=True, help="Merge the adapter into the base model (the export this command makes).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="The folder to create [default: RUN_DIR/merged]; never overwritten.")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES),
              help="Weights dtype of the merged model [default: the precision the run trained in].")
@click.option("--tolerance", type=click.FloatRange(min=0.0),
              help="Largest absolute logit difference accepted by the parity check "
                   "[default: 1e-3 for float32, 5e-2 for float16, 0.25 for bfloat16].")
@click.option("--verify", type=click.Path(file_okay=False, path_type=Path),
              help="Only check an exported folder against the run's base + adapter (no export).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export(run_dir: Path, merge: bool, out: Path | None, dtype: str | None, tolerance: float | None,
           verify: Path | None, as_json: bool) -> None:
    """Export a run as one model that transformers loads without peft.

    `--merge` merges the adapter into the base (a 4-bit or 8-bit base is reloaded unquantized
    in --dtype first), saves safetensors, tokenizer, chat template and generation config, then
    checks parity: the merged model, reloaded with the plain AutoModelFor* class, must give the
    same logits as base + adapter on prompts from the eval split, within --tolerance. If not,
    the folder is renamed OUT.failed and the command fails. A model card (README.md) goes with it.
    """
    from ..export import AUTO_CLASSES, ExportFailed, export_merged, verify_export
    from ..training import Display

    display = Display(enabled=not as_json)
    if verify is not None:
        if merge or out is not None:
            raise UsageError("--verify checks an existing export: give no --merge or --out with it")
        report = verify_export(run_dir, verify, dtype=dtype, tolerance=tolerance)
        if as_json:
            dump_json({"folder": str(verify), "parity": report.to_json()})
            if not report.passed:
                raise click.exceptions.Exit(ExportFailed.exit_code)
        elif not report.passed:
            raise ExportFailed(f"{verify} does not reproduce the run's base + adapter: {report.describe()}")
        else:
            click.echo(report.describe())
        return
    if not merge:
        raise UsageError("give --merge: the export merges the adapter into the base model "
                         "(the adapter alone is already in RUN_DIR/adapter, loadable with peft)")
    result = export_merged(run_dir, out=out, dtype=dtype, tolerance=tolerance, say=display.message)
    if as_json:
        dump_json(result.to_json())
        return
    click.echo(result.parity.describe())
    click.secho(f"exported: {result.out_dir}", fg="green", bold=True)
    click.echo(f"  load it with transformers alone: {AUTO_CLASSES[result.head]}.from_pretrained("
               f"{str(result.out_dir)!r}); the model card is {result.out_dir / 'README.md'}")
