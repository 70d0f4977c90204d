"""RLHF in two stages in one run.

(a) A reward model: the base with a sequence-classification head (one score) and a LoRA
    adapter, trained on the preference pairs with TRL's ``RewardTrainer`` and evaluated by
    pairwise accuracy (chosen scored above rejected). Saved as ``reward_adapter/``. Skipped when
    ``rlhf.reward_model_path`` names an existing reward model.
(b) The policy: a fresh LoRA adapter on the base, optimised online with TRL's ``RLOOTrainer``
    or ``GRPOTrainer`` on the pairs' prompts, rewarded by the reward model, with a KL penalty
    (``rlhf.kl_coef``) to the base (the adapter disabled, no second copy). Saved as ``adapter/``.

Resuming: stage (a) writes its checkpoints where the run keeps them and removes them once its
adapter is saved, so the newest checkpoint of a run always belongs to the stage that was
running. Imported only when an rlhf run starts; heavy libraries are imported in functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelforge_core.api import LoadedModel, TrainingJob, TrainResult
from modelforge_core.errors import ConfigError
from modelforge_core.trainer import (
    build_arguments,
    clean_metrics,
    encode_preference,
    preference_datasets,
    preference_max_length,
    preference_sampling,
    quiet_libraries,
    train_stage,
    use_base_as_reference,
)

REWARD_ADAPTER = "reward_adapter"
POLICY_ADAPTER = "adapter"


# --- shared helpers ------------------------------------------------------------------------

def is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list)


def model_device(model: Any) -> Any:
    return next(model.parameters()).device


# --- the reward model ----------------------------------------------------------------------

class RewardModelScorer:
    """Scores prompt/completion pairs with the reward model, formatted as in its training.

    Also the online stage's reward function: TRL calls it with ``prompts`` and ``completions``
    (strings, or message lists for conversational data) and takes one float per completion.
    A callable rather than the model itself, so a LoRA reward model (a PeftModel, which TRL
    does not treat as a model) and a 4-bit one need no merging.
    """

    __name__ = "reward_model"

    def __init__(self, loaded: LoadedModel, max_length: int, batch_size: int) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_length = max_length
        self.batch_size = max(1, batch_size)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        pairs = zip(prompts, completions, strict=True)
        ids = [encode_preference(self.tokenizer, p, c)[: self.max_length] for p, c in pairs]
        was_training = self.model.training
        self.model.eval()
        try:
            return self.score(ids)
        finally:
            self.model.train(was_training)

    def score(self, ids: Sequence[list[int]]) -> list[float]:
        import torch

        device = model_device(self.model)
        pad = self.tokenizer.pad_token_id
        scores: list[float] = []
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start:start + self.batch_size]
            width = max(len(row) for row in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, tokens in enumerate(batch):
                input_ids[row, : len(tokens)] = torch.tensor(tokens)
                mask[row, : len(tokens)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            scores.extend(float(v) for v in logits[:, 0].float().cpu())
        return scores


def pairwise_metrics(scorer: RewardModelScorer, pairs: Any) -> dict[str, float]:
    """Pairwise accuracy (chosen scored above rejected), mean margin and the Bradley-Terry loss,
    over every pair exactly (TRL's evaluation averages per batch, uneven when the last is short)."""
    chosen = scorer(pairs["prompt"], pairs["chosen"])
    rejected = scorer(pairs["prompt"], pairs["rejected"])
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    # -log(sigmoid(m)), computed without overflow for large |m|.
    losses = [max(-m, 0.0) + math.log1p(math.exp(-abs(m))) for m in margins]
    return {"eval_loss": sum(losses) / len(losses),
            "eval_accuracy": sum(m > 0 for m in margins) / len(margins),
            "eval_margin": sum(margins) / len(margins),
            "eval_mean_reward": (sum(chosen) + sum(rejected)) / (2 * len(margins))}


def match_head_dtype(model: Any) -> None:
    """Keep the score head in the dtype of the hidden states.

    On a quantized base TRL stores the trainable weights in bf16 (the QLoRA recipe). LoRA layers
    cast their input to their own dtype; the plain score head (a ``modules_to_save`` copy) does
    not, and without mixed precision its matmul would meet float32 hidden states.
    """
    dtype = model.get_input_embeddings().weight.dtype
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and "modules_to_save" in name and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)


def load_reward_model(job: TrainingJob, path: Path) -> LoadedModel:
    """An existing reward model: a folder with a LoRA adapter (on its base) or a full
    sequence-classification model."""
    import torch

    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        base = json.loads(adapter_config.read_text("utf-8")).get("base_model_name_or_path")
        loaded = job.load_model("sequence-classification", model_name=base or job.config["model_name"],
                                num_labels=1, adapter_path=path, new_adapter=False, for_training=False)
    elif (path / "config.json").is_file():
        loaded = job.load_model("sequence-classification", model_name=str(path), num_labels=1,
                                new_adapter=False, for_training=False)
    else:
        raise ConfigError(f"rlhf.reward_model_path: {path} holds neither a LoRA adapter (adapter_config.json) "
                          "nor a model (config.json); point it at a reward model folder, or set it to null "
                          "to train one")
    quantized = getattr(loaded.model, "is_loaded_in_4bit", False) or getattr(loaded.model, "is_loaded_in_8bit", False)
    if torch.cuda.is_available() and not quantized:
        loaded.model.to(torch.device("cuda", torch.cuda.current_device()))
    return loaded


