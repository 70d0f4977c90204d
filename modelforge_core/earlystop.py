"""Early stopping: stop a training whose watched metric stopped improving, keep the best
checkpoint, and save the best adapter.

The config names the metric (``early_stopping_metric``), its direction, the patience and the
smallest change that counts as an improvement. Which metrics can be watched is the components'
call: a task or strategy lists the metrics it reports at every evaluation during training in
``training_metrics`` (with their direction), and the effective schema allows only those.

How it works, for any trainer built from ``job.trainer_arguments`` and ``job.callbacks``
(sft, qlora, dpo, third-party strategies): the trainer arguments ask transformers to keep track
of the best evaluation and to load the best checkpoint at the end (``load_best_model_at_end``,
``metric_for_best_model``, ``greater_is_better``), and :func:`make_callback` counts the
evaluations without improvement and stops the training after ``early_stopping_patience`` of
them. The "after" evaluation and the saved adapter are then those of the best checkpoint. The
schema requires ``save_steps`` to be null with early stopping, so every evaluation has its
checkpoint; a resumed run replays the evaluations it finds in the trainer state.

Importing this module is cheap; transformers is imported inside :func:`make_callback`.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .api import Strategy, Task
from .errors import Problem, RunError, ValidationFailed

#: Why a run stopped early, as ``status.json`` and ``modelforge runs`` say it.
STOP_REASON = "early_stopping"


def enabled(config: Mapping[str, Any]) -> bool:
    """Whether the config asks for early stopping."""
    return bool(config.get("early_stopping_metric"))


def direction(config: Mapping[str, Any], task: Task, strategy: Strategy) -> str:
    """``"min"`` or ``"max"``: the config's choice, or the direction the components declare."""
    chosen = str(config.get("early_stopping_direction") or "auto")
    if chosen in ("min", "max"):
        return chosen
    metric = str(config["early_stopping_metric"])
    declared = {**task.training_metrics, **strategy.training_metrics}
    return "max" if declared.get(metric) == "max" else "min"


def optimizer_steps(config: Mapping[str, Any], train_rows: int, processes: int = 1) -> int:
    """How many optimizer steps the training will run."""
    if int(config["max_steps"]) > 0:
        return int(config["max_steps"])
    batches = math.ceil(train_rows / (int(config["per_device_train_batch_size"]) * max(processes, 1)))
    per_epoch = max(1, batches // int(config["gradient_accumulation_steps"]))
    return math.ceil(per_epoch * float(config["num_train_epochs"]))


def check_evaluations(config: Mapping[str, Any], train_rows: int, processes: int = 1) -> None:
    """Refuse early stopping that could never act: no evaluation before the training ends.

    The schema checks what it can (evaluation data, ``save_steps``); this needs the number of
    training rows, so it runs when the data is known, before any model loads.
    """
    if not enabled(config):
        return
    steps = optimizer_steps(config, train_rows, processes)
    if int(config["eval_steps"]) > steps:
        raise ValidationFailed([Problem(
            "eval_steps",
            f"early stopping needs evaluations during training, but eval_steps {config['eval_steps']} is more "
            f"than the {steps} optimizer steps of this training",
            hint=f"set eval_steps to at most {max(1, steps // 4)} so the metric is evaluated several times",
            code="early_stopping")])


def trainer_arguments(config: Mapping[str, Any], task: Task, strategy: Strategy) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords that make the trainer keep and reload the best checkpoint."""
    if not enabled(config):
        return {}
    return {"load_best_model_at_end": True, "metric_for_best_model": str(config["early_stopping_metric"]),
            "greater_is_better": direction(config, task, strategy) == "max"}


@dataclass
class Outcome:
    """What early stopping did, for ``status.json`` and ``metrics.json``."""

    metric: str
    best_step: int | None = None
    best_value: float | None = None
    stopped_at: int | None = None
    message: str | None = None

    def status_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"best_step": self.best_step, "best_metric": {self.metric: self.best_value}}
        if self.stopped_at is not None:
            fields.update(stop_reason=STOP_REASON, stop_message=self.message, stopped_at=self.stopped_at)
        return fields


def make_callback(config: Mapping[str, Any], task: Task, strategy: Strategy,
                  say: Callable[[str], None], stage: Callable[[], str] = lambda: "during") -> Any:
    """The ``TrainerCallback`` that counts evaluations without improvement and stops the run.

    Its ``outcome`` (an :class:`Outcome`) says the best step and, when it stopped the run, why.
    ``stage`` names the run's current stage (``job.stage``): only evaluations ``"during"``
    training count, never a strategy's evaluation before or after it.
    """
    from transformers import TrainerCallback

    from .training import with_perplexity

    metric = str(config["early_stopping_metric"])
    patience = int(config["early_stopping_patience"])
    min_delta = float(config["early_stopping_min_delta"])
    higher = direction(config, task, strategy) == "max"

    class EarlyStopping(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.outcome = Outcome(metric)
            self.waited = 0
            self.replayed = False

        def better(self, value: float, than: float | None, by: float = 0.0) -> bool:
            if than is None:
                return True
            return (value - than > by) if higher else (than - value > by)

        def observe(self, step: int, value: float) -> None:
            best = self.outcome.best_value
            if self.better(value, best, min_delta):
                self.waited = 0
            else:
                self.waited += 1
            if self.better(value, best):
                self.outcome.best_value, self.outcome.best_step = value, step

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # A resumed run: count the evaluations of the first attempt again.
            if self.replayed:
                return
            self.replayed = True
            for entry in state.log_history:
                step = int(entry.get("step") or 0)
                numbers = with_perplexity({k: float(v) for k, v in entry.items() if isinstance(v, (int, float))})
                if step > 0 and metric in numbers:
                    self.observe(step, numbers[metric])

        def on_evaluate(self, args: Any, state: Any, control: Any,
                        metrics: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if stage() != "during" or not metrics:
                return
            # The trainer picks the best checkpoint from this same dict: add what the core derives.
            metrics.update({k: v for k, v in with_perplexity(
                {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}).items()
                if k not in metrics})
            if metric not in metrics:
                raise RunError(f"early_stopping_metric {metric!r} is not among the metrics this evaluation "
                               f"reported ({', '.join(sorted(metrics))}); a component declares it in "
                               "training_metrics but does not report it")
            self.observe(int(state.global_step), float(metrics[metric]))
            if self.waited >= patience and not control.should_training_stop:
                control.should_training_stop = True
                self.outcome.stopped_at = int(state.global_step)
                self.outcome.message = (
                    f"early stopping at step {state.global_step}: {metric} did not improve by more than "
                    f"{min_delta:g} for {patience} evaluation(s); best {self.outcome.best_value:.4g} at step "
                    f"{self.outcome.best_step}, whose checkpoint becomes the adapter")
                say(self.outcome.message)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # The trainer's own record of the best checkpoint is the one it reloads.
            best_step = getattr(state, "best_global_step", None)
            if best_step:
                self.outcome.best_step = int(best_step)
                if state.best_metric is not None:
                    self.outcome.best_value = float(state.best_metric)

    return EarlyStopping()
