"""Extractive question answering: SQuAD rows, encoder models with a span head, scored by
SQuAD exact match and F1 with n-best span decoding."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import LoadedModel, RowFormat, Task, native, required_text
from modelforge_core.errors import Problem

#: The window length when ``max_seq_length`` is null (the usual SQuAD setting).
DEFAULT_MAX_LENGTH = 384


def check_answers(row: Mapping[str, Any]) -> list[Problem]:
    """Problems with a SQuAD row's ``answers``: shape, types, and each answer found in the
    context at its ``answer_start``."""
    answers = row.get("answers")
    if answers is None:
        return [Problem("answers", "missing field", code="missing_field",
                        hint='{"text": ["..."], "answer_start": [character offset]}')]
    if not isinstance(answers, dict):
        return [Problem("answers", "expected an object with text and answer_start lists", code="type")]
    texts, starts = answers.get("text"), answers.get("answer_start")
    problems = []
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        problems.append(Problem("answers.text", "expected a list of strings", code="type"))
    if not isinstance(starts, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in starts):
        problems.append(Problem("answers.answer_start", "expected a list of integers", code="type"))
    if problems:
        return problems
    assert isinstance(texts, list)
    assert isinstance(starts, list)
    if len(texts) != len(starts):
        return [Problem("answers", f"{len(texts)} texts but {len(starts)} answer_start values", code="invalid")]
    context = row.get("context")
    if not isinstance(context, str):
        return []
    for index, (text, start) in enumerate(zip(texts, starts, strict=True)):
        if not text.strip():
            problems.append(Problem(f"answers.text[{index}]", "empty answer", code="empty"))
            continue
        found = context[start:start + len(text)] if start >= 0 else ""
        if found != text:
            where = context.find(text)
            hint = (f"the text occurs at {where}" if where >= 0 else "the text does not occur in the context")
            problems.append(Problem(f"answers.answer_start[{index}]",
                                    f"{text!r} is not at offset {start} of the context (found {found!r})",
                                    hint=hint, code="answer_mismatch"))
    return problems


class ExtractiveQA(Task):
    name: ClassVar[str] = "extractive-question-answering"
    description: ClassVar[str] = "SQuAD-style extractive QA with encoder span heads (exact match, F1)."
    heads: ClassVar[tuple[str, ...]] = ("question-answering",)
    data_shapes: ClassVar[frozenset[str]] = frozenset({"supervised"})
    row_formats: ClassVar[Mapping[str, Sequence[str]]] = {
        "supervised": ('{"context": ..., "question": ..., "answers": {"text": [...], "answer_start": [...]}}',),
    }
    generate_inputs: ClassVar[Mapping[str, str]] = {"context": "context", "question": "question"}
    span_answer: ClassVar[bool] = True
    default_sequence_length: ClassVar[int | None] = DEFAULT_MAX_LENGTH
    formats: ClassVar[Sequence[RowFormat]] = (
        native("squad", {"context", "question", "answers"}, {"id", "title"},
               description='{"context", "question", "answers": {"text", "answer_start"}[, "id", "title"]}'),
    )
    options_schema: ClassVar[Mapping[str, Any]] = {
        "description": "Windowing and span decoding for extractive question answering.",
        "properties": {
            "doc_stride": {"type": "integer", "minimum": 0, "default": 64,
                           "description": "Tokens of overlap between the windows of a context longer "
                                          "than max_seq_length.",
                           "examples": [64, 128]},
            "max_answer_length": {"type": "integer", "minimum": 1, "default": 30,
                                  "description": "Longest answer span considered when decoding, in tokens.",
                                  "examples": [30]},
            "n_best": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20,
                       "description": "Start and end candidates considered per window when decoding spans.",
                       "examples": [20]},
            "allow_no_answer": {"type": "boolean", "default": False,
                                "description": "Predict an empty answer when the no-answer score beats every span "
                                               "(SQuAD 2.0 data with unanswerable questions).",
                                "examples": [False, True]},
        },
    }

    def row_shape(self, row: Mapping[str, Any]) -> str | None:
        return "supervised" if {"context", "question", "answers"} & set(row) else None

    def check_row(self, row: Mapping[str, Any], shape: str, config: Mapping[str, Any]) -> list[Problem]:
        return required_text(row, ("context", "question")) + check_answers(row)

    def build_dataset(self, rows: Sequence[Mapping[str, Any]], *, shape: str, tokenizer: Any,
                      config: Mapping[str, Any], head: str) -> Any:
        from .processing import build_train_features

        return build_train_features(rows, tokenizer=tokenizer, config=config)

    def data_collator(self, tokenizer: Any, model: Any, head: str) -> Any:
        from .processing import data_collator

        return data_collator(tokenizer)

    def evaluate(self, loaded: LoadedModel, rows: Sequence[Mapping[str, Any]], *,
                 config: Mapping[str, Any]) -> dict[str, float]:
        from .processing import evaluate

        return evaluate(loaded, rows, config=config)

    def predict(self, loaded: LoadedModel, inputs: Mapping[str, Any], *, config: Mapping[str, Any],
                **generation: Any) -> str:
        """The answer span for ``{"context", "question"}``, decoded as in evaluation
        (span heads generate nothing, so generation options are ignored)."""
        from .processing import predict_answers

        missing = [key for key in ("context", "question") if not isinstance(inputs.get(key), str)]
        if missing:
            from modelforge_core.errors import UsageError

            raise UsageError(f"extractive question answering needs {' and '.join(missing)} as text: "
                             'pass {"context": "...", "question": "..."}')
        return predict_answers(loaded, [inputs], config, batch_size=16)[0]


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(ExtractiveQA())
