"""Internal: the training machinery behind the trainer kit. Plugins import
:mod:`modelforge_core.trainer` instead; nothing here is public API and it may change in any
release.

It holds what the core itself uses: config -> trainer arguments (:func:`trainer_arguments`,
reached by strategies through ``job.trainer_arguments``), the core's callback (progress, JSONL
log, lifecycle hooks, interruption, evaluation stages), hardware checks. The names that moved
to :mod:`modelforge_core.trainer` (``run_supervised``, ``evaluate_stage``...) are imported back
here for code written against 0.1.

Importing this module is cheap; torch and transformers are imported inside functions.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from .api import RunInfo
from .errors import EnvironmentProblem

# Moved to errors.py and the trainer kit; imported back (explicit re-exports) for code written
# against 0.1. New code imports modelforge_core.trainer.
from .errors import Interrupted as Interrupted  # noqa: PLC0414
from .speedups import SPEED_FIELDS, machine_problems, trainer_options
from .trainer import NOISE_SUFFIXES as NOISE_SUFFIXES  # noqa: PLC0414
from .trainer import choose_max_length as choose_max_length  # noqa: PLC0414
from .trainer import clean_metrics
from .trainer import evaluate_stage as evaluate_stage  # noqa: PLC0414
from .trainer import longest_example as longest_example  # noqa: PLC0414
from .trainer import prepare_trainer as prepare_trainer  # noqa: PLC0414
from .trainer import quiet_libraries as quiet_libraries  # noqa: PLC0414
from .trainer import run_supervised as run_supervised  # noqa: PLC0414
from .trainer import with_perplexity as with_perplexity  # noqa: PLC0414

if TYPE_CHECKING:
    from .plugins import Hooks, Plugins
    from .runs import RunDir

#: Where each training field of the config goes in ``transformers.TrainingArguments``
#: (or TRL's config subclasses). Fields consumed elsewhere are listed in
#: :data:`FIELDS_USED_ELSEWHERE`; a test checks that together they cover the schema.
TRAINER_FIELDS: Mapping[str, str] = {
    "num_train_epochs": "num_train_epochs",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "per_device_eval_batch_size": "per_device_eval_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_checkpointing": "gradient_checkpointing",
    "max_grad_norm": "max_grad_norm",
    "learning_rate": "learning_rate",
    "weight_decay": "weight_decay",
    "optim": "optim",
    "lr_scheduler_type": "lr_scheduler_type",
    "max_steps": "max_steps",
    "warmup_ratio": "warmup_steps",
    "group_by_length": "train_sampling_strategy",
    "fp16": "fp16",
    "bf16": "bf16",
    "eval_steps": "eval_steps",
    "save_steps": "save_steps",
    "logging_steps": "logging_steps",
    "seed": "seed",
    "run_name": "run_name",
}

#: Fields that do not become trainer arguments, and who uses them.
FIELDS_USED_ELSEWHERE: Mapping[str, str] = {
    "task": "core: selects the task plugin",
    "model_name": "provider: the model to load",
    "provider": "core: selects the provider plugin",
    "strategy": "core: selects the strategy plugin",
    "dataset": "core: the rows read and checked",
    "compute_specs": "core: the profile that fills unset values",
    "lora_r": "provider: LoraConfig.r",
    "lora_alpha": "provider: LoraConfig.lora_alpha",
    "lora_dropout": "provider: LoraConfig.lora_dropout",
    "lora_target_modules": "provider: LoraConfig.target_modules",
    "use_4bit": "provider: BitsAndBytesConfig.load_in_4bit",
    "use_8bit": "provider: BitsAndBytesConfig.load_in_8bit",
    "bnb_4bit_compute_dtype": "provider: BitsAndBytesConfig.bnb_4bit_compute_dtype",
    "bnb_4bit_quant_type": "provider: BitsAndBytesConfig.bnb_4bit_quant_type",
    "use_nested_quant": "provider: BitsAndBytesConfig.bnb_4bit_use_double_quant",
    "packing": "strategy: SFTConfig.packing, best-fit and padding-free (speedups.trainer_options)",
    "max_seq_length": "strategy: SFTConfig.max_length (and the provider, for providers that load with it)",
    "eval_split": "core: the seeded train/eval split",
    "output_dir": "core: the run folder",
    "trust_remote_code": "provider: from_pretrained(trust_remote_code=...)",
    "allow_pickle_weights": "provider: from_pretrained(use_safetensors=...)",
    **SPEED_FIELDS,
    "early_stopping_metric": "core: earlystop.py (metric_for_best_model and its callback)",
    "early_stopping_direction": "core: earlystop.py (greater_is_better)",
    "early_stopping_patience": "core: earlystop.py callback",
    "early_stopping_min_delta": "core: earlystop.py callback",
}


# --- hardware ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hardware:
    """What the training device can do."""

    device: str  # "cuda", "mps" or "cpu"
    name: str
    bf16: bool
    fp16: bool
    process_count: int = 1


def detect_hardware() -> Hardware:
    import torch

    if torch.cuda.is_available():
        from .hardware import cuda_bf16_native

        return Hardware("cuda", torch.cuda.get_device_name(0), cuda_bf16_native(), True)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return Hardware("mps", "Apple MPS", True, True)
    return Hardware("cpu", "CPU", True, False)


def check_precision(config: Mapping[str, Any], hardware: Hardware, plugins: Plugins | None = None) -> None:
    """Refuse what the hardware cannot run, one sentence each: fp16/bf16 without support,
    4-bit/8-bit where bitsandbytes cannot run, unsloth on Apple MPS.

    First, when the config's profile leaves precision to the hardware (``"precision": "auto"``
    and the user set neither fp16 nor bf16), choose it for this hardware: a resolved config is
    updated in place, with the profile as the source (see ``hardware.apply_auto_precision``).
    """
    from .hardware import apply_auto_precision, bitsandbytes_status, precision_problems

    bf16 = hardware.bf16  # detect_hardware applies the one rule (hardware.cuda_bf16_native)
    apply_auto_precision(config, hardware.device, bf16)
    quantized = config.get("use_4bit") or config.get("use_8bit")
    problems = precision_problems(config, device=hardware.device, device_name=hardware.name, fp16=hardware.fp16,
                                  bf16=bf16, bitsandbytes=bitsandbytes_status(hardware.device) if quantized else None,
                                  plugins=plugins)
    problems += machine_problems(config, hardware.device)
    if problems:
        raise EnvironmentProblem("\n".join(problems))


# --- trainer arguments ---------------------------------------------------------------------

def _argument_fields(args_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(args_class)}


def trainer_arguments(config: Mapping[str, Any], *, output_dir: str, logging_dir: str | None,
                      has_eval: bool, args_class: type | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``args_class`` (``TrainingArguments`` or a TRL config) from the
    config's training fields (see :data:`TRAINER_FIELDS`), then ``overrides``.

    Handles the names that moved between transformers releases (``group_by_length`` became
    ``train_sampling_strategy``, ``warmup_ratio`` folded into ``warmup_steps``).
    """
    import os

    if args_class is None:
        from transformers import TrainingArguments

        args_class = TrainingArguments
    fields = _argument_fields(args_class)
    save_steps = config.get("save_steps") or config["eval_steps"]
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "num_train_epochs": config["num_train_epochs"],
        "per_device_train_batch_size": config["per_device_train_batch_size"],
        "per_device_eval_batch_size": config["per_device_eval_batch_size"],
        "gradient_accumulation_steps": config["gradient_accumulation_steps"],
        "gradient_checkpointing": config["gradient_checkpointing"],
        "max_grad_norm": config["max_grad_norm"],
        "learning_rate": config["learning_rate"],
        "weight_decay": config["weight_decay"],
        "optim": config["optim"],
        "lr_scheduler_type": config["lr_scheduler_type"],
        "max_steps": config["max_steps"],
        "fp16": config["fp16"],
        "bf16": config["bf16"],
        "logging_steps": config["logging_steps"],
        "logging_first_step": True,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": config["eval_steps"],
        "save_strategy": "steps",
        "save_steps": save_steps,
        "seed": config["seed"],
        "data_seed": config["seed"],
        "run_name": config.get("run_name") or os.path.basename(output_dir.rstrip("/")),
        "report_to": ["tensorboard"],
        "disable_tqdm": True,
        "save_only_model": False,
        "remove_unused_columns": True,
    }
    if "activation_checkpointing" in fields:
        # transformers 5.2x renamed gradient_checkpointing; 5.17 knows only the old name.
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
        if config["gradient_checkpointing"]:
            kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    elif config["gradient_checkpointing"]:
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if "train_sampling_strategy" in fields:
        kwargs["train_sampling_strategy"] = "group_by_length" if config["group_by_length"] else "random"
    else:
        kwargs["group_by_length"] = config["group_by_length"]
    if "warmup_ratio" in fields:
        kwargs["warmup_ratio"] = config["warmup_ratio"]
    else:
        # A float below 1 is a ratio of the total steps; 1.0 would read as "one step".
        kwargs["warmup_steps"] = min(float(config["warmup_ratio"]), 0.999999)
    if logging_dir is not None:
        # transformers 5 reads the TensorBoard folder from the environment only; each run
        # (several may share a process: tests, the API worker) logs into its own folder.
        os.environ["TENSORBOARD_LOGGING_DIR"] = logging_dir
        if "logging_dir" in fields:
            kwargs["logging_dir"] = logging_dir
    import torch

    if not torch.cuda.is_available() and "use_cpu" in fields:
        kwargs["use_cpu"] = True
    kwargs.update(trainer_options(config, fields))
    kwargs.update(overrides)
    return {k: v for k, v in kwargs.items() if k in fields}