def train_reward_model(job: TrainingJob) -> tuple[LoadedModel, dict[str, Any]]:
    """Stage (a): LoRA reward model on the preference pairs, pairwise accuracy before and after.
    When the run resumes, the newest checkpoint is this stage's (stage (b) has not started)."""
    from trl import RewardConfig, RewardTrainer  # type: ignore[attr-defined]

    options = job.config["rlhf"]
    loaded = job.load_model("sequence-classification", num_labels=1)
    tokenizer, model = loaded.tokenizer, loaded.model
    # Batched scoring finds each sequence's last token through the pad id (the provider makes
    # EOS the pad token of tokenizers without one).
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    train_ds, eval_ds = preference_datasets(job, loaded)
    max_length = preference_max_length(job, (train_ds, eval_ds), tokenizer, model)
    args = build_arguments(
        job, RewardConfig, has_eval=eval_ds is not None, max_length=max_length,
        learning_rate=float(options["reward_learning_rate"]), num_train_epochs=int(options["reward_epochs"]),
        max_steps=-1, dataset_num_proc=None, **preference_sampling(job))
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=tokenizer, callbacks=job.callbacks)
    match_head_dtype(model)
    scorer = RewardModelScorer(loaded, max_length, int(job.config["per_device_eval_batch_size"]))
    job.say("rlhf stage 1 of 2: reward model")
    measure = None if eval_ds is None else lambda _: pairwise_metrics(scorer, eval_ds)
    result = train_stage(job, trainer, loaded, measure=measure, clean=clean_metrics,
                         before="reward_model_before", after="reward_model_after", adapter=REWARD_ADAPTER,
                         clear_checkpoints=True, name="reward model training")
    return loaded, {"before": result.metrics_before, "after": result.metrics_after,
                    "global_step": result.global_step, "adapter": REWARD_ADAPTER}


# --- the policy ----------------------------------------------------------------------------

def unique_prompts(dataset: Any) -> list[Any]:
    """The pairs' prompts, each once, in order (several pairs may share a prompt)."""
    seen: set[str] = set()
    prompts = []
    for prompt in dataset["prompt"]:
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
    return prompts


def sample_completions(loaded: LoadedModel, prompts: Sequence[Any], *, samples: int, temperature: float,
                       max_new_tokens: int, seed: int, batch_size: int) -> tuple[list[Any], list[Any]]:
    """``samples`` completions per prompt from the policy, seeded; returns the repeated prompts
    and the completions in the form TRL hands to reward functions."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    device = model_device(model)
    eos_ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids += [i for i in (configured if isinstance(configured, list) else [configured]) if i is not None]
    was_training = model.training
    model.eval()
    repeated: list[Any] = []
    completions: list[Any] = []
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), max(1, batch_size)):
                chunk = list(prompts[start:start + max(1, batch_size)])
                if is_conversational(chunk[0]):
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
                new_tokens = output[:, encoded["input_ids"].shape[1]:].cpu()
                for index, tokens in enumerate(new_tokens):
                    ids = tokens.tolist()
                    stop = next((i for i, t in enumerate(ids) if t in eos_ids), len(ids))
                    text = tokenizer.decode(ids[:stop], skip_special_tokens=True)
                    prompt = chunk[index // samples]
                    repeated.append(prompt)
                    completions.append([{"role": "assistant", "content": text}]
                                       if is_conversational(prompt) else text)
    finally:
        model.train(was_training)
    return repeated, completions


def mean_policy_reward(loaded: LoadedModel, scorer: RewardModelScorer, prompts: Sequence[Any], *,
                       options: Mapping[str, Any], seed: int, batch_size: int) -> dict[str, float]:
    """The policy's mean reward under the reward model: ``num_generations`` sampled completions
    per prompt at the online stage's temperature, the same samples for a given seed."""
    repeated, completions = sample_completions(
        loaded, prompts, samples=int(options["num_generations"]), temperature=float(options["temperature"]),
        max_new_tokens=int(options["max_new_tokens"]), seed=seed, batch_size=batch_size)
    scores = scorer(repeated, completions)
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return {"eval_mean_reward": mean, "eval_reward_std": std}


def generation_batch_size(config: Mapping[str, Any], num_generations: int, processes: int) -> int:
    """Completions sampled per generation round: at least one optimiser step's worth
    (batch × accumulation × processes), in whole groups of ``num_generations`` per prompt."""
    micro = int(config["per_device_train_batch_size"]) * processes
    wanted = micro * int(config["gradient_accumulation_steps"])
    unit = micro * num_generations // math.gcd(micro, num_generations)
    return math.ceil(wanted / unit) * unit


