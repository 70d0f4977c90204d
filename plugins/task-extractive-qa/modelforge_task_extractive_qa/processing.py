"""Tokenizing SQuAD rows into span-head features, and scoring a model on them.

A context longer than the window is split into several windows that overlap by
``doc_stride`` tokens, each carrying the question. For training, a window's labels are the
token positions of the answer's first and last character, or the ``[CLS]`` position when the
whole answer is not inside that window (or the question has none). For evaluation, every
window keeps the character offsets of its context tokens, so the spans decoded from the
logits of all windows of an example map back to the context text.

torch, transformers and datasets are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelforge_core.api import LoadedModel
from modelforge_core.errors import ModelForgeError, Problem, ValidationFailed

from . import DEFAULT_MAX_LENGTH
from .metrics import squad_scores
from .spans import Window, decode_answer

#: Tokenizers report this (or more) as ``model_max_length`` when they know no limit.
UNKNOWN_LIMIT = 10**6


def options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The task's options with their defaults (the schema fills them in a resolved config;
    direct callers may pass a partial one)."""
    given = config.get("extractive-question-answering") or {}
    return {"doc_stride": given.get("doc_stride", 64), "max_answer_length": given.get("max_answer_length", 30),
            "n_best": given.get("n_best", 20), "allow_no_answer": given.get("allow_no_answer", False)}


def window_length(tokenizer: Any, config: Mapping[str, Any], model: Any = None) -> int:
    """``max_seq_length`` (384 when null), capped by what the tokenizer and model can take."""
    wanted = int(config.get("max_seq_length") or DEFAULT_MAX_LENGTH)
    limits = [wanted]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < UNKNOWN_LIMIT:
        limits.append(tokenizer_limit)
    model_limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(model_limit, int) and model_limit > 0:
        limits.append(model_limit)
    return min(limits)


def _question(row: Mapping[str, Any]) -> str:
    # Leading whitespace in a question only wastes window room (SQuAD has such questions).
    return str(row["question"]).lstrip()


@dataclass
class Encoded:
    """The windows of a list of rows: tokenizer outputs per window, which row each window
    belongs to, and the character offsets of its context tokens (``None`` elsewhere)."""

    features: list[dict[str, list[int]]]
    row_of: list[int]
    offsets: list[list[tuple[int, int] | None]]
    cls_index: list[int]


