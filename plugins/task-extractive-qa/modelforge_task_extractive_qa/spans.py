"""N-best span decoding: from a span head's start/end logits over the windows of one long
context back to the answer text.

Pure Python (lists of floats in, text out), so the decoding rules are testable without a
model: a span starts and ends inside the *same* window, on context tokens only, ends no
earlier than it starts and is at most ``max_answer_length`` tokens long. A span crossing a
window boundary is never formed; the overlap (``doc_stride``) is what lets an answer near a
boundary appear whole in a neighbouring window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One tokenized window of a context and the model's logits for it.

    ``offsets[i]`` is the ``(start, end)`` character range in the context of token ``i``, or
    ``None`` when token ``i`` is not a context token (question, special or padding token).
    """

    start_logits: Sequence[float]
    end_logits: Sequence[float]
    offsets: Sequence[tuple[int, int] | None]
    #: Position of the token whose start/end logits mean "no answer in this window".
    cls_index: int = 0

    @property
    def null_score(self) -> float:
        return float(self.start_logits[self.cls_index]) + float(self.end_logits[self.cls_index])


@dataclass(frozen=True)
class Span:
    """A candidate answer: its text, character range in the context and score."""

    text: str
    start: int
    end: int
    score: float
    window: int


def _top(values: Sequence[float], n: int) -> list[int]:
    return sorted(range(len(values)), key=lambda i: values[i], reverse=True)[:n]


def candidate_spans(windows: Sequence[Window], context: str, *, n_best: int = 20,
                    max_answer_length: int = 30) -> list[Span]:
    """The best ``n_best`` spans over all windows, best first.

    Per window, the ``n_best`` highest start logits are paired with the ``n_best`` highest end
    logits (the usual SQuAD search), keeping only valid pairs; a span's score is its start
    logit plus its end logit. The same text found in two overlapping windows is kept once,
    with its better score.
    """
    best_by_range: dict[tuple[int, int], Span] = {}
    for number, window in enumerate(windows):
        offsets = window.offsets
        for start in _top(window.start_logits, n_best):
            if start >= len(offsets) or offsets[start] is None:
                continue
            for end in _top(window.end_logits, n_best):
                if end >= len(offsets) or offsets[end] is None:
                    continue
                if end < start or end - start + 1 > max_answer_length:
                    continue
                first, last = offsets[start], offsets[end]
                assert first is not None
                assert last is not None
                char_start, char_end = first[0], last[1]
                if char_end <= char_start:
                    continue
                score = float(window.start_logits[start]) + float(window.end_logits[end])
                key = (char_start, char_end)
                known = best_by_range.get(key)
                if known is None or score > known.score:
                    best_by_range[key] = Span(context[char_start:char_end], char_start, char_end, score, number)
    return sorted(best_by_range.values(), key=lambda span: span.score, reverse=True)[:n_best]


def decode_answer(windows: Sequence[Window], context: str, *, n_best: int = 20, max_answer_length: int = 30,
                  allow_no_answer: bool = False) -> str:
    """The answer text for one question: the best span, or ``""`` when there is none.

    With ``allow_no_answer`` (SQuAD 2.0 data), ``""`` also when the best window's no-answer
    score (the lowest over the windows, as the answer lies in at most one of them) beats the
    best span.
    """
    spans = candidate_spans(windows, context, n_best=n_best, max_answer_length=max_answer_length)
    if not spans:
        return ""
    if allow_no_answer and windows:
        null_score = min(window.null_score for window in windows)
        if null_score > spans[0].score:
            return ""
    return spans[0].text
