"""GRPO with TRL's ``GRPOTrainer`` on a LoRA adapter, against the configured reward functions.

The KL reference is the base model with the adapter disabled (no second copy). Before and after
training the policy samples ``num_generations`` completions for each eval prompt (seeded, so
both measurements see the same randomness) and every reward scores them: ``metrics.json`` holds
each reward's mean and spread, the weighted total and the completion lengths.

Imported only when a grpo run starts: torch, transformers and trl are imported inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from modelforge_core.api import LoadedModel, TrainingJob, TrainResult
from modelforge_core.errors import ConfigError
from modelforge_core.trainer import (
    ROW_COLUMN,
    RewardFunction,
    describe_rewards,
    missing_fields,
    quiet_libraries,
    reward_functions,
    train_stage,
    use_base_as_reference,
)

ADAPTER = "adapter"


def generation_batch_size(config: Mapping[str, Any], num_generations: int, processes: int) -> int:
    """Completions sampled per generation round: at least one optimiser step's worth
    (batch x accumulation x processes), in whole groups of ``num_generations`` per prompt."""
    micro = int(config["per_device_train_batch_size"]) * processes
    wanted = micro * int(config["gradient_accumulation_steps"])
    unit = micro * num_generations // math.gcd(micro, num_generations)
    return math.ceil(wanted / unit) * unit


def sample_completions(loaded: LoadedModel, prompts: Sequence[Any], *, samples: int, temperature: float,
                       max_new_tokens: int, seed: int, batch_size: int) -> tuple[list[int], list[Any], list[int]]:
    """``samples`` completions per prompt, seeded. Returns, per completion, the index of its
    prompt, the completion as TRL hands it to reward functions, and its length in tokens."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    eos_ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids += [i for i in (configured if isinstance(configured, list) else [configured]) if i is not None]
    was_training = model.training
    model.eval()
    owners: list[int] = []
    completions: list[Any] = []
    lengths: list[int] = []
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    step = max(1, batch_size)
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), step):
                chunk = list(prompts[start:start + step])
                if isinstance(chunk[0], list):
                    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                             for p in chunk]
                    encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                                        add_special_tokens=False)
                else:
                    encoded = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left")
                encoded = {k: v.to(device) for k, v in encoded.items()}
                with torch.no_grad():
                    output = model.generate(**encoded, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                            max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids)
                for index, tokens in enumerate(output[:, encoded["input_ids"].shape[1]:].cpu()):
                    ids = tokens.tolist()
                    stop = next((i for i, t in enumerate(ids) if t in eos_ids), len(ids))
                    text = tokenizer.decode(ids[:stop], skip_special_tokens=True)
                    prompt = chunk[index // samples]
                    owners.append(start + index // samples)
                    completions.append([{"role": "assistant", "content": text}] if isinstance(prompt, list) else text)
                    lengths.append(stop)
    finally:
        model.train(was_training)
    return owners, completions, lengths


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def measure_rewards(loaded: LoadedModel, functions: Sequence[RewardFunction], prompts: Sequence[Any],
                    row_numbers: Sequence[int], *, options: Mapping[str, Any], seed: int,
                    batch_size: int) -> dict[str, float]:
    """Each reward's mean and spread on sampled completions of ``prompts``, the weighted total
    (what GRPO maximises) and the mean completion length in tokens."""
    owners, completions, lengths = sample_completions(
        loaded, prompts, samples=int(options["num_generations"]), temperature=float(options["temperature"]),
        max_new_tokens=int(options["max_completion_length"]), seed=seed, batch_size=batch_size)
    repeated = [prompts[i] for i in owners]
    rows = [row_numbers[i] for i in owners]
    total = [0.0] * len(completions)
    metrics: dict[str, float] = {}
    for function in functions:
        scores = function(repeated, completions, **{ROW_COLUMN: rows})
        mean, std = _mean_std(scores)
        metrics[f"eval_rewards/{function.label}/mean"] = mean
        metrics[f"eval_rewards/{function.label}/std"] = std
        total = [t + function.weight * s for t, s in zip(total, scores, strict=True)]
    metrics["eval_reward"], metrics["eval_reward_std"] = _mean_std(total)
    metrics["eval_completions/mean_length"] = sum(lengths) / len(lengths)
    return metrics


def train(job: TrainingJob) -> TrainResult:
    """Train a LoRA adapter with GRPO; rewards on the eval prompts before and after; the
    adapter saved as ``adapter/`` in the run."""
    import os

    quiet_libraries()
    from trl import GRPOConfig, GRPOTrainer  # type: ignore[attr-defined]

    options = job.config["grpo"]
    rows = [*job.train_rows, *job.eval_rows]
    functions = reward_functions(options["rewards"], job.rewards, where="grpo.rewards", rows=rows)
    problems = (missing_fields(functions, job.train_rows, where="grpo.rewards", split="train")
                + missing_fields(functions, job.eval_rows, where="grpo.rewards", split="eval"))
    if problems:
        raise ConfigError("\n".join(problems))
    loaded = job.load_model("causal-lm")
    tokenizer, model = loaded.tokenizer, loaded.model

    def dataset(split: Sequence[Mapping[str, Any]], offset: int) -> Any:
        built = job.task.build_dataset(split, shape="prompt", tokenizer=tokenizer, config=job.config,
                                       head="causal-lm")
        return built.add_column(ROW_COLUMN, list(range(offset, offset + len(split))))

    train_ds = dataset(job.train_rows, 0)
    eval_ds = dataset(job.eval_rows, len(job.train_rows)) if job.eval_rows else None
    num_generations = int(options["num_generations"])
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    per_round = generation_batch_size(job.config, num_generations, processes)
    if per_round != int(job.config["per_device_train_batch_size"]) * processes * int(
            job.config["gradient_accumulation_steps"]):
        job.say(f"grpo: sampling {per_round} completions per round ({per_round // num_generations} prompts "
                f"x {num_generations} generations), whole groups per prompt")
    eval_batch = math.ceil(int(job.config["per_device_eval_batch_size"]) / num_generations) * num_generations
    args = GRPOConfig(**job.trainer_arguments(
        args_class=GRPOConfig, has_eval=eval_ds is not None, beta=float(options["beta"]),
        num_generations=num_generations, max_completion_length=int(options["max_completion_length"]),
        temperature=float(options["temperature"]), generation_batch_size=per_round,
        per_device_eval_batch_size=eval_batch, loss_type=options["loss_type"],
        importance_sampling_level=options["importance_sampling_level"], scale_rewards=options["scale_rewards"],
        num_iterations=int(options["num_iterations"]), epsilon=float(options["epsilon"]),
        reward_weights=[f.weight for f in functions], remove_unused_columns=False, log_completions=False,
        # The importance ratio compares log-probs of the same policy at sampling and at the update:
        # dropout noise in between makes it explode.
        disable_dropout=True, group_by_length=False, train_sampling_strategy="random"))
    reward_funcs: list[Any] = list(functions)  # TRL types them as plain callables
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_ds,
                          eval_dataset=eval_ds, processing_class=tokenizer, callbacks=job.callbacks)
    use_base_as_reference(model)
    eval_prompts = list(eval_ds["prompt"]) if eval_ds is not None else []
    eval_rows = list(range(len(job.train_rows), len(rows)))
    seed = int(job.config["seed"])

    def measure(stage: str) -> dict[str, float]:
        return measure_rewards(loaded, functions, eval_prompts, eval_rows, options=options, seed=seed,
                               batch_size=max(1, int(job.config["per_device_eval_batch_size"])))

    # The kit's skeleton: rewards before (or the first attempt's on a resume), train, stop on an
    # interrupt, rewards after, train_loss over every step, the adapter saved.
    result = train_stage(job, trainer, loaded, measure=measure if eval_prompts else None, adapter=ADAPTER)
    result.extra = {"rewards": describe_rewards(functions)}
    return result
