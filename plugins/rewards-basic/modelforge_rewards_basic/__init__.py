"""Built-in reward functions for grpo (and any strategy that takes a reward list).

- ``exact_match``: 1 when the (extracted, normalised) answer equals the row's reference, else 0.
- ``numeric_match``: 1 when the answer's number equals the reference number within a tolerance.
- ``regex``: 1 when the completion matches a pattern (by default a required ``<answer>`` tag).
- ``length_penalty``: 0 up to a length, then down to -1 as the completion grows to twice it.

All are deterministic, pure Python (no torch), and cheap enough to run in the training loop.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import Reward

#: The answer tag the regex reward requires by default, and a matching extraction pattern.
ANSWER_TAG = r"<answer>[\s\S]*?</answer>"
ANSWER_EXTRACT = r"<answer>([\s\S]*?)</answer>"

_FIELD = {"type": "string", "minLength": 1, "pattern": r"\S", "default": "answer",
          "description": "The row field holding the reference answer.", "examples": ["answer"]}
_EXTRACT = {"type": ["string", "null"], "minLength": 1, "default": None,
            "description": ("A regular expression whose first group is the answer inside the completion "
                            "(the last match counts), e.g. \"<answer>(.*?)</answer>\"; null: the whole completion. "
                            "No match scores 0."),
            "examples": [ANSWER_EXTRACT]}


def normalize_text(text: str) -> str:
    """Case-folded, accents kept, punctuation and articles dropped, whitespace collapsed
    (SQuAD-style answer normalisation)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    words = [w for w in text.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def extract(completion: str, pattern: str | None) -> str | None:
    """The answer in ``completion``: the first group of the last match of ``pattern``
    (the whole match when it has no group); the whole completion when ``pattern`` is null."""
    if pattern is None:
        return completion
    matches = list(re.finditer(pattern, completion))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if last.re.groups else last.group(0)


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def parse_number(text: Any) -> Decimal | None:
    """The last number written in ``text`` (``1,234.5``, ``-3``, ``2e3``, ``$12``); a number
    value as is; ``None`` when there is none."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return None if isinstance(text, float) and not math.isfinite(text) else Decimal(str(text))
    found = _NUMBER.findall(str(text))
    if not found:
        return None
    try:
        return Decimal(found[-1].replace(",", ""))
    except InvalidOperation:
        return None


class ExactMatch(Reward):
    name: ClassVar[str] = "exact_match"
    description: ClassVar[str] = "1 when the answer equals the row's reference answer (normalised), else 0."
    row_fields: ClassVar[tuple[str, ...]] = ("answer",)
    score_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    options_schema: ClassVar[Mapping[str, Any]] = {
        "properties": {
            "field": _FIELD,
            "extract": _EXTRACT,
            "normalize": {"type": "boolean", "default": True,
                          "description": ("Compare case-folded, without punctuation, articles (a, an, the) and "
                                          "extra whitespace; false: compare the stripped texts exactly."),
                          "examples": [True]},
        },
    }

    def fields(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        return (str(options["field"]),)

    def score(self, prompts: Sequence[Any], completions: Sequence[str], *,
              fields: Mapping[str, Sequence[Any]], options: Mapping[str, Any]) -> list[float]:
        references = fields[options["field"]]
        norm: Callable[[str], str] = normalize_text if options["normalize"] else str.strip
        scores = []
        for completion, reference in zip(completions, references, strict=True):
            answer = extract(completion, options["extract"])
            scores.append(float(answer is not None and norm(answer) == norm(str(reference))))
        return scores


class NumericMatch(Reward):
    name: ClassVar[str] = "numeric_match"
    description: ClassVar[str] = "1 when the answer's last number equals the reference number within a tolerance."
    row_fields: ClassVar[tuple[str, ...]] = ("answer",)
    score_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    options_schema: ClassVar[Mapping[str, Any]] = {
        "properties": {
            "field": _FIELD,
            "extract": _EXTRACT,
            "tolerance": {"type": "number", "minimum": 0, "default": 0.0,
                          "description": "Largest absolute difference that still counts as equal.",
                          "examples": [0.0, 0.01]},
        },
    }

    def fields(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        return (str(options["field"]),)

    def score(self, prompts: Sequence[Any], completions: Sequence[str], *,
              fields: Mapping[str, Sequence[Any]], options: Mapping[str, Any]) -> list[float]:
        tolerance = Decimal(str(options["tolerance"]))
        scores = []
        for completion, reference in zip(completions, fields[options["field"]], strict=True):
            answer = extract(completion, options["extract"])
            got, want = parse_number(answer) if answer is not None else None, parse_number(reference)
            scores.append(float(got is not None and want is not None and abs(got - want) <= tolerance))
        return scores


class RegexFormat(Reward):
    name: ClassVar[str] = "regex"
    description: ClassVar[str] = "1 when the completion matches a pattern (default: an <answer>...</answer> tag)."
    score_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    options_schema: ClassVar[Mapping[str, Any]] = {
        "properties": {
            "pattern": {"type": "string", "minLength": 1, "default": ANSWER_TAG,
                        "description": "A Python regular expression the completion must match.",
                        "examples": [ANSWER_TAG, r"^The harbour of \w+ is \w+\.$"]},
            "mode": {"type": "string", "enum": ["search", "fullmatch", "start"], "default": "search",
                     "description": ("search: anywhere in the completion; fullmatch: the whole completion "
                                     "(surrounding whitespace ignored); start: at its beginning."),
                     "examples": ["search"]},
            "ignore_case": {"type": "boolean", "default": False,
                            "description": "Match letters regardless of case.", "examples": [False]},
        },
    }

    def score(self, prompts: Sequence[Any], completions: Sequence[str], *,
              fields: Mapping[str, Sequence[Any]], options: Mapping[str, Any]) -> list[float]:
        compiled = re.compile(options["pattern"], re.IGNORECASE if options["ignore_case"] else 0)
        match = {"search": compiled.search, "fullmatch": compiled.fullmatch, "start": compiled.match}[options["mode"]]
        return [float(match(c.strip() if options["mode"] == "fullmatch" else c) is not None) for c in completions]


class LengthPenalty(Reward):
    name: ClassVar[str] = "length_penalty"
    description: ClassVar[str] = "0 up to max_length, then falling linearly to -1 at twice max_length and beyond."
    score_range: ClassVar[tuple[float, float] | None] = (-1.0, 0.0)
    options_schema: ClassVar[Mapping[str, Any]] = {
        "properties": {
            "max_length": {"type": "integer", "minimum": 1, "default": 200,
                           "description": "The longest completion without a penalty, in units.",
                           "examples": [200]},
            "unit": {"type": "string", "enum": ["characters", "words"], "default": "characters",
                     "description": "What max_length counts (whitespace-separated words or characters).",
                     "examples": ["characters", "words"]},
        },
    }

    def score(self, prompts: Sequence[Any], completions: Sequence[str], *,
              fields: Mapping[str, Sequence[Any]], options: Mapping[str, Any]) -> list[float]:
        limit = int(options["max_length"])
        scores = []
        for completion in completions:
            length = len(completion.split()) if options["unit"] == "words" else len(completion)
            scores.append(-min(1.0, max(0, length - limit) / limit))
        return scores


@hookimpl
def register_rewards(register: Callable[[Reward], None]) -> None:
    for reward in (ExactMatch(), NumericMatch(), RegexFormat(), LengthPenalty()):
        register(reward)
