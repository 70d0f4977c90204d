"""Summarization rows into training data, and ROUGE on generated summaries.

Two heads, two formats:

* ``seq2seq-lm`` (T5, BART): the encoder reads ``source_prefix + document``, the decoder is
  trained on the summary (``labels``; padding becomes -100 in the collator, so it costs no
  loss), both truncated at ``max_seq_length``.
* ``causal-lm``: prompt/completion rows that TRL's ``SFTTrainer`` tokenizes with the loss on
  the completion (the summary) only. With a chat template the prompt is a user message and
  the summary the assistant's answer, so the model is trained in the format it is prompted
  with; without one, plain text (:data:`PLAIN_PROMPT`).

Evaluation generates a summary for each eval row (up to ``max_eval_samples``) with the
configured length and beams, and scores it against the reference with ROUGE-1/2/L
F-measures (the ``rouge_score`` package, Porter stemming), as fractions in [0, 1].

torch, transformers and datasets are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelforge_core.api import LoadedModel

#: The prompt for decoder-only models whose tokenizer has no chat template.
PLAIN_PROMPT = "Summarize:\n{document}\nSummary:"
#: The instruction for decoder-only models with a chat template.
CHAT_PROMPT = "Summarize:\n{document}"
#: The longest seq2seq input when ``max_seq_length`` is null and the model states no limit.
DEFAULT_MAX_LENGTH = 1024
#: Tokenizers report this (or more) as ``model_max_length`` when they know no limit.
UNKNOWN_LIMIT = 10**6
#: The ROUGE variants reported, as ``rouge_score`` names them.
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The task's options with their defaults (a resolved config has them all; direct
    callers may pass a partial one)."""
    given = config.get("summarization") or {}
    return {"max_new_tokens": given.get("max_new_tokens", 64), "num_beams": given.get("num_beams", 1),
            "source_prefix": given.get("source_prefix", "summarize: "),
            "max_eval_samples": given.get("max_eval_samples", 200)}


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def model_limit(tokenizer: Any, model: Any = None) -> int | None:
    """The longest input the tokenizer or the model says it takes, or ``None`` when neither says."""
    limits = []
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < UNKNOWN_LIMIT:
        limits.append(tokenizer_limit)
    model_config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
    return min(limits) if limits else None


def source_length(config: Mapping[str, Any], tokenizer: Any, model: Any = None) -> int:
    """``max_seq_length``, or the model's limit (1024 when it states none) when null."""
    if config.get("max_seq_length"):
        return int(config["max_seq_length"])
    return model_limit(tokenizer, model) or DEFAULT_MAX_LENGTH


# --- training data -------------------------------------------------------------------------

def seq2seq_source(document: str, config: Mapping[str, Any]) -> str:
    return str(options(config)["source_prefix"]) + document


def seq2seq_features(rows: Sequence[Mapping[str, Any]], tokenizer: Any,
                     config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``input_ids``/``attention_mask`` from the prefixed document, ``labels`` from the summary."""
    length = source_length(config, tokenizer)
    sources = [seq2seq_source(str(row["document"]), config) for row in rows]
    encoded = tokenizer(sources, truncation=True, max_length=length)
    targets = tokenizer(text_target=[str(row["summary"]) for row in rows], truncation=True, max_length=length)
    return [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i],
             "labels": targets["input_ids"][i]} for i in range(len(rows))]


def causal_prompt(document: str, tokenizer: Any) -> Any:
    """The prompt for a decoder-only model: one user message, or plain text."""
    if has_chat_template(tokenizer):
        return [{"role": "user", "content": CHAT_PROMPT.format(document=document)}]
    return PLAIN_PROMPT.format(document=document)


def causal_example(row: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
    prompt = causal_prompt(str(row["document"]), tokenizer)
    if isinstance(prompt, list):
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": str(row["summary"])}]}
    return {"prompt": prompt, "completion": " " + str(row["summary"])}


def build_dataset(rows: Sequence[Mapping[str, Any]], *, tokenizer: Any, config: Mapping[str, Any], head: str) -> Any:
    """The ``datasets.Dataset`` the trainer of ``head`` consumes (see the module doc)."""
    from datasets import Dataset

    if head == "causal-lm":
        return Dataset.from_list([causal_example(row, tokenizer) for row in rows])
    return Dataset.from_list(seq2seq_features(rows, tokenizer, config))


def data_collator(tokenizer: Any, model: Any, head: str) -> Any:
    """Seq2seq batches: inputs padded, label padding -100 (no loss), and the decoder inputs
    made from the labels by the model's own shift. ``None`` for causal LMs (TRL has its own)."""
    if head == "causal-lm":
        return None
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)


