"""``modelforge validate``: check a config (and optionally its dataset) without loading a model."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError, UsageError, ValidationFailed
from .output import dump_json, print_problems, print_resolved, problems_json


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field (repeatable); a component's options as NAME.OPTION=VALUE.")
@click.option("--resolved", is_flag=True, help="Print the full resolved config with each value's source.")
@click.option("--data", "check_data", is_flag=True, help="Also check the dataset row by row.")
@click.option("--show", "show_rows", type=click.IntRange(min=0), default=0, metavar="N",
              help="With --data: print N rows as the model sees them (chat template, trained tokens "
                   "marked, token counts against max_seq_length). Loads the tokenizer.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (for frontends).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Refuse any dataset, model or output path outside this folder (for frontends).")
def validate(config: Path, overrides: tuple[str, ...], resolved: bool, check_data: bool,
             as_json: bool, data_root: Path | None = None, show_rows: int = 0) -> None:
    """Check CONFIG against the schema and the installed plugins.

    Reports every problem at once, each with its JSON path and line. Exit code 0 when valid,
    2 when not. The verdict is the schema's, the same in every environment: a valid config whose
    plugin or package is missing here is valid, with a warning saying what training needs.
    """
    from ..config import load_document, parse_overrides, resolve_config
    from ..plugins import get_plugins
    from ..schema import effective_schema

    if show_rows and not check_data:
        raise UsageError("--show needs --data")
    plugins = get_plugins()
    try:
        document = load_document(config)
        parsed = parse_overrides(overrides, effective_schema(plugins.registry))
        result = resolve_config(document, overrides=parsed, plugins=plugins, data_root=data_root)
        data_summary = None
        if check_data:
            from ..data import check_dataset

            data_summary = check_dataset(result, plugins=plugins)
    except ValidationFailed as failure:
        if as_json:
            dump_json({**problems_json(failure), "file": str(config)})
        else:
            print_problems(failure)
        raise SystemExit(2) from None
    except ConfigError as exc:
        if as_json:
            dump_json({"valid": False, "file": str(config), "error_count": 1, "errors": [
                {"path": "(root)", "message": str(exc), "code": "parse", "file": exc.file,
                 "line": exc.line, "column": exc.column}]})
            raise SystemExit(2) from None
        raise
    except UsageError as exc:
        if as_json:  # a frontend reads stdout: keep it JSON for a bad --set too
            dump_json({"valid": False, "file": str(config), "error_count": 1, "errors": [
                {"path": "(root)", "message": str(exc), "code": "usage", "file": "--set"}]})
            raise SystemExit(2) from None
        raise
    from ..readiness import environment_problems

    # Valid is the schema's verdict; what this environment lacks to train it is a warning.
    warnings = environment_problems(result, plugins)
    preview = None
    if data_summary is not None and show_rows:
        from ..preview import show

        preview = show(result, data_summary, show_rows, plugins=plugins)
    if as_json:
        out: dict[str, object] = {"valid": True, "file": str(config), "warnings": warnings}
        if preview is not None:
            out["preview"] = preview.to_json()
        if resolved:
            out.update(result.to_json())
        if data_summary is not None:
            out["data"] = data_summary.to_json()
        dump_json(out)
        return
    summary = f"{result['task']} / {result['strategy']} / {result['provider']}, profile {result['compute_specs']}"
    click.secho(f"{config}: OK ({summary})", fg="green")
    for warning in warnings:
        click.secho(f"warning: {warning}", fg="yellow")
    if warnings:
        click.echo("  valid, but `modelforge train` refuses to start it in this environment until then (exit 3)")
    if data_summary is not None:
        for note in data_summary.notes:
            click.secho(f"note: {note}", fg="yellow", err=True)
        click.echo(f"{data_summary.file}: {data_summary.describe()}")
    if preview is not None:
        click.echo(preview.text(color=True))  # click drops the colour when stdout is no terminal
    if resolved:
        print_resolved(result.data, result.sources)
