"""The trainer kit: what a strategy trains with. Public API.

A strategy's :meth:`~modelforge_core.api.Strategy.train` gets a
:class:`~modelforge_core.api.TrainingJob` and returns a :class:`~modelforge_core.api.TrainResult`.
This module holds everything in between that every strategy would otherwise write again:

- :func:`build_arguments`: a trainer's arguments (``TrainingArguments`` or a TRL config) from
  the config, with the strategy's own keywords on top;
- :func:`train_stage`: the skeleton written once: evaluate before (or take the first attempt's
  numbers when resuming), train, stop on an interrupt, evaluate after, save the adapter;
- stages as an explicit API: :func:`evaluate_trainer` runs ``trainer.evaluate()`` inside
  ``job.stage(name)``, so the core's callbacks know an evaluation outside training from one
  during it;
- :func:`clean_metrics`: trainer metrics cleaned in one place (numbers only, bookkeeping keys
  dropped, perplexity only for language-model losses);
- :func:`run_supervised` (sft, qlora, the tutorial) and :func:`run_preference` (dpo, and any
  DPO-like TRL trainer), with the pieces they are made of for strategies that need their own
  loop (rlhf): :func:`supervised_trainer`, :func:`preference_datasets`,
  :func:`preference_max_length`, :func:`use_base_as_reference`.

Versioning: the names in ``__all__`` are kept within a minor release series (0.1.x); their
parameters are only added, as keywords with defaults. Anything not in ``__all__`` is internal.

Importing this module is cheap: torch, transformers and TRL are imported inside functions.
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .api import LoadedModel, TrainingJob, TrainResult
from .errors import Interrupted
from .quantization import keep_4bit_trainable
from .rewards import ROW_COLUMN, RewardFunction, missing_fields, reward_functions
from .rewards import describe as describe_rewards
from .trainloss import resumed_step, train_loss_over_all_steps

__all__ = [
    "LANGUAGE_MODEL_HEADS",
    "NOISE_SUFFIXES",
    "PREFERENCE_METRICS",
    "ROW_COLUMN",
    "Interrupted",
    "RewardFunction",
    "build_arguments",
    "choose_max_length",
    "clean_metrics",
    "describe_rewards",
    "encode_preference",
    "evaluate_stage",
    "evaluate_trainer",
    "keep_4bit_trainable",
    "missing_fields",
    "preference_datasets",
    "preference_max_length",
    "preference_sampling",
    "prepare_trainer",
    "quiet_libraries",
    "resumed_step",
    "reward_functions",
    "run_preference",
    "run_supervised",
    "supervised_trainer",
    "train_loss_over_all_steps",
    "train_stage",
    "use_base_as_reference",
]

#: Bookkeeping values the trainers report with every evaluation; not metrics.
NOISE_SUFFIXES = ("_runtime", "_per_second", "_model_preparation_time", "epoch", "_num_tokens")

#: Heads whose ``eval_loss`` is a language model's mean token cross-entropy, so that
#: ``exp(eval_loss)`` is a perplexity. A span or classification head's loss is not.
LANGUAGE_MODEL_HEADS = frozenset({"causal-lm", "seq2seq-lm"})

#: What a user reads of a preference trainer's evaluation (TRL's ``DPOTrainer`` and kin): the
#: loss, the implicit rewards with their accuracy and margin, the log-probabilities.
PREFERENCE_METRICS = ("eval_loss", "eval_rewards/", "eval_logps/")

#: A stage's measurement: ``measure(stage_name)`` returns the metrics to report (may be empty).
Measure = Callable[[str], dict[str, float]]


# --- small pieces ----------------------------------------------------------------------------

def quiet_libraries() -> None:
    """No library progress bars or load reports: the core's display is the progress. Call it
    first in ``train``."""
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
    """``metrics`` plus ``eval_perplexity = exp(eval_loss)`` (internal: use :func:`clean_metrics`)."""
    out = dict(metrics)
    if "eval_loss" in out and "eval_perplexity" not in out:
        out["eval_perplexity"] = math.exp(min(out["eval_loss"], 50.0))
    return out


def clean_metrics(raw: Mapping[str, Any], *, perplexity: bool = False,
                  keep: Sequence[str] | None = None) -> dict[str, float]:
    """A trainer's evaluation as metrics: numbers only, the bookkeeping keys
    (:data:`NOISE_SUFFIXES`) dropped, then only the keys starting with one of ``keep`` (when
    given), and ``eval_perplexity`` added when ``perplexity`` is true (pass
    ``job.head in LANGUAGE_MODEL_HEADS`` for a language-model loss; never for a preference or
    reward loss)."""
    metrics = {key: float(value) for key, value in raw.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)
               and not key.endswith(NOISE_SUFFIXES) and (keep is None or key.startswith(tuple(keep)))}
    return with_perplexity(metrics) if perplexity else metrics


def prepare_trainer(trainer: Any) -> Any:
    """Remove transformers' own printing callbacks: the core's callback reports progress."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def build_arguments(job: TrainingJob, args_class: type, *, has_eval: bool, **overrides: Any) -> Any:
    """``args_class(...)`` (``TrainingArguments``, ``SFTConfig``, ``DPOConfig``, ...) from the
    config's training fields, the run's checkpoint and log folders, precision and the device,
    then ``overrides`` (the strategy's own keywords win). Keywords this release of
    ``args_class`` does not have are dropped, so one call serves several TRL releases."""
    return args_class(**job.trainer_arguments(args_class=args_class, has_eval=has_eval, **overrides))