# --- generation and ROUGE ------------------------------------------------------------------

def generation_options(config: Mapping[str, Any], tokenizer: Any, **overrides: Any) -> dict[str, Any]:
    """``generate`` keyword arguments: the task's length and beams, greedy, ``overrides`` last."""
    settings = options(config)
    chosen: dict[str, Any] = {"max_new_tokens": int(settings["max_new_tokens"]),
                              "num_beams": int(settings["num_beams"]), "do_sample": False,
                              "pad_token_id": tokenizer.pad_token_id}
    for key, value in overrides.items():
        if value is not None:
            chosen[key] = value
    # Sampling settings only mean something when sampling; transformers warns otherwise.
    temperature, top_p = chosen.pop("temperature", 0.0) or 0.0, chosen.pop("top_p", None)
    if temperature > 0:
        chosen.update(do_sample=True, temperature=temperature)
        if top_p is not None:
            chosen["top_p"] = top_p
    if chosen.get("num_beams", 1) > 1:
        chosen.setdefault("early_stopping", True)
    return chosen


def _causal_prompt_text(document: str, tokenizer: Any) -> str:
    prompt = causal_prompt(document, tokenizer)
    if isinstance(prompt, list):
        return str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    return str(prompt)


def generate_summaries(loaded: LoadedModel, documents: Sequence[str], config: Mapping[str, Any],
                       batch_size: int = 8, **generation: Any) -> list[str]:
    """A summary for each document, generated in batches in the training format."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    options_ = generation_options(config, tokenizer, **generation)
    causal = loaded.head == "causal-lm"
    if causal:
        options_.setdefault("eos_token_id", tokenizer.eos_token_id)
    was_training, padding_side = model.training, tokenizer.padding_side
    summaries: list[str] = []
    model.eval()
    try:
        if causal:
            # A decoder-only model continues the last token of each row: pad on the left.
            tokenizer.padding_side = "left"
        for first in range(0, len(documents), batch_size):
            chunk = documents[first:first + batch_size]
            if causal:
                texts = [_causal_prompt_text(doc, tokenizer) for doc in chunk]
                encoded = tokenizer(texts, return_tensors="pt", padding=True,
                                    add_special_tokens=not has_chat_template(tokenizer))
            else:
                texts = [seq2seq_source(doc, config) for doc in chunk]
                encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                    max_length=source_length(config, tokenizer, model))
            encoded = {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                output = model.generate(**encoded, **options_)
            if causal:
                output = output[:, encoded["input_ids"].shape[1]:]
            summaries.extend(str(text).strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return summaries


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (Porter stemming), fractions in [0, 1]."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} summaries for {len(references)} references")
    if not predictions:
        return {name: 0.0 for name in ROUGE_TYPES}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: total / len(predictions) for name, total in totals.items()}


def evaluate(loaded: LoadedModel, rows: Sequence[Mapping[str, Any]], *, config: Mapping[str, Any]) -> dict[str, float]:
    """ROUGE-1/2/L of generated summaries on the first ``max_eval_samples`` rows."""
    limit = options(config)["max_eval_samples"]
    picked = list(rows if limit is None else rows[: int(limit)])
    if not picked:
        return {}
    batch_size = int(config.get("per_device_eval_batch_size") or 8)
    predictions = generate_summaries(loaded, [str(row["document"]) for row in picked], config, batch_size)
    return rouge_scores(predictions, [str(row["summary"]) for row in picked])
