"""``modelforge runs``: the runs under a runs folder, read from the folders themselves."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from .output import dump_json

STATUS_COLOURS = {"finished": "green", "running": "cyan", "failed": "red", "interrupted": "yellow",
                  "stale": "magenta", "unknown": "white", "damaged": "red"}


def _short_time(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M")


def _model_name(model: str | None) -> str:
    if not model:
        return "-"
    return Path(model.rstrip("/")).name if Path(model).is_absolute() or model.startswith(".") else model


@click.command()
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="The runs folder to list.")
@click.option("--json", "as_json", is_flag=True, help="Print every run as JSON (full metrics included).")
def runs(root: Path, as_json: bool) -> None:
    """List every run under the runs folder: status, task, strategy, provider, base model,
    key metrics, start time and duration.

    Everything is read from the run folders. A run whose status says running but whose
    process is gone is shown as `stale`: resume it with `modelforge train --resume RUN_DIR`.
    """
    from ..runlist import format_duration, list_runs

    found = list_runs(root)
    if as_json:
        dump_json({"root": str(root), "runs": [run.to_json() for run in found]})
        return
    if not found:
        click.echo(f"no runs under {root}")
        return
    header = ("RUN", "STATUS", "TASK", "STRATEGY", "PROVIDER", "MODEL", "STARTED", "DURATION", "METRICS")
    rows = []
    for run in found:
        metrics = []
        for key, value in run.key_metrics().items():
            before = run.metrics_before.get(key)
            metrics.append(f"{key} {before:.4g}->{value:.4g}" if isinstance(before, (int, float))
                           else f"{key} {value:.4g}")
        rows.append((run.name, run.status, run.task or "-", run.strategy or "-", run.provider or "-",
                     _model_name(run.model), _short_time(run.started_at), format_duration(run.duration_s),
                     ", ".join(metrics) or "-"))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]

    def line(row: tuple[str, ...], status_colour: str | None = None) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        if status_colour:
            cells[1] = click.style(cells[1], fg=status_colour)
        return "  ".join([*cells, row[-1]])

    click.secho(line(header), bold=True)
    for run, row in zip(found, rows, strict=True):
        click.echo(line(row, STATUS_COLOURS.get(run.status)))
        if run.status in ("failed", "stale", "damaged") and (run.error or run.note):
            click.secho(f"    {run.error or run.note}", dim=True)
        if run.stop_reason or run.best_step is not None:
            stop = f"stopped at step {run.global_step}: {run.stop_reason}" if run.stop_reason else "ran to the end"
            click.secho(f"    {stop}; adapter from the best step {run.best_step}", dim=True)
