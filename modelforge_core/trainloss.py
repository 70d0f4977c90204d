"""``train_loss`` over every step of a run, however many times it was interrupted and resumed.

The trainer's own ``training_loss`` averages only the steps of the current process: after a
resume it forgets the steps before the checkpoint, and a resume from the last checkpoint reports
0.0. The steps before the checkpoint are in the checkpoint's ``trainer_state.json``: its
``log_history`` holds the mean loss of every logging interval, and the core's callback makes the
trainer log at every step it saves a checkpoint (:func:`log_when_saving`), so the intervals cover
every step up to the checkpoint. Summing ``loss x interval length`` up to the resumed step, plus
the current process's mean over its own steps, gives the mean over all steps.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def log_when_saving(control: Any) -> None:
    """Call from ``on_step_end`` (after the trainer decided to save): a checkpoint's log history
    then covers every step before it."""
    if control.should_save:
        control.should_log = True


def loss_sum_before(log_history: Sequence[Mapping[str, Any]], step: int) -> float:
    """The sum of the per-step losses of steps ``1..step``, from the logged interval means."""
    total = 0.0
    last = 0
    for record in sorted((r for r in log_history if "loss" in r and "step" in r), key=lambda r: int(r["step"])):
        current = int(record["step"])
        if current <= last or current > step:
            continue
        total += float(record["loss"]) * (current - last)
        last = current
    return total


def train_loss_over_all_steps(trainer: Any, output: Any, resumed_at: int) -> float:
    """The mean training loss over every step of the run.

    :param trainer: the trainer after ``train()`` (its ``state.log_history`` includes the
        checkpoint's history on a resume).
    :param output: what ``train()`` returned (``training_loss``: mean over this process's steps).
    :param resumed_at: the step of the checkpoint this process resumed from (0 for a new run).
    """
    steps = int(trainer.state.global_step)
    if steps <= 0:
        return float(output.training_loss)
    if resumed_at <= 0:
        return float(output.training_loss)
    own_steps = steps - resumed_at
    own_sum = float(output.training_loss) * own_steps if own_steps > 0 else 0.0
    return (loss_sum_before(trainer.state.log_history, resumed_at) + own_sum) / steps


def resumed_step(checkpoint: Any) -> int:
    """The step of a ``checkpoint-<step>`` path (0 for ``None``)."""
    if checkpoint is None:
        return 0
    step = str(checkpoint).rstrip("/").rsplit("-", 1)[-1]
    return int(step) if step.isdigit() else 0
