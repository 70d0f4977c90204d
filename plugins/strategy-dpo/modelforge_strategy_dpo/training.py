"""DPO with TRL's ``DPOTrainer`` on a LoRA adapter, the base model (adapter disabled) as the
reference: the frozen reference costs no second copy of the weights.

Imported only when a dpo run starts: torch, transformers and trl are imported inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelforge_core.api import TrainingJob, TrainResult
from modelforge_core.training import NOISE_SUFFIXES, Interrupted, prepare_trainer, quiet_libraries

#: The metrics of ``DPOTrainer.evaluate`` that a user reads: the loss, the implicit rewards
#: (beta times the log-ratio to the reference) and their accuracy and margin, the log-probs.
KEPT_PREFIXES = ("eval_loss", "eval_rewards/", "eval_logps/")


def completion_lengths(example: Mapping[str, Any], tokenizer: Any) -> tuple[int, int]:
    """Token lengths of prompt + chosen and prompt + rejected, formatted as TRL formats them."""
    prompt = example["prompt"]
    if isinstance(prompt, list):
        def length(answer: Sequence[Mapping[str, str]]) -> int:
            ids = tokenizer.apply_chat_template(list(prompt) + list(answer), tokenize=True)
            return len(ids["input_ids"] if isinstance(ids, Mapping) else ids)

        return length(example["chosen"]), length(example["rejected"])
    # Plain text: TRL appends EOS to each answer.
    return (len(tokenizer(prompt + example["chosen"])["input_ids"]) + 1,
            len(tokenizer(prompt + example["rejected"])["input_ids"]) + 1)


def preference_max_length(config: Mapping[str, Any], datasets: Sequence[Any], tokenizer: Any, model: Any,
                          say: Callable[[str], None]) -> int:
    """``max_seq_length`` from the config or, when it is null, from the longest pair and the model."""
    if config.get("max_seq_length"):
        return int(config["max_seq_length"])
    model_limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 4096
    longest = max((max(completion_lengths(row, tokenizer)) for dataset in datasets if dataset is not None
                   for row in dataset), default=8)
    chosen = min(int(model_limit), max(8, math.ceil(longest / 8) * 8))
    say(f"max_seq_length is null: using {chosen} tokens (longest pair {longest}, model limit {model_limit})")
    return chosen


def random_sampling(config: Mapping[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """Trainer overrides that sample pairs at random: transformers groups by length through an
    ``input_ids`` column, which TRL's preference datasets do not have."""
    if config.get("group_by_length"):
        say("group_by_length: preference pairs have no single length to group by; sampling them at random")
    return {"group_by_length": False, "train_sampling_strategy": "random"}


def use_base_as_reference(model: Any) -> None:
    """Make the reference the base model with the adapter disabled.

    Handed a PeftModel, TRL cannot tell a fresh adapter from a trained one, so it copies the
    adapter into a frozen ``ref`` adapter. Ours is always fresh (zero-initialised LoRA ``B``):
    the copy equals the base, so drop it; TRL then disables the adapter for the reference pass,
    and the saved adapter folder holds only the trained adapter.
    """
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
        model.set_adapter("default")


def evaluate_preferences(trainer: Any, job: TrainingJob, stage: str) -> dict[str, float]:
    """``trainer.evaluate()`` on the eval split, the preference metrics kept, reported as ``stage``."""
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "stage"):
            callback.stage = stage
    try:
        raw = trainer.evaluate()
    finally:
        for callback in trainer.callback_handler.callbacks:
            if hasattr(callback, "stage"):
                callback.stage = "during"
    metrics = {key: float(value) for key, value in raw.items()
               if isinstance(value, (int, float)) and key.startswith(KEPT_PREFIXES)
               and not key.endswith(NOISE_SUFFIXES)}
    job.report(stage, metrics)
    return metrics


def train(job: TrainingJob) -> TrainResult:
    """Train a LoRA adapter with DPO; metrics (reward accuracy and margins) on the eval split
    before and after; the adapter saved as ``adapter/`` in the run."""
    quiet_libraries()
    from trl import DPOConfig, DPOTrainer

    options = job.config["dpo"]
    loaded = job.load_model(job.head)
    tokenizer, model = loaded.tokenizer, loaded.model

    def build(rows: Sequence[Mapping[str, Any]]) -> Any:
        return job.task.build_dataset(rows, shape="preference", tokenizer=tokenizer, config=job.config,
                                      head=job.head)

    train_ds = build(job.train_rows)
    eval_ds = build(job.eval_rows) if job.eval_rows else None
    max_length = preference_max_length(job.config, [train_ds, eval_ds], tokenizer, model, job.say)
    # trainer_arguments keeps only the fields this TRL release's DPOConfig has.
    args = DPOConfig(**job.trainer_arguments(
        args_class=DPOConfig, has_eval=eval_ds is not None, max_length=max_length,
        beta=float(options["beta"]), loss_type=options["loss_type"],
        label_smoothing=float(options["label_smoothing"]), discopop_tau=float(options["discopop_tau"]),
        precompute_ref_log_probs=False,
        dataset_num_proc=None, **random_sampling(job.config, job.say)))
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, callbacks=job.callbacks)
    use_base_as_reference(model)
    prepare_trainer(trainer)
    if job.resume_from is not None:
        before = dict(job.previous_metrics_before)
    elif eval_ds is not None:
        before = evaluate_preferences(trainer, job, "before")
    else:
        before = {}
    output = trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
    if job.stop_requested():
        raise Interrupted(f"training interrupted at step {trainer.state.global_step}; a checkpoint was saved")
    after = evaluate_preferences(trainer, job, "after") if eval_ds is not None else {}
    after["train_loss"] = float(output.training_loss)
    if job.save is not None:
        job.save(loaded, "adapter")
    return TrainResult(before, after, int(trainer.state.global_step))
