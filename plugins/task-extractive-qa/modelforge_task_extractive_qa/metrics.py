"""SQuAD exact match and F1, with the official answer normalisation.

Pure Python on purpose: the scores are what users compare with published SQuAD numbers, so
they must be easy to read and test, and cheap to import.

Normalisation (as the official SQuAD script does it): lower-case, drop punctuation, drop the
articles *a*, *an*, *the*, collapse whitespace. A question without gold answers (SQuAD 2.0's
unanswerable ones) counts the empty string as its only gold answer, so only an empty
prediction scores on it. Scores are fractions in [0, 1].
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation and articles, collapse whitespace (SQuAD's order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when both normalise to the same string."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalisation.

    When either side normalises to nothing, only both being empty scores (SQuAD 2.0's rule):
    otherwise an empty prediction would get 0/0.
    """
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def golds_or_empty(golds: Iterable[str]) -> list[str]:
    """The gold answers, or ``[""]`` for a question that has none."""
    answers = [g for g in golds if normalize_answer(g)]
    return answers or [""]


def best_over_golds(prediction: str, golds: Iterable[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction: the best over its gold answers."""
    answers = golds_or_empty(golds)
    return (max(exact_match(prediction, g) for g in answers),
            max(token_f1(prediction, g) for g in answers))


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ``exact_match`` and ``f1`` over questions, each the max over its gold answers."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    pairs = [best_over_golds(p, g) for p, g in zip(predictions, golds, strict=True)]
    return {"exact_match": sum(em for em, _ in pairs) / len(pairs),
            "f1": sum(f1 for _, f1 in pairs) / len(pairs)}
