"""The training toolkit that strategies share: config -> trainer arguments, the core's
callbacks (progress, JSONL log, lifecycle hooks, interruption), hardware checks, and the
supervised training loop used by ``sft`` and ``qlora`` (and by third-party strategies).

Importing this module is cheap; torch and transformers are imported inside functions.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from .api import LoadedModel, RunInfo, TrainingJob, TrainResult
from .errors import EnvironmentProblem, ModelForgeError

if TYPE_CHECKING:
    from .plugins import Hooks
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
    "packing": "sft: SFTConfig.packing",
    "max_seq_length": "sft: SFTConfig.max_length (and the provider for unsloth)",
    "eval_split": "core: the seeded train/eval split",
    "output_dir": "core: the run folder",
    "trust_remote_code": "provider: from_pretrained(trust_remote_code=...)",
    "allow_pickle_weights": "provider: from_pretrained(use_safetensors=...)",
    "early_stopping_metric": "core: earlystop.py (metric_for_best_model and its callback)",
    "early_stopping_direction": "core: earlystop.py (greater_is_better)",
    "early_stopping_patience": "core: earlystop.py callback",
    "early_stopping_min_delta": "core: earlystop.py callback",
}


class Interrupted(ModelForgeError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint. Exit code 130."""

    exit_code = 130


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
        return Hardware("cuda", torch.cuda.get_device_name(0), torch.cuda.is_bf16_supported(), True)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return Hardware("mps", "Apple MPS", True, True)
    return Hardware("cpu", "CPU", True, False)


def check_precision(config: Mapping[str, Any], hardware: Hardware) -> None:
    """Refuse what the hardware cannot run, one sentence each: fp16/bf16 without support,
    4-bit/8-bit where bitsandbytes cannot run, unsloth on Apple MPS.

    First, when the config's profile leaves precision to the hardware (``"precision": "auto"``
    and the user set neither fp16 nor bf16), choose it for this hardware: a resolved config is
    updated in place, with the profile as the source (see ``hardware.apply_auto_precision``).
    """
    from .hardware import apply_auto_precision, bitsandbytes_status, cuda_bf16_native, precision_problems

    bf16 = hardware.bf16 and (hardware.device != "cuda" or cuda_bf16_native())
    apply_auto_precision(config, hardware.device, bf16)
    quantized = config.get("use_4bit") or config.get("use_8bit")
    problems = precision_problems(config, device=hardware.device, device_name=hardware.name, fp16=hardware.fp16,
                                  bf16=bf16, bitsandbytes=bitsandbytes_status(hardware.device) if quantized else None)
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
            signal.signal(number, old)


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