def evaluate_trainer(trainer: Any, job: TrainingJob, stage: str, *, perplexity: bool = False,
                     keep: Sequence[str] | None = None) -> dict[str, float]:
    """``trainer.evaluate()`` as the evaluation of ``stage`` (``"before"``, ``"after"``...),
    cleaned by :func:`clean_metrics`; not reported (:func:`train_stage` reports)."""
    with job.stage(stage):
        raw = trainer.evaluate()
    return clean_metrics(raw, perplexity=perplexity, keep=keep)


def evaluate_stage(trainer: Any, job: TrainingJob, stage: str, loaded: LoadedModel | None,
                   rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """A supervised stage's metrics: the trainer's loss (with perplexity for language-model
    heads) when ``trainer`` is given, plus the task's own metrics (ROUGE, exact match...) of
    ``loaded`` on ``rows``. Used before and after training and by ``modelforge evaluate``."""
    metrics: dict[str, float] = {}
    if not rows:
        return metrics
    if trainer is not None:
        metrics.update(evaluate_trainer(trainer, job, stage, perplexity=job.head in LANGUAGE_MODEL_HEADS))
    if loaded is not None:
        metrics.update(job.task.evaluate(loaded, rows, config=job.config))
    return metrics


def _clear_checkpoints(folder: Path) -> None:
    if folder.is_dir():
        for child in folder.iterdir():
            if child.is_dir() and child.name.startswith("checkpoint-"):
                shutil.rmtree(child)


# --- the skeleton ----------------------------------------------------------------------------

def train_stage(job: TrainingJob, trainer: Any, loaded: LoadedModel, *, measure: Measure | None,
                clean: Callable[[Mapping[str, Any]], dict[str, float]] | None = None, resume: bool = True,
                before: str = "before", after: str = "after", adapter: str | None = "adapter",
                clear_checkpoints: bool = False, name: str = "training") -> TrainResult:
    """Train one stage with a built ``trainer`` (any ``transformers.Trainer``, TRL's included)
    whose ``callbacks`` are ``job.callbacks``, and return its :class:`TrainResult`:

    1. ``measure(before)`` is reported as stage ``before``; when the run resumes (``resume`` and
       ``job.resume_from``), the first attempt's numbers for that stage are taken from
       ``job.previous_metrics`` instead, and training continues from the checkpoint;
    2. ``trainer.train()``; during it the core reports the trainer's evaluations as ``during``,
       cleaned by ``clean`` (default: :func:`clean_metrics` with perplexity for language-model
       heads);
    3. on SIGINT/SIGTERM (the core saved a checkpoint) :class:`Interrupted` is raised;
    4. ``measure(after)`` plus ``train_loss`` is reported as stage ``after``;
    5. with ``clear_checkpoints`` (a stage that is not the run's last), this stage's checkpoints
       are removed, so a later interrupt resumes the stage that was running;
    6. ``loaded`` is saved as the run's ``adapter`` folder (``None``: not saved).

    ``measure`` is ``None`` when there is nothing to evaluate on. ``resume`` is false for a
    stage that starts fresh in a resumed run (rlhf's policy after its reward model was
    trained in this attempt). ``name`` appears in the interruption message.
    """
    prepare_trainer(trainer)
    resume_from = job.resume_from if resume else None

    def report(stage: str, metrics: dict[str, float]) -> dict[str, float]:
        if metrics:
            job.report(stage, metrics)
        return metrics

    if resume_from is not None:
        metrics_before = dict(job.previous_metrics.get(before) or {})
        if not metrics_before and before == "before":
            metrics_before = dict(job.previous_metrics_before)
    else:
        metrics_before = report(before, measure(before)) if measure is not None else {}
    if clean is None:
        perplexity = job.head in LANGUAGE_MODEL_HEADS

        def clean(raw: Mapping[str, Any]) -> dict[str, float]:
            return clean_metrics(raw, perplexity=perplexity)

    with job.stage("during", clean=clean):
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    steps = int(trainer.state.global_step)
    # A stop at the last step interrupts nothing: the stage is complete, finish it.
    if job.stop_requested() and steps < int(trainer.state.max_steps):
        raise Interrupted(f"{name} interrupted at step {steps}; a checkpoint was saved")
    metrics_after = {**(report(after, measure(after)) if measure is not None else {}),
                     "train_loss": train_loss_over_all_steps(trainer, output, resumed_step(resume_from))}
    if clear_checkpoints and job.run.is_main_process:
        # Before the adapter is saved: a crash in between leaves no checkpoint (start again),
        # never this stage's checkpoint taken for the next stage's.
        _clear_checkpoints(Path(trainer.args.output_dir))
    if adapter is not None and job.save is not None:
        job.save(loaded, adapter)
    return TrainResult(metrics_before, metrics_after, steps)


# --- supervised training ---------------------------------------------------------------------

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


def _fit_length(config: Mapping[str, Any], model: Any, longest: int, what: str,
                say: Callable[[str], None]) -> int:
    model_limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 4096
    chosen = min(int(model_limit), max(8, math.ceil(longest / 8) * 8))
    say(f"max_seq_length is null: using {chosen} tokens (longest {what} {longest}, model limit {model_limit})")
    return chosen


def choose_max_length(config: Mapping[str, Any], dataset: Any, tokenizer: Any, model: Any,
                      say: Callable[[str], None]) -> int:
    """``max_seq_length`` from the config, or from the data and the model when it is null."""
    if config.get("max_seq_length"):
        return int(config["max_seq_length"])
    return _fit_length(config, model, longest_example(dataset, tokenizer), "example", say)


def supervised_trainer(job: TrainingJob, loaded: LoadedModel, *, for_training: bool = True,
                       **extra_arguments: Any) -> Any:
    """The trainer of a supervised run, built from the job's rows: TRL's ``SFTTrainer`` for
    causal LMs (loss on the completion only, EOS learned, chat template applied, the tokenized
    data cached), ``Seq2SeqTrainer`` or ``Trainer`` on the task's features for the other heads.
    ``extra_arguments`` go to the trainer's arguments. With ``for_training=False`` it only
    evaluates (``modelforge evaluate``): the training rows serve to choose the sequence length
    as in training, nothing else.
    """
    tokenizer, model = loaded.tokenizer, loaded.model
    if for_training:
        from .speedups import check_loaded_model

        check_loaded_model(model, job.config)

    def build(rows: Sequence[Mapping[str, Any]]) -> Any:
        return job.task.build_dataset(rows, shape=job.shape, tokenizer=tokenizer, config=job.config, head=job.head)

    prepared: Callable[[Sequence[Mapping[str, Any]]], Any] = build
    if job.head == "causal-lm":
        # Tokenized as TRL would, and cached: unchanged data, tokenizer and template skip
        # formatting and tokenization on the next run (modelforge_core/datacache.py).
        from .datacache import cached_sft_dataset

        def prepared(rows: Sequence[Mapping[str, Any]]) -> Any:
            return cached_sft_dataset(rows, tokenizer, job.config, shape=job.shape,
                                      formatter=type(job.task).__module__, say=job.say,
                                      sources=job.data_sources, build=lambda: build(rows))

    eval_ds = prepared(job.eval_rows) if job.eval_rows else None
    needs_train = for_training or (job.head == "causal-lm" and not job.config.get("max_seq_length"))
    train_ds = prepared(job.train_rows) if needs_train and job.train_rows is not job.eval_rows else eval_ds
    trainer_class: Any
    if job.head == "causal-lm":
        from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

        max_length = choose_max_length(job.config, train_ds, tokenizer, model, job.say)
        if for_training:
            from .preflight import check_completions_fit

            check_completions_fit(train_ds, eval_ds, max_length, packing=job.config["packing"], say=job.say)
        args = build_arguments(job, SFTConfig, has_eval=eval_ds is not None, max_length=max_length,
                               packing=job.config["packing"], completion_only_loss=True, dataset_num_proc=None,
                               **extra_arguments)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds if for_training else eval_ds,
                             eval_dataset=eval_ds, processing_class=tokenizer, callbacks=job.callbacks)
    else:
        from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

        args_class, trainer_class = ((Seq2SeqTrainingArguments, Seq2SeqTrainer) if job.head == "seq2seq-lm"
                                     else (TrainingArguments, Trainer))
        args = build_arguments(job, args_class, has_eval=eval_ds is not None, **extra_arguments)
        trainer = trainer_class(model=model, args=args, train_dataset=train_ds if for_training else None,
                                eval_dataset=eval_ds, data_collator=job.task.data_collator(tokenizer, model, job.head),
                                processing_class=tokenizer, callbacks=job.callbacks)
    return prepare_trainer(trainer)