# --- callbacks -----------------------------------------------------------------------------

class StopFlag:
    """Set by SIGINT/SIGTERM while training; the callback then saves and stops."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None

    def set(self, name: str) -> None:
        self.signal_name = name
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


@contextmanager
def catch_interruptions(flag: StopFlag) -> Iterator[StopFlag]:
    """Turn the first SIGINT/SIGTERM into a graceful stop (checkpoint, then exit 130);
    a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set(signal.Signals(signum).name)
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint, then stopping "
              "(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[int(sig)] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for number, old in previous.items():
            # In the CLI, after a stop, the run folder is final: a further Ctrl-C while the
            # command reports and exits ends it with 130, never a KeyboardInterrupt traceback.
            signal.signal(number, _leave_with_130 if flag.is_set() and EXIT_QUIETLY_AFTER_A_STOP else old)


#: Set by the console script (``modelforge_core.cli.run``): a process that only runs one command.
EXIT_QUIETLY_AFTER_A_STOP = False


def _leave_with_130(signum: int, frame: FrameType | None) -> None:
    import os

    os._exit(130)


class Display:
    """Progress on a terminal (a bar with step, loss, learning rate and ETA), plain log lines
    otherwise. Writes to stderr so ``--json`` output on stdout stays clean."""

    def __init__(self, *, enabled: bool = True, tty: bool | None = None, prefix: str = "") -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.prefix = prefix
        self.bar: Any = None
        self.total = 0
        self.started = 0.0
        self.start_step = 0

    def start(self, total: int, step: int = 0) -> None:
        self.total, self.started, self.start_step = total, time.monotonic(), step
        if self.enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=step, desc=self.prefix or "training", unit="step",
                            dynamic_ncols=True, file=sys.stderr)

    def eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0 or not self.total:
            return "?"
        seconds = (time.monotonic() - self.started) / done * (self.total - step)
        return time.strftime("%H:%M:%S", time.gmtime(max(seconds, 0)))

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log(self, step: int, logs: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        parts = {k: logs[k] for k in ("loss", "learning_rate", "eval_loss", "grad_norm") if k in logs}
        if not parts:
            return
        if self.bar is not None:
            self.bar.set_postfix({k.replace("learning_rate", "lr"): f"{v:.3g}" for k, v in parts.items()})
            return
        text = " | ".join(f"{k.replace('learning_rate', 'lr')} {v:.4g}" for k, v in parts.items())
        print(f"{self.prefix}step {step}/{self.total} | {text} | eta {self.eta(step)}", file=sys.stderr,
              flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Stages:
    """Which stage of a run the trainers are in, set by the strategy through ``job.stage``:
    ``"during"`` (training) unless an evaluation outside training runs (``"before"``,
    ``"after"``...), and how in-training evaluations are cleaned before they are reported."""

    def __init__(self, clean: Callable[[Mapping[str, Any]], dict[str, float]]) -> None:
        self.current = "during"
        self.clean = clean

    @contextmanager
    def enter(self, name: str, clean: Callable[[Mapping[str, Any]], dict[str, float]] | None = None
              ) -> Iterator[None]:
        previous = self.current, self.clean
        self.current = name
        if clean is not None:
            self.clean = clean
        try:
            yield
        finally:
            self.current, self.clean = previous


def make_run_callback(run: RunDir, info: RunInfo, hooks: Hooks, display: Display, flag: StopFlag,
                      stages: Stages | None = None) -> Any:
    """The core's ``TrainerCallback``: JSONL log, lifecycle hooks, progress, interruption.

    The trainer's evaluations are reported to ``on_evaluate`` as ``during``, and its logs shown as
    progress, only while training (``stages.current == "during"``): the strategy reports the
    evaluations of its own stages (``before``, ``after``) itself.
    """
    from transformers import TrainerCallback

    from .trainloss import log_when_saving

    current = stages or Stages(clean_metrics)

    class RunCallback(TrainerCallback):  # type: ignore[misc]
        #: The last optimizer step seen (the step of a stage's evaluation).
        last_step = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                display.start(state.max_steps, state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last_step = state.global_step
            if state.is_world_process_zero:
                display.advance(state.global_step)
            if flag.is_set():
                control.should_save = True
                control.should_training_stop = True
            log_when_saving(control)  # train_loss over all steps survives a resume (trainloss.py)

        def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            numbers = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            run.append_log({"step": state.global_step, "epoch": state.epoch, **numbers})
            hooks.on_log(info, state.global_step, numbers)
            if current.current == "during":
                display.log(state.global_step, numbers)

        def on_evaluate(self, args: Any, state: Any, control: Any,
                        metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not metrics or current.current != "during":
                return
            hooks.on_evaluate(info, "during", current.clean(metrics), state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            display.close()

    return RunCallback()
