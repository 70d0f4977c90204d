"""Checks between tokenization and the first training step: what ``validate`` cannot know
without the tokenizer, said in one sentence instead of a crash deep inside a library.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import Problem, ValidationFailed


def rows_without_completion(dataset: Any, max_length: int) -> tuple[int, int, int]:
    """For a tokenized prompt/completion dataset (``input_ids`` and ``completion_mask``): how many
    rows keep no completion token within the first ``max_length`` tokens (TRL truncates the end
    and then drops such rows: they teach nothing), how many rows there are, and the longest
    prompt in tokens. ``(0, 0, 0)`` for datasets of another shape."""
    if dataset is None or "completion_mask" not in getattr(dataset, "column_names", ()):
        return 0, 0, 0
    empty = 0
    longest_prompt = 0
    masks = dataset["completion_mask"]
    for mask in masks:
        prompt = next((i for i, flag in enumerate(mask) if flag), len(mask))
        longest_prompt = max(longest_prompt, prompt)
        if not any(mask[:max_length]):
            empty += 1
    return empty, len(masks), longest_prompt


def check_completions_fit(train: Any, evaluation: Any, max_length: int, *, packing: bool,
                          say: Callable[[str], None]) -> None:
    """Refuse a training whose every row is cut before its answer by ``max_seq_length``
    (exit 2, naming the field and the longest prompt); say how many rows are skipped otherwise."""
    if packing:
        return
    for name, dataset in (("training", train), ("evaluation", evaluation)):
        empty, total, longest = rows_without_completion(dataset, max_length)
        if not total or not empty:
            continue
        if empty == total:
            raise ValidationFailed([Problem(
                "max_seq_length",
                f"every one of the {total} {name} rows is longer than max_seq_length {max_length} before its "
                f"answer starts (the longest prompt has {longest} tokens): nothing would be learned",
                hint="raise max_seq_length, or shorten the prompts", code="too_long")], subject="dataset")
        say(f"{empty} of {total} {name} rows are cut before their answer by max_seq_length {max_length} "
            "and are skipped")