def run_supervised(job: TrainingJob, **extra_arguments: Any) -> TrainResult:
    """Supervised LoRA training of ``job.head`` on the job's rows (:func:`supervised_trainer`),
    through :func:`train_stage`: loss and the task's metrics before and after, the adapter saved.

    :param extra_arguments: extra trainer arguments (a strategy's own options, e.g.
        ``neftune_noise_alpha``).
    """
    quiet_libraries()
    loaded = job.load_model(job.head)
    trainer = supervised_trainer(job, loaded, **extra_arguments)
    evaluator = trainer if job.eval_rows else None
    return train_stage(job, trainer, loaded,
                       measure=lambda stage: evaluate_stage(evaluator, job, stage, loaded, job.eval_rows))


# --- preference training ---------------------------------------------------------------------

def _answer_messages(completion: Any) -> list[dict[str, str]]:
    if isinstance(completion, list):
        return [{"role": m["role"], "content": m["content"]} for m in completion]
    return [{"role": "assistant", "content": str(completion)}]


def encode_preference(tokenizer: Any, prompt: Any, completion: Any) -> list[int]:
    """Token ids of prompt + one answer of a pair, as TRL's preference and reward trainers
    tokenize it: the chat template over the whole conversation (``prompt`` a message list), or
    the plain text followed by EOS."""
    if isinstance(prompt, list):
        encoded = tokenizer.apply_chat_template(list(prompt) + _answer_messages(completion), tokenize=True,
                                                return_dict=True)
        return list(encoded["input_ids"])
    text = completion if isinstance(completion, str) else "".join(m["content"] for m in completion)
    return list(tokenizer(text=prompt + text + tokenizer.eos_token)["input_ids"])


