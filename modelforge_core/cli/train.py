"""``modelforge train``: fine-tune from a config, or resume an interrupted run."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from ..errors import UsageError
from .output import dump_json


@click.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a field (repeatable).")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the interrupted run in this folder from its last checkpoint.")
@click.option("--json", "as_json", is_flag=True,
              help="End with one JSON object holding run_dir, status and metrics (on stdout).")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--force", is_flag=True, help="Train even when the memory plan says the config cannot fit.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Refuse any dataset, model or output path outside this folder (for frontends).")
@click.option("--launcher", type=click.Choice(["accelerate"]),
              help="Run the same training in several processes under `accelerate launch` (prints the command).")
@click.option("--num-processes", type=click.IntRange(min=1),
              help="With --launcher accelerate: the number of processes (one per GPU).")
@click.option("--accelerate-config", type=click.Path(dir_okay=False, path_type=Path),
              help="With --launcher accelerate: an accelerate config file (see examples/accelerate/).")
def train(config: Path | None, overrides: tuple[str, ...], resume: Path | None, as_json: bool,
          quiet: bool, *, force: bool, data_root: Path | None, launcher: str | None,
          num_processes: int | None, accelerate_config: Path | None) -> None:
    """Fine-tune a model as CONFIG describes; the run folder is printed at the end.

    The dataset is checked row by row before any model is loaded. Ctrl-C (or SIGTERM) saves a
    checkpoint and stops; `modelforge train --resume RUN_DIR` continues from it.
    """
    from ..config import load_document, parse_overrides, resolve_config
    from ..orchestrate import train as run_training
    from ..plugins import get_plugins
    from ..runs import RunDir
    from ..schema import effective_schema
    from ..training import Display

    if launcher is None and (num_processes is not None or accelerate_config is not None):
        raise UsageError("--num-processes and --accelerate-config need --launcher accelerate")
    plugins = get_plugins()
    schema = effective_schema(plugins.registry)
    if resume is not None:
        if config is not None or overrides:
            raise UsageError("--resume takes the config saved in the run folder: give no CONFIG or --set")
        saved = RunDir.open(resume).config()
        resolved = resolve_config(saved, plugins=plugins, base_dir=resume, data_root=data_root)
        resolved.sources.update({k: "run" for k in resolved.sources})
    else:
        if config is None:
            raise UsageError("give a CONFIG file, or --resume RUN_DIR")
        resolved = resolve_config(load_document(config), overrides=parse_overrides(overrides, schema),
                                  plugins=plugins, data_root=data_root)
    from ..readiness import require_runnable

    require_runnable(resolved, plugins)  # exit 3 before anything heavy loads
    if launcher is not None:
        from ..launch import LAUNCHER_OPTIONS, forwarded_arguments, launch_training

        ctx = click.get_current_context()
        ctx.exit(launch_training(
            resolved, forwarded_arguments(ctx.command, ctx.params, drop=LAUNCHER_OPTIONS),
            num_processes=num_processes, accelerate_config=accelerate_config, plugins=plugins,
            debug=bool(ctx.find_root().obj and ctx.find_root().obj.get("debug")),
            announce=lambda text: click.echo(text, err=True)))
    # Libraries print banners and notices on stdout; keep stdout for our own result (--json).
    with contextlib.redirect_stdout(sys.stderr):
        outcome = run_training(resolved, plugins=plugins, resume=resume, display=Display(enabled=not quiet),
                               force=force)
    if not outcome.main_process:
        return
    if as_json:
        dump_json({"run_dir": str(outcome.run_dir), "status": outcome.status, "metrics": outcome.metrics})
        return
    click.secho(f"finished: {outcome.run_dir}", fg="green", bold=True)
    before, after = outcome.metrics.get("before", {}), outcome.metrics.get("after", {})
    for key in sorted(set(before) | set(after)):
        if key.endswith(("_runtime", "_per_second")):
            continue
        old = f"{before[key]:.4g}" if key in before else "-"
        new = f"{after[key]:.4g}" if key in after else "-"
        click.echo(f"  {key:<28} {old:>10} -> {new}")
    click.echo(f"  adapter: {outcome.run_dir / 'adapter'}")
