"""``modelforge doctor``: what this machine can train with, and the ``compute_specs`` it suits."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from .output import dump_json

if TYPE_CHECKING:
    from ..hardware import Machine
    from ..quantization import FourBitTrainingCheck


def provider_report(device: str) -> dict[str, dict[str, Any]]:
    """Each installed provider: whether it can train on ``device`` here and, if not, why (its
    :meth:`~modelforge_core.api.Component.check_environment` and :attr:`~modelforge_core.api.Provider.devices`)."""
    from ..hardware import DEVICE_WORDS
    from ..plugins import get_plugins

    report: dict[str, dict[str, Any]] = {}
    for name, provider in sorted(get_plugins().registry.providers.items()):
        problem = provider.check_environment()
        if problem is None and provider.devices is not None and device not in provider.devices:
            where = provider.devices_description or ", ".join(sorted(provider.devices))
            problem = f"it does not run on {DEVICE_WORDS.get(device, device)} (it runs on {where})"
        report[name] = {"ready": problem is None, "problem": problem, "multi_process": provider.multi_process,
                        "devices": None if provider.devices is None else sorted(provider.devices)}
    return report


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object (for programs).")
def doctor(as_json: bool) -> None:
    """Report the GPUs (CUDA, Apple MPS) or CPU, memory, bf16/fp16 support, bitsandbytes, whether
    each installed provider can train here, the ML library versions, and the compute_specs profile
    this machine suits, with why.

    MODELFORGE_ASSUME_MEMORY_GB=N replaces the training device's memory with N GiB.
    """
    from ..hardware import LOW_END_BELOW_GB, MID_RANGE_BELOW_GB, detect_machine
    from ..profiles import load_profile

    machine = detect_machine()
    report = machine.to_json()
    training = four_bit_training(machine)
    if training is not None:
        report["bitsandbytes"]["training"] = asdict(training)
    report["providers"] = provider_report(machine.target.device)
    if as_json:
        dump_json(report)
        return
    target = machine.target
    if machine.accelerators:
        for acc in machine.accelerators:
            memory = f"{acc.memory_gb:.1f} GiB" if acc.memory_gb is not None else "memory unknown"
            capability = f", compute capability {acc.compute_capability}" if acc.compute_capability else ""
            click.echo(f"accelerator    {acc.kind}:{acc.index} {acc.name}, {memory}{capability}, "
                       f"bf16 {'yes' if acc.bf16 else 'no'}, fp16 {'yes' if acc.fp16 else 'no'}")
    else:
        click.echo("accelerator    none: training runs on the CPU")
    total, available = machine.system_memory_gb, machine.available_memory_gb
    memory = f"{total:.1f} GiB" if total else "unknown"
    if available:
        memory += f" ({available:.1f} GiB available)"
    click.echo(f"system memory  {memory}")
    click.echo(f"CPU cores      {machine.cpu_count}")
    if report["assumed_memory_gb"] is not None:
        click.echo(f"assumed        {target.memory_gb:g} GiB for the {target.device} (MODELFORGE_ASSUME_MEMORY_GB)")
    bnb = machine.bitsandbytes
    if not bnb.installed:
        click.echo("bitsandbytes   not installed: use_4bit/use_8bit cannot run")
    else:
        state = "4-bit runs" if bnb.runs else f"cannot run here ({bnb.reason})"
        click.echo(f"bitsandbytes   {bnb.version}, {state} on {bnb.device}")
    if training is not None:
        verdict = "works" if training.works else "FAILS"
        click.echo(f"4-bit training {verdict} on {training.device}: {training.reason}")
    for name, state in report["providers"].items():
        verdict = "can train here" if state["ready"] else f"cannot train here: {state['problem']}"
        click.echo(f"provider       {name}: {verdict}")
    click.echo("libraries      " + ", ".join(f"{name} {version or '-'}" for name, version in machine.versions.items()))
    click.echo(f"precision      {report['precision']} for profiles that say \"auto\" (all the built-in ones)")
    rec = machine.recommendation
    profile = load_profile(rec.profile)
    click.secho(f"compute_specs  {rec.profile}", fg="green", bold=True)
    click.echo(f"  why: {rec.reason} (rule: below {LOW_END_BELOW_GB} GiB of GPU memory low_end, below "
               f"{MID_RANGE_BELOW_GB} mid_range, else high_end; no GPU low_end)")
    click.echo(f"  {profile['description']}")
    for task, models in profile.get("recommended_models", {}).items():
        click.echo(f"  {task}: {', '.join(models)}")


def four_bit_training(machine: Machine) -> FourBitTrainingCheck | None:
    """A real tiny 4-bit training on the training device, when bitsandbytes runs there."""
    if not machine.bitsandbytes.runs:
        return None
    from ..quantization import check_4bit_training

    return check_4bit_training(machine.target.device)