def preference_max_length(job: TrainingJob, datasets: Iterable[Any], tokenizer: Any, model: Any) -> int:
    """``max_seq_length`` from the config or, when it is null, from the longest prompt + answer
    of the pairs in ``datasets`` (``None`` entries skipped) and the model's limit."""
    if job.config.get("max_seq_length"):
        return int(job.config["max_seq_length"])
    longest = max((len(encode_preference(tokenizer, row["prompt"], row[side]))
                   for dataset in datasets if dataset is not None for row in dataset
                   for side in ("chosen", "rejected")), default=8)
    return _fit_length(job.config, model, longest, "pair", job.say)


def preference_sampling(job: TrainingJob) -> dict[str, Any]:
    """Trainer arguments that sample pairs (or prompts) at random: transformers groups by
    length through an ``input_ids`` column, which TRL's preference datasets do not have.
    Says so when the config asked for ``group_by_length``."""
    if job.config.get("group_by_length"):
        job.say("group_by_length: preference pairs have no single length to group by; sampling them at random")
    return {"group_by_length": False, "train_sampling_strategy": "random"}


def use_base_as_reference(model: Any) -> None:
    """Make the reference model the base with the adapter disabled; call it after building a
    TRL trainer with ``ref_model=None`` on the job's fresh adapter.

    Handed a PeftModel, TRL cannot tell a fresh adapter from a trained one, so it copies the
    adapter into a frozen ``ref`` adapter. A fresh adapter (zero-initialised LoRA ``B``) equals
    the base, so the copy is dropped; TRL then disables the adapter for the reference pass,
    and the saved adapter folder holds only the trained adapter.
    """
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
        model.set_adapter("default")


