"""``modelforge plan``: will this config fit this machine's memory, and what to change if not."""

from __future__ import annotations

from pathlib import Path

import click

from .output import dump_json


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a field (repeatable).")
@click.option("--gpu", "gpu_gb", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="Plan for an NVIDIA GPU (Ampere or newer) with this much memory instead of this machine.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object (for programs).")
@click.pass_context
def plan(ctx: click.Context, config: Path, overrides: tuple[str, ...], gpu_gb: float | None, as_json: bool) -> None:
    """Estimate the peak memory of training CONFIG from the model's config.json alone (no
    weights loaded) and compare it with this machine's GPU, or its memory on a CPU.

    Shows weights, LoRA and optimizer state, activations and logits, and, when it does not fit,
    the changes that make it fit. Exit code 0 when it fits, 3 when it does not (or cannot be
    planned), 2 for an invalid config. MODELFORGE_ASSUME_MEMORY_GB=N plans for N GiB.
    """
    from ..config import load_document, parse_overrides, resolve_config
    from ..errors import EnvironmentProblem
    from ..hardware import MemoryTarget, memory_target
    from ..plan import describe, make_plan
    from ..plugins import get_plugins
    from ..readiness import require_runnable
    from ..schema import effective_schema

    plugins = get_plugins()
    resolved = resolve_config(load_document(config), overrides=parse_overrides(overrides, effective_schema(
        plugins.registry)), plugins=plugins)
    require_runnable(resolved, plugins)
    if gpu_gb is not None:
        target = MemoryTarget("cuda", f"{gpu_gb:g} GiB GPU", gpu_gb, "--gpu", bf16=True, fp16=True)
    else:
        target = memory_target()
    result = make_plan(resolved, target, plugins=plugins)
    if as_json:
        dump_json(result.to_json())
    elif result.total_gb is None:
        raise EnvironmentProblem(result.notes[0] if result.notes else "the memory cannot be planned")
    else:
        for line in describe(result):
            click.echo(line)
    if result.fits is False or result.total_gb is None:
        ctx.exit(3)