def train_policy(job: TrainingJob, scorer: RewardModelScorer, *,
                 resume: bool) -> tuple[LoadedModel, dict[str, Any], int]:
    """Stage (b): online RLOO or GRPO against the reward model, KL to the base. ``resume``: the
    run's checkpoint is this stage's."""
    import os

    options = job.config["rlhf"]
    algorithm = options["algorithm"]
    if algorithm == "grpo":
        from trl import GRPOConfig as OnlineConfig  # type: ignore[attr-defined]
        from trl import GRPOTrainer as OnlineTrainer  # type: ignore[attr-defined]
    else:
        from trl import RLOOConfig as OnlineConfig  # type: ignore[attr-defined,assignment]
        from trl import RLOOTrainer as OnlineTrainer  # type: ignore[attr-defined,assignment]
    from datasets import Dataset

    loaded = job.load_model("causal-lm")
    tokenizer, model = loaded.tokenizer, loaded.model
    train_pairs, eval_pairs = preference_datasets(job, loaded, head="causal-lm")
    train_prompts = unique_prompts(train_pairs)
    eval_prompts = unique_prompts(eval_pairs) if eval_pairs is not None else []
    num_generations = int(options["num_generations"])
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    per_round = generation_batch_size(job.config, num_generations, processes)
    if per_round != int(job.config["per_device_train_batch_size"]) * processes * int(
            job.config["gradient_accumulation_steps"]):
        job.say(f"rlhf: sampling {per_round} completions per round ({per_round // num_generations} prompts "
                f"x {num_generations} generations), whole groups per prompt")
    eval_batch = math.ceil(int(job.config["per_device_eval_batch_size"]) / num_generations) * num_generations
    args = build_arguments(
        job, OnlineConfig, has_eval=bool(eval_prompts), beta=float(options["kl_coef"]),
        num_generations=num_generations, max_completion_length=int(options["max_new_tokens"]),
        temperature=float(options["temperature"]), generation_batch_size=per_round,
        per_device_eval_batch_size=eval_batch, remove_unused_columns=False, log_completions=False,
        # The importance ratio compares log-probs of the same policy at sampling and at the update:
        # dropout noise in between makes it explode.
        disable_dropout=True, group_by_length=False, train_sampling_strategy="random")
    trainer = OnlineTrainer(
        # TRL's hint (a list of float | None, invariant) refuses a scorer of plain floats.
        model=model, reward_funcs=scorer, args=args,  # type: ignore[arg-type]
        train_dataset=Dataset.from_list([{"prompt": p} for p in train_prompts]),
        eval_dataset=Dataset.from_list([{"prompt": p} for p in eval_prompts]) if eval_prompts else None,
        processing_class=tokenizer, callbacks=job.callbacks)
    use_base_as_reference(model)
    job.say(f"rlhf stage 2 of 2: policy ({algorithm}, {num_generations} generations per prompt)")
    seed = int(job.config["seed"])
    measure_batch = max(1, int(job.config["per_device_eval_batch_size"]))

    def measure(stage: str) -> dict[str, float]:
        return mean_policy_reward(loaded, scorer, eval_prompts, options=options, seed=seed, batch_size=measure_batch)

    result = train_stage(job, trainer, loaded, measure=measure if eval_prompts else None, clean=clean_metrics,
                         resume=resume, adapter=POLICY_ADAPTER, name="policy training")
    return loaded, {"before": result.metrics_before, "after": result.metrics_after,
                    "global_step": result.global_step, "algorithm": algorithm, "adapter": POLICY_ADAPTER}, \
        result.global_step


def train(job: TrainingJob) -> TrainResult:
    """Both stages; the policy's metrics are the run's before/after, each stage's in ``extra``."""
    quiet_libraries()
    options = job.config["rlhf"]
    run_path = Path(job.run.directory)
    given = options.get("reward_model_path")
    if given:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise ConfigError(f"rlhf.reward_model_path: {path} is not a folder; point it at a reward model "
                              "(a LoRA adapter or a sequence-classification model), or set it to null to train one")
        reward = load_reward_model(job, path)
        reward_result: dict[str, Any] = {"path": str(path)}
        policy_resumes = True
    elif (run_path / REWARD_ADAPTER).is_dir():
        # Resuming after stage (a) finished: its adapter is kept, the checkpoint is the policy's.
        reward = load_reward_model(job, run_path / REWARD_ADAPTER)
        earlier = job.previous_metrics
        reward_result = {"before": earlier.get("reward_model_before", {}),
                         "after": earlier.get("reward_model_after", {}), "adapter": REWARD_ADAPTER}
        policy_resumes = True
    else:
        reward, reward_result = train_reward_model(job)
        policy_resumes = False
    max_length = int(job.config.get("max_seq_length")
                     or getattr(reward.model.config, "max_position_embeddings", None) or 4096)
    scorer = RewardModelScorer(reward, max_length, int(job.config["per_device_eval_batch_size"]))
    _, policy_result, steps = train_policy(job, scorer, resume=policy_resumes)
    return TrainResult(dict(policy_result["before"]), dict(policy_result["after"]), steps,
                       extra={"reward_model": reward_result, "policy": policy_result})