def preference_datasets(job: TrainingJob, loaded: LoadedModel, head: str | None = None) -> tuple[Any, Any]:
    """The task's preference datasets of the job's train and eval rows (eval: ``None`` when
    the run has no eval split), formatted for ``head`` (default: the job's)."""
    def build(rows: Sequence[Mapping[str, Any]]) -> Any:
        return job.task.build_dataset(rows, shape="preference", tokenizer=loaded.tokenizer, config=job.config,
                                      head=head or job.head)

    return build(job.train_rows), build(job.eval_rows) if job.eval_rows else None


def run_preference(job: TrainingJob, args_class: type, trainer_class: type, *,
                   trainer_options: Mapping[str, Any] | None = None, keep: Sequence[str] = PREFERENCE_METRICS,
                   **extra_arguments: Any) -> TrainResult:
    """Preference training with a TRL trainer that takes ``ref_model`` (``DPOTrainer`` and its
    kin) on a fresh LoRA adapter, the base as the reference: the job's model loaded, the
    preference datasets, ``max_length`` and random sampling set, ``args_class`` built with
    ``extra_arguments`` (the strategy's options: ``beta``, ``loss_type``...), the trainer built
    with ``trainer_options`` (``ref_model=None`` unless given), then :func:`train_stage` with
    the evaluation's ``keep`` metrics (:data:`PREFERENCE_METRICS`) before and after.
    """
    quiet_libraries()
    loaded = job.load_model(job.head)
    tokenizer, model = loaded.tokenizer, loaded.model
    train_ds, eval_ds = preference_datasets(job, loaded)
    args = build_arguments(job, args_class, has_eval=eval_ds is not None,
                           max_length=preference_max_length(job, (train_ds, eval_ds), tokenizer, model),
                           dataset_num_proc=None, **preference_sampling(job), **extra_arguments)
    trainer = trainer_class(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=tokenizer, callbacks=job.callbacks,
                            **{"ref_model": None, **(trainer_options or {})})
    use_base_as_reference(model)

    def measure(stage: str) -> dict[str, float]:
        return evaluate_trainer(trainer, job, stage, keep=keep)

    return train_stage(job, trainer, loaded, measure=measure if eval_ds is not None else None,
                       clean=lambda raw: clean_metrics(raw, keep=keep))