def encode_windows(rows: Sequence[Mapping[str, Any]], tokenizer: Any, config: Mapping[str, Any],
                   model: Any = None) -> Encoded:
    """Tokenize question + context pairs into overlapping windows (see the module doc).

    The question comes first for tokenizers that pad on the right (BERT, RoBERTa) and second
    for those that pad on the left (XLNet), as each was pre-trained. The overlap is
    ``doc_stride``, reduced for a question so long that the window has little room left.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ModelForgeError(
            "extractive question answering maps answers through token offsets, which only fast (Rust) "
            f"tokenizers give, and {type(tokenizer).__name__} is not one: use a model that ships a "
            "tokenizer.json")
    length = window_length(tokenizer, config, model)
    stride_wanted = int(options(config)["doc_stride"])
    question_first = getattr(tokenizer, "padding_side", "right") == "right"
    context_sequence = 1 if question_first else 0
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    questions = [_question(row) for row in rows]
    question_lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]] if rows else []
    groups: dict[int, list[int]] = {}
    problems = []
    for index, question_length in enumerate(question_lengths):
        room = length - specials - question_length
        if room < 2:
            problems.append(Problem(
                "max_seq_length", f"the question {questions[index][:60]!r} is {question_length} tokens long, "
                f"which leaves no room for its context in a window of {length} tokens",
                hint="raise max_seq_length or shorten the question", code="too_long"))
            continue
        # The tokenizer refuses a stride that is not below the room left for the context.
        groups.setdefault(min(stride_wanted, room // 2), []).append(index)
    if problems:
        raise ValidationFailed(problems[:20], subject="dataset", omitted=max(0, len(problems) - 20))

    encoded = Encoded([], [], [], [])
    by_row: dict[int, list[tuple[dict[str, list[int]], list[tuple[int, int] | None], int]]] = {}
    for stride, indices in sorted(groups.items()):
        firsts = [questions[i] for i in indices]
        seconds = [str(rows[i]["context"]) for i in indices]
        if not question_first:
            firsts, seconds = seconds, firsts
        batch = tokenizer(firsts, seconds, truncation="only_second" if question_first else "only_first",
                          max_length=length, stride=stride, return_overflowing_tokens=True,
                          return_offsets_mapping=True, padding=False)
        for window in range(len(batch["input_ids"])):
            row = indices[batch["overflow_to_sample_mapping"][window]]
            sequence_ids = batch.sequence_ids(window)
            offsets: list[tuple[int, int] | None] = [
                (int(span[0]), int(span[1])) if sequence_ids[t] == context_sequence else None
                for t, span in enumerate(batch["offset_mapping"][window])]
            ids = batch["input_ids"][window]
            cls_id = tokenizer.cls_token_id
            cls_index = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
            feature = {key: list(batch[key][window]) for key in batch
                       if key not in ("offset_mapping", "overflow_to_sample_mapping")}
            by_row.setdefault(row, []).append((feature, offsets, cls_index))
    for row in sorted(by_row):
        for feature, offsets, cls_index in by_row[row]:
            encoded.features.append(feature)
            encoded.row_of.append(row)
            encoded.offsets.append(offsets)
            encoded.cls_index.append(cls_index)
    return encoded


def answer_tokens(offsets: Sequence[tuple[int, int] | None], char_start: int, char_end: int) -> tuple[int, int] | None:
    """First and last token of the answer ``[char_start, char_end)`` when the window holds all
    of it, else ``None``."""
    context = [(t, span) for t, span in enumerate(offsets) if span is not None]
    if not context or context[0][1][0] > char_start or context[-1][1][1] < char_end:
        return None
    start = next((t for t, span in context if span[1] > char_start), None)
    end = next((t for t, span in reversed(context) if span[0] < char_end), None)
    if start is None or end is None or end < start:
        return None
    return start, end


def label_windows(rows: Sequence[Mapping[str, Any]], encoded: Encoded) -> list[dict[str, Any]]:
    """Training features: each window with ``start_positions`` and ``end_positions`` (the
    first gold answer's tokens, or the ``[CLS]`` position when it is not all in the window)."""
    features = []
    for feature, row_index, offsets, cls_index in zip(encoded.features, encoded.row_of, encoded.offsets,
                                                      encoded.cls_index, strict=True):
        answers = rows[row_index]["answers"]
        positions = None
        if answers["text"]:
            char_start = int(answers["answer_start"][0])
            positions = answer_tokens(offsets, char_start, char_start + len(answers["text"][0]))
        start, end = positions if positions is not None else (cls_index, cls_index)
        features.append({**feature, "start_positions": start, "end_positions": end})
    return features


def build_train_features(rows: Sequence[Mapping[str, Any]], *, tokenizer: Any, config: Mapping[str, Any]) -> Any:
    """The ``datasets.Dataset`` of labelled windows that the trainer consumes."""
    from datasets import Dataset

    return Dataset.from_list(label_windows(rows, encode_windows(rows, tokenizer, config)))


def data_collator(tokenizer: Any) -> Any:
    """Pads each batch to its longest window (windows vary in length; the labels are scalars)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def window_logits(loaded: LoadedModel, encoded: Encoded, batch_size: int) -> list[tuple[list[float], list[float]]]:
    """Start and end logits of every window, unpadded, in window order."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[tuple[list[float], list[float]]] = []
    try:
        with torch.no_grad():
            for first in range(0, len(encoded.features), batch_size):
                chunk = encoded.features[first:first + batch_size]
                batch = tokenizer.pad(chunk, return_tensors="pt")
                output = model(**{k: v.to(device) for k, v in batch.items()})
                for row, feature in enumerate(chunk):
                    width = len(feature["input_ids"])
                    results.append((output.start_logits[row, :width].float().tolist(),
                                    output.end_logits[row, :width].float().tolist()))
    finally:
        model.train(was_training)
    return results


def predict_answers(loaded: LoadedModel, rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                    batch_size: int = 16) -> list[str]:
    """The decoded answer text for every row (``context`` and ``question``)."""
    encoded = encode_windows(rows, loaded.tokenizer, config, loaded.model)
    logits = window_logits(loaded, encoded, batch_size)
    windows: dict[int, list[Window]] = {}
    for (starts, ends), row, offsets, cls_index in zip(logits, encoded.row_of, encoded.offsets, encoded.cls_index,
                                                       strict=True):
        windows.setdefault(row, []).append(Window(starts, ends, offsets, cls_index))
    settings = options(config)
    return [decode_answer(windows.get(index, []), str(row["context"]), n_best=int(settings["n_best"]),
                          max_answer_length=int(settings["max_answer_length"]),
                          allow_no_answer=bool(settings["allow_no_answer"]))
            for index, row in enumerate(rows)]


def evaluate(loaded: LoadedModel, rows: Sequence[Mapping[str, Any]], *, config: Mapping[str, Any]) -> dict[str, float]:
    """SQuAD ``exact_match`` and ``f1`` (fractions) of the decoded answers on ``rows``."""
    if not rows:
        return {}
    batch_size = int(config.get("per_device_eval_batch_size") or 16)
    predictions = predict_answers(loaded, rows, config, batch_size)
    return squad_scores(predictions, [list(row["answers"]["text"]) for row in rows])
