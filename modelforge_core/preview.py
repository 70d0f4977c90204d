"""``modelforge validate CONFIG --data --show N``: rows as the model will see them.

The rows go through the task's formatting and the same tokenization as training
(:func:`modelforge_core.datacache.prepare_sft_dataset`, which matches TRL's ``SFTTrainer``), so
what is shown is what is trained: the rendered chat template, the tokens that carry loss
marked, and the token counts against ``max_seq_length``. Loads the tokenizer (transformers),
never the model.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .data import Dataset
    from .plugins import Plugins

#: Around the text of tokens that carry loss, in plain-text output.
TRAINED_START, TRAINED_END = "[[", "]]"


@dataclass
class ShownRow:
    index: int
    where: str
    tokens: int
    trained: int
    #: ``(text, trained)`` pieces in order: the decoded tokens, split where the mask changes.
    segments: list[tuple[str, bool]]
    #: The token ids and their loss mask (1: trained).
    input_ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "where": self.where, "tokens": self.tokens, "trained_tokens": self.trained,
                "segments": [{"text": text, "trained": trained} for text, trained in self.segments],
                "input_ids": self.input_ids, "loss_mask": self.mask}


@dataclass
class Preview:
    rows: list[ShownRow]
    total_rows: int
    longest: int
    max_seq_length: int | None
    truncated: int

    def to_json(self) -> dict[str, Any]:
        return {"rows": [row.to_json() for row in self.rows], "total_rows": self.total_rows,
                "longest_tokens": self.longest, "max_seq_length": self.max_seq_length,
                "truncated_rows": self.truncated}

    def text(self, color: bool = False) -> str:
        lines = []
        for row in self.rows:
            lines.append(f"--- row {row.index} ({row.where}): {row.tokens} tokens, {row.trained} trained "
                         f"(marked {TRAINED_START} {TRAINED_END})")
            body = ""
            for text, trained in row.segments:
                if trained:
                    body += f"\x1b[1;32m{TRAINED_START}{text}{TRAINED_END}\x1b[0m" if color \
                        else f"{TRAINED_START}{text}{TRAINED_END}"
                else:
                    body += text
            lines.append(body)
        limit = self.max_seq_length
        if limit is None:
            lines.append(f"{self.total_rows} rows: longest {self.longest} tokens; max_seq_length is null "
                         "(chosen from the data and the model when training)")
        else:
            lines.append(f"{self.total_rows} rows: longest {self.longest} tokens; max_seq_length {limit}: "
                         f"{self.truncated} row{'s' if self.truncated != 1 else ''} longer, truncated in training")
        return "\n".join(lines)


def _segments(tokenizer: Any, ids: list[int], mask: list[int]) -> list[tuple[str, bool]]:
    segments: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or bool(mask[end]) != bool(mask[start]):
            segments.append((tokenizer.decode(ids[start:end]), bool(mask[start])))
            start = end
    return segments


def show(config: Mapping[str, Any], data: Dataset, count: int, *, plugins: Plugins) -> Preview:
    """The first ``count`` rows of ``data`` as the model sees them, and the token counts of all."""
    from .datacache import prepare_sft_dataset
    from .modelconfig import read_model_config

    task = plugins.registry.tasks[config["task"]]
    head = task.choose_head(config, read_model_config(config["model_name"]))
    if head != "causal-lm" or data.shape != "supervised":
        raise UsageError(f"--show renders supervised rows for causal LMs; this config trains {data.shape} rows "
                         f"on a {head} head")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config["model_name"],
                                              trust_remote_code=bool(config.get("trust_remote_code")))
    built = task.build_dataset(data.rows, shape=data.shape, tokenizer=tokenizer, config=config, head=head)
    prepared = prepare_sft_dataset(built, tokenizer, config)
    ids_all, masks_all = prepared["input_ids"], prepared["completion_mask"]
    limit = config.get("max_seq_length")
    lengths = [len(ids) for ids in ids_all]
    shown = []
    for index in range(min(count, len(ids_all))):
        ids, mask = list(ids_all[index]), list(masks_all[index])
        where = data.where[index] if index < len(data.where) else data.file
        shown.append(ShownRow(index, where, len(ids), sum(mask), _segments(tokenizer, ids, mask), ids, mask))
    truncated = sum(1 for n in lengths if limit is not None and n > limit)
    return Preview(shown, len(lengths), max(lengths, default=0), limit, truncated)