def make_run_callback(run: RunDir, info: RunInfo, hooks: Hooks, display: Display, flag: StopFlag,
                      stage_name: str = "") -> Any:
    """The core's ``TrainerCallback``: JSONL log, lifecycle hooks, progress, interruption."""
    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):  # type: ignore[misc]
        stage = "during"
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

        def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            numbers = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            record = {"step": state.global_step, "epoch": state.epoch, **numbers}
            if stage_name:
                record["stage"] = stage_name
            run.append_log(record)
            hooks.on_log(info, state.global_step, numbers)
            if self.stage == "during":
                display.log(state.global_step, numbers)

        def on_evaluate(self, args: Any, state: Any, control: Any,
                        metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not metrics:
                return
            numbers = with_perplexity({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            if self.stage == "during":
                hooks.on_evaluate(info, "during", numbers, state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            display.close()

    return RunCallback()


#: Bookkeeping values the trainers report with every evaluation; not metrics.
NOISE_SUFFIXES = ("_runtime", "_per_second", "_model_preparation_time", "epoch", "_num_tokens")


def quiet_libraries() -> None:
    """No library progress bars or load reports: the core's display is the progress."""
    import os

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from datasets.utils.logging import disable_progress_bar as disable_datasets_bars
    from transformers.utils import logging as hf_logging

    # peft still calls a transformers method that transformers 5 deprecates; not actionable.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    disable_datasets_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def with_perplexity(metrics: Mapping[str, float]) -> dict[str, float]:
    out = dict(metrics)
    if "eval_loss" in out and "eval_perplexity" not in out:
        out["eval_perplexity"] = math.exp(min(out["eval_loss"], 50.0))
    return out


def prepare_trainer(trainer: Any) -> Any:
    """Remove transformers' own printing callbacks: the core's callback reports progress."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def evaluate_stage(trainer: Any, job: TrainingJob, stage: str, loaded: LoadedModel | None,
                   rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Loss-based metrics from the trainer plus the task's own metrics, reported as ``stage``."""
    metrics: dict[str, float] = {}
    if trainer is not None and rows:
        for callback in trainer.callback_handler.callbacks:
            if hasattr(callback, "stage"):
                callback.stage = stage
        raw = trainer.evaluate()
        for callback in trainer.callback_handler.callbacks:
            if hasattr(callback, "stage"):
                callback.stage = "during"
        metrics.update(with_perplexity({k: float(v) for k, v in raw.items()
                                        if isinstance(v, (int, float)) and not k.endswith(NOISE_SUFFIXES)}))
    if loaded is not None and rows:
        metrics.update(job.task.evaluate(loaded, rows, config=job.config))
    if job.head in ("question-answering", "sequence-classification"):
        metrics.pop("eval_perplexity", None)  # not a language model: perplexity means nothing
    if metrics:
        job.report(stage, metrics)
    return metrics


# --- supervised training -------------------------------------------------------------------

def longest_example(dataset: Any, tokenizer: Any) -> int:
    """Token length of the longest formatted example (prompt + completion, template applied)."""
    longest = 0
    for row in dataset:
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True)
            length = len(ids["input_ids"] if isinstance(ids, Mapping) else ids)
        elif prompt is not None:
            length = len(tokenizer(prompt + completion)["input_ids"]) + 1
        elif "text" in row:
            length = len(tokenizer(row["text"])["input_ids"]) + 1
        else:
            length = len(row.get("input_ids", ()))
        longest = max(longest, length)
    return longest


def choose_max_length(config: Mapping[str, Any], dataset: Any, tokenizer: Any, model: Any,
                      say: Callable[[str], None]) -> int:
    """``max_seq_length`` from the config, or from the data and the model when it is null."""
    if config.get("max_seq_length"):
        return int(config["max_seq_length"])
    model_limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 4096
    longest = longest_example(dataset, tokenizer)
    chosen = min(int(model_limit), max(8, math.ceil(longest / 8) * 8))
    say(f"max_seq_length is null: using {chosen} tokens (longest example {longest}, model limit {model_limit})")
    return chosen


def run_supervised(job: TrainingJob, **extra_arguments: Any) -> TrainResult:
    """Supervised LoRA training: TRL ``SFTTrainer`` for causal LMs (loss on the completion
    only, EOS learned, chat template applied), the transformers trainers on the task's
    tokenized features for seq2seq and span heads.

    :param extra_arguments: extra trainer arguments (a strategy's own options).
    """
    quiet_libraries()
    loaded = job.load_model(job.head)
    tokenizer, model = loaded.tokenizer, loaded.model
    if job.head == "causal-lm":
        # Tokenized as TRL would, and cached: unchanged data, tokenizer and template skip
        # formatting and tokenization on the next run (modelforge_core/datacache.py).
        from .datacache import cached_sft_dataset

        def prepared(rows: Sequence[Mapping[str, Any]]) -> Any:
            return cached_sft_dataset(
                rows, tokenizer, job.config, shape=job.shape, formatter=type(job.task).__module__, say=job.say,
                build=lambda: job.task.build_dataset(rows, shape=job.shape, tokenizer=tokenizer,
                                                     config=job.config, head=job.head))

        train_ds = prepared(job.train_rows)
        eval_ds = prepared(job.eval_rows) if job.eval_rows else None
    else:
        train_ds = job.task.build_dataset(job.train_rows, shape=job.shape, tokenizer=tokenizer,
                                          config=job.config, head=job.head)
        eval_ds = (job.task.build_dataset(job.eval_rows, shape=job.shape, tokenizer=tokenizer,
                                          config=job.config, head=job.head) if job.eval_rows else None)
    args: Any
    trainer: Any
    if job.head == "causal-lm":
        from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

        max_length = choose_max_length(job.config, train_ds, tokenizer, model, job.say)
        args = SFTConfig(**job.trainer_arguments(
            args_class=SFTConfig, has_eval=eval_ds is not None, max_length=max_length,
            packing=job.config["packing"], completion_only_loss=True, dataset_num_proc=None,
            **extra_arguments))
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, callbacks=job.callbacks)
    else:
        from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

        collator = job.task.data_collator(tokenizer, model, job.head)
        if job.head == "seq2seq-lm":
            args = Seq2SeqTrainingArguments(**job.trainer_arguments(
                args_class=Seq2SeqTrainingArguments, has_eval=eval_ds is not None, **extra_arguments))
            trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                     data_collator=collator, processing_class=tokenizer, callbacks=job.callbacks)
        else:
            args = TrainingArguments(**job.trainer_arguments(
                args_class=TrainingArguments, has_eval=eval_ds is not None, **extra_arguments))
            trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                              data_collator=collator, processing_class=tokenizer, callbacks=job.callbacks)
    prepare_trainer(trainer)
    before: dict[str, float] = {}
    if job.resume_from is None:
        before = evaluate_stage(trainer if eval_ds is not None else None, job, "before", loaded, job.eval_rows)
    else:
        before = dict(job.previous_metrics_before)
    output = trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
    if job.stop_requested():
        raise Interrupted(f"training interrupted at step {trainer.state.global_step}; a checkpoint was saved")
    after = evaluate_stage(trainer if eval_ds is not None else None, job, "after", loaded, job.eval_rows)
    after["train_loss"] = float(output.training_loss)
    if job.save is not None:
        job.save(loaded, "adapter")
    return TrainResult(before, after, int(trainer.state.global_step))
