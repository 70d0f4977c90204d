"""The built-in rewards, unit by unit: pure Python, no model, deterministic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from modelforge_rewards_basic import ExactMatch, LengthPenalty, NumericMatch, RegexFormat, normalize_text, parse_number

from modelforge_core.api import Reward
from modelforge_core.plugins import load_plugins
from modelforge_core.rewards import options_with_defaults, reward_functions


def score(reward: Reward, completions: Sequence[str], answers: Sequence[Any] | None = None,
          **options: Any) -> list[float]:
    full = options_with_defaults(reward, options)
    fields: Mapping[str, Sequence[Any]] = {}
    if answers is not None:
        fields = {full.get("field", "answer"): list(answers)}
    first = reward.score(["q"] * len(completions), list(completions), fields=fields, options=full)
    again = reward.score(["q"] * len(completions), list(completions), fields=fields, options=full)
    assert first == again, "a reward is deterministic"
    return first


def test_exact_match_normalises_case_punctuation_articles_and_spaces() -> None:
    assert normalize_text("  The  Harbour of Veloria!") == "harbour of veloria"
    assert score(ExactMatch(), ["Quenlow.", "the quenlow", "Ostyn", ""], ["Quenlow"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert score(ExactMatch(), ["Quenlow.", " Quenlow "], ["Quenlow"] * 2, normalize=False) == [0.0, 1.0]


def test_exact_match_extracts_the_last_tagged_answer_and_reads_its_field() -> None:
    completions = ["I think <answer>Ostyn</answer>, no: <answer>Quenlow</answer>", "Quenlow", "<answer>x</answer>"]
    assert score(ExactMatch(), completions, ["quenlow"] * 3, extract=r"<answer>(.*?)</answer>") == [1.0, 0.0, 0.0]
    assert ExactMatch().fields({"field": "solution"}) == ("solution",)
    assert score(ExactMatch(), ["42"], [42], field="solution") == [1.0]


def test_numeric_match_reads_the_last_number_with_a_tolerance() -> None:
    assert parse_number("so 3 + 4 = 1,234.50 dollars") == parse_number("1234.5")
    assert parse_number("no digits") is None and parse_number(7) == parse_number("7.0")
    completions = ["3 + 4 = 7", "The answer is 7.0", "$1,000", "seven", "-2e1"]
    assert score(NumericMatch(), completions, [7, "7", 1000, 7, -20]) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert score(NumericMatch(), ["3.14", "3.2"], [3.14159, 3.14159], tolerance=0.01) == [1.0, 0.0]
    assert score(NumericMatch(), ["<answer>12</answer> then 13"], [12], extract=r"<answer>(.*?)</answer>") == [1.0]


def test_regex_checks_the_answer_tag_by_default_and_other_patterns_on_request() -> None:
    assert score(RegexFormat(), ["<answer>Quenlow</answer>", "<answer>Quenlow", "Quenlow"]) == [1.0, 0.0, 0.0]
    pattern = r"The harbour of \w+ is \w+\."
    assert score(RegexFormat(), ["The harbour of A is B. ", "Well. The harbour of A is B."], pattern=pattern,
                 mode="fullmatch") == [1.0, 0.0]
    assert score(RegexFormat(), ["well, the harbour of A is B."], pattern=pattern, mode="start") == [0.0]
    assert score(RegexFormat(), ["the harbour of A is B."], pattern=pattern, mode="start", ignore_case=True) == [1.0]


def test_length_penalty_is_zero_up_to_the_limit_then_falls_to_minus_one() -> None:
    assert score(LengthPenalty(), ["abcd", "abcdef", "abcdefgh", "x" * 50], max_length=4) == [0.0, -0.5, -1.0, -1.0]
    assert score(LengthPenalty(), ["one two", "one two three"], max_length=2, unit="words") == [0.0, -0.5]


def test_the_rewards_are_registered_with_their_options_and_capabilities() -> None:
    registry = load_plugins(environ={"MODELFORGE_LOAD_PLUGINS": "rewards-basic"}).registry
    assert sorted(registry.rewards) == ["exact_match", "length_penalty", "numeric_match", "regex"]
    assert registry.owner_of(registry.rewards["regex"]).distribution == "modelforge-rewards-basic"
    assert registry.rewards["exact_match"].capabilities() == {"needs_gpu": False, "fields": ["answer"],
                                                               "score_range": [0.0, 1.0]}
    # Options the schema cannot judge are refused before training, with their path.
    from modelforge_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"grpo\.rewards\[1\]\.options: .*regex.*"):
        reward_functions([{"name": "exact_match"}, {"name": "regex", "options": {"pattern": "(unclosed"}}],
                         registry, where="grpo.rewards")
    [function] = reward_functions([{"name": "exact_match", "weight": 2}], registry)
    assert function.__name__ == "exact_match" and function.weight == 2.0
    assert function(["q", "q"], [[{"role": "assistant", "content": "Quenlow"}], "no"], answer=["quenlow"] * 2,
                    trainer_state=None) == [1.0, 0.0]
