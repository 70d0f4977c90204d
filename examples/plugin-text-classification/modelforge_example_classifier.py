"""A third-party text-classification task with named labels, written against the public API only.

It declares what the core asks a task: its head, its labels (from its own options, so a
config may rename or add them), the module it trains in full and saves (``modules_to_save``),
what ``modelforge generate`` reads, and sample rows for the test kit. Its rows are
``{"text": ..., "label": ...}``; ``check_row`` checks the label against the configured ones.
Install it as a distribution with an entry point in the ``modelforge`` group, or register the
module with ``load_plugins(extra=[("text-classification", module)])``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import LoadedModel, Task
from modelforge_core.errors import Problem

LABELS = ("negative", "neutral", "positive")
WORDS = {
    "negative": ("awful", "broken", "terrible", "sad", "bad"),
    "neutral": ("table", "window", "paper", "chair", "door"),
    "positive": ("great", "lovely", "happy", "good", "bright"),
}


def sample_rows() -> list[dict[str, str]]:
    """A learnable set: the label follows from the adjective."""
    rows = []
    for label, words in WORDS.items():
        for word in words:
            for frame in ("the day was {w}", "a {w} thing", "it looks {w} today", "so {w} again"):
                rows.append({"text": frame.format(w=word), "label": label})
    return rows


class TextClassification(Task):
    name: ClassVar[str] = "text-classification"
    description: ClassVar[str] = "Text classification with named labels (accuracy)."
    heads: ClassVar[tuple[str, ...]] = ("sequence-classification",)
    row_formats: ClassVar[Mapping[str, Sequence[str]]] = {"supervised": ('{"text": ..., "label": ...}',)}
    labels: ClassVar[tuple[str, ...]] = LABELS
    #: A BERT pooler is trained and saved in full: a checkpoint without one would otherwise get a
    #: fresh random pooler on each load.
    modules_to_save: ClassVar[tuple[str, ...]] = ("pooler",)
    generate_inputs: ClassVar[Mapping[str, str]] = {"text": "text"}
    #: It answers with a label: sampling options do not apply.
    span_answer: ClassVar[bool] = True
    sample_rows: ClassVar[Mapping[str, Sequence[Mapping[str, Any]]]] = {"supervised": sample_rows()}
    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "description": "Options of the text-classification task.",
        "properties": {
            "labels": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2,
                       "uniqueItems": True, "default": list(LABELS),
                       "description": "The label names, in label-id order.", "examples": [list(LABELS)]},
        },
    }

    def label_names(self, config: Mapping[str, Any]) -> list[str]:
        return list((config.get(self.name) or {}).get("labels") or self.labels)

    def row_shape(self, row: Mapping[str, Any]) -> str | None:
        return "supervised" if "text" in row or "label" in row else None

    def check_row(self, row: Mapping[str, Any], shape: str, config: Mapping[str, Any]) -> list[Problem]:
        problems = []
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            problems.append(Problem("text", "expected a non-empty string", code="type"))
        labels = self.label_names(config)
        if row.get("label") not in labels:
            problems.append(Problem("label", f"{row.get('label')!r} is not one of the labels {', '.join(labels)}",
                                    hint=f'set "{self.name}": {{"labels": [...]}} to change them', code="enum"))
        return problems

    def build_dataset(self, rows: Sequence[Mapping[str, Any]], *, shape: str, tokenizer: Any,
                      config: Mapping[str, Any], head: str) -> Any:
        from datasets import Dataset

        index = {name: number for number, name in enumerate(self.label_names(config))}
        encoded = tokenizer([str(row["text"]) for row in rows], truncation=True,
                            max_length=int(config.get("max_seq_length") or 128))
        return Dataset.from_dict({**encoded, "labels": [index[row["label"]] for row in rows]})

    def data_collator(self, tokenizer: Any, model: Any, head: str) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def _predict(self, loaded: LoadedModel, texts: Sequence[str]) -> list[str]:
        import torch

        model, tokenizer = loaded.model, loaded.tokenizer
        model.eval()
        names = model.config.id2label
        answers: list[str] = []
        with torch.no_grad():
            for start in range(0, len(texts), 16):
                batch = tokenizer(list(texts[start:start + 16]), padding=True, truncation=True,
                                  return_tensors="pt").to(model.device)
                logits = model(**batch).logits
                answers += [str(names[int(i)]) for i in logits.argmax(-1).tolist()]
        return answers

    def evaluate(self, loaded: LoadedModel, rows: Sequence[Mapping[str, Any]], *,
                 config: Mapping[str, Any]) -> dict[str, float]:
        if not rows:
            return {}
        answers = self._predict(loaded, [str(row["text"]) for row in rows])
        return {"accuracy": sum(a == row["label"] for a, row in zip(answers, rows, strict=True)) / len(rows)}

    def predict(self, loaded: LoadedModel, inputs: Mapping[str, Any], *, config: Mapping[str, Any],
                **generation: Any) -> str:
        return self._predict(loaded, [str(inputs["text"])])[0]


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(TextClassification())
