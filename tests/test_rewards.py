"""Reward functions as a component kind: registration, the reward list in the effective schema
(Python and Ajv agree), validation messages with their JSON paths, and ``modelforge plugins``.
Light: nothing here imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from modelforge_core import hookimpl
from modelforge_core.api import Reward, Strategy
from modelforge_core.errors import PluginError
from modelforge_core.plugins import BUILTIN_DISTRIBUTIONS, Plugins, load_plugins
from modelforge_core.rewards import reward_functions
from modelforge_core.schema import effective_schema, validate_instance

REPO = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {"task": "text-generation", "model_name": "m", "dataset": "d.jsonl",
                        "compute_specs": "low_end", "strategy": "grpo"}


class Shouting(Reward):
    """A third-party reward: the share of upper-case letters, above a floor."""

    name: ClassVar[str] = "shouting"
    description: ClassVar[str] = "Share of upper-case letters."
    score_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    options_schema: ClassVar[Mapping[str, Any]] = {"properties": {
        "floor": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0, "examples": [0.1],
                  "description": "Shares below it score 0."}}}

    def score(self, prompts: Sequence[Any], completions: Sequence[str], *,
              fields: Mapping[str, Sequence[Any]], options: Mapping[str, Any]) -> list[float]:
        shares = [sum(c.isupper() for c in text) / max(1, sum(c.isalpha() for c in text)) for text in completions]
        return [share if share >= options["floor"] else 0.0 for share in shares]


class RewardPlugin:
    def __init__(self, *rewards: Any) -> None:
        self.rewards = rewards

    @hookimpl
    def register_rewards(self, register: Callable[[Reward], None]) -> None:
        for reward in self.rewards:
            register(reward)


def with_rewards(*rewards: Any, name: str = "loud") -> Plugins:
    return load_plugins(extra=[(name, RewardPlugin(*rewards))], environ={})


def paths(config: Mapping[str, Any], plugins: Plugins) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in validate_instance(config, effective_schema(plugins.registry), plugins)]


def test_hook_register_rewards() -> None:
    plugins = with_rewards(Shouting())
    reward = plugins.registry.rewards["shouting"]
    assert isinstance(reward, Shouting) and plugins.registry.owner_of(reward).name == "loud"
    assert plugins.hook_names("loud") == ["register_rewards"]
    # Offered by the effective schema next to the built-ins, with its options checked per entry.
    rewards = effective_schema(plugins.registry)["$defs"]["rewards"]
    assert rewards["items"]["properties"]["name"]["enum"] == [
        "exact_match", "length_penalty", "numeric_match", "regex", "shouting"]
    assert "shouting: Share of upper-case letters." in rewards["description"]
    config = {**BASE, "grpo": {"rewards": [{"name": "shouting", "weight": 0.5, "options": {"floor": 0.2}}]}}
    assert paths(config, plugins) == []
    # The strategy's callable: defaults filled in, the weight kept, named for TRL's logs.
    [function] = reward_functions([{"name": "shouting"}], plugins.registry)
    assert function.options == {"floor": 0.0} and function.weight == 1.0 and function.__name__ == "shouting"
    assert function(["p", "p"], ["LOUD", "quiet"]) == [1.0, 0.0]
    assert reward.capabilities() == {"needs_gpu": False, "fields": [], "score_range": [0.0, 1.0]}


def test_builtin_rewards_and_grpo_come_from_their_distributions(builtin_plugins: Plugins) -> None:
    registry = builtin_plugins.registry
    for (kind, name), distribution in BUILTIN_DISTRIBUTIONS.items():
        if kind in ("reward", "strategy") and name in ("grpo", *registry.rewards):
            assert registry.owner_of(registry.of_kind(kind)[name]).distribution == distribution


def test_duplicate_reward_names_are_refused_naming_both_plugins() -> None:
    with pytest.raises(PluginError, match=r"reward 'regex' is registered twice: by plugin 'loud'.*"
                                          r"and by plugin 'rewards-basic' \(distribution modelforge-rewards-basic"):
        with_rewards(type("Regex", (Shouting,), {"name": "regex"})())


def test_a_strategy_registered_as_a_reward_is_refused() -> None:
    class NotAReward(Strategy):
        name: ClassVar[str] = "nope"

    with pytest.raises(PluginError, match=r"registered .* as a reward, but it is not a modelforge_core\.api\.Reward"):
        with_rewards(NotAReward())


@pytest.mark.parametrize(("rewards", "expected"), [
    ([{"name": "exact_mach"}],
     [("grpo.rewards[0].name",
       '"exact_mach" is not one of "exact_match", "length_penalty", "numeric_match", "regex"')]),
    ([{"name": "regex"}, {"name": "numeric_match", "options": {"tolerance": -1}}],
     [("grpo.rewards[1].options.tolerance", "-1 is below the minimum of 0")]),
    ([{"name": "regex", "options": {"patern": "x"}}], [("grpo.rewards[0].options.patern", "unknown field 'patern'")]),
    ([{"name": "regex", "options": {"mode": "anywhere"}}],
     [("grpo.rewards[0].options.mode", '"anywhere" is not one of "search", "fullmatch", "start"')]),
    ([{"name": "regex", "weight": "high"}], [("grpo.rewards[0].weight", 'expected number, got string "high"')]),
    ([], [("grpo.rewards", "[] should be non-empty")]),
])
def test_bad_reward_lists_are_refused_at_their_path(rewards: list[Any], expected: list[tuple[str, str]],
                                                    builtin_plugins: Plugins) -> None:
    assert paths({**BASE, "grpo": {"rewards": rewards}}, builtin_plugins) == expected


def test_grpo_needs_a_reward_list_and_its_loss_rules_hold(builtin_plugins: Plugins) -> None:
    assert [p for p, _ in paths({**BASE, "grpo": {}}, builtin_plugins)] == ["grpo.rewards"]
    rewards = [{"name": "regex"}]
    found = paths({**BASE, "grpo": {"rewards": rewards, "loss_type": "luspo"}}, builtin_plugins)
    assert found == [("grpo.importance_sampling_level",
                      "The luspo loss of the grpo strategy needs grpo.importance_sampling_level 'sequence'.")]
    found = paths({**BASE, "grpo": {"rewards": rewards, "loss_type": "luspo", "importance_sampling_level": "token"}},
                  builtin_plugins)
    assert found == [("grpo.importance_sampling_level",
                      "The luspo loss of the grpo strategy needs grpo.importance_sampling_level 'sequence'. "
                      '(got "token")')]
    assert paths({**BASE, "grpo": {"rewards": rewards, "loss_type": "luspo", "importance_sampling_level": "sequence"}},
                 builtin_plugins) == []
    # Summarization has no prompt rows: grpo is refused for it, with what would work.
    found = paths({**BASE, "task": "summarization", "grpo": {"rewards": rewards}}, builtin_plugins)
    assert [p for p, _ in found] == ["strategy"]


def test_a_builtin_reward_that_is_not_installed_says_what_to_install() -> None:
    plugins = load_plugins(environ={"MODELFORGE_DISABLE_PLUGINS": "rewards-basic"})
    assert plugins.registry.rewards == {}
    found = paths({**BASE, "grpo": {"rewards": [{"name": "regex"}]}}, plugins)
    assert found == [("grpo.rewards[0].name", "reward 'regex' comes from modelforge-rewards-basic, which is "
                                              "installed but disabled by MODELFORGE_DISABLE_PLUGINS")]


def test_ajv_gives_the_same_verdicts_on_reward_lists(builtin_plugins: Plugins, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is needed for the cross-language check"
    schema = effective_schema(builtin_plugins.registry)
    (tmp_path / "effective.json").write_text(json.dumps(schema), "utf-8")
    lists: list[Any] = [
        [{"name": "regex"}],
        [{"name": "regex", "weight": 2, "options": {"pattern": "a", "mode": "start"}}, {"name": "exact_match"}],
        [{"name": "regex", "options": {"tolerance": 1}}],
        [{"name": "numeric_match", "options": {"tolerance": 0.5}}],
        [{"name": "numeric_match", "options": {"tolerance": -0.5}}],
        [{"name": "nope"}],
        [{"weight": 1}],
        [],
    ]
    configs = [{**BASE, "grpo": {"rewards": r}} for r in lists]
    items = [{"name": str(i), "config": c} for i, c in enumerate(configs)]
    script = REPO / "schema/scripts/ajv-verdicts.mjs"
    result = subprocess.run([node, str(script), str(tmp_path / "effective.json"), "-"], input=json.dumps(items),
                            capture_output=True, text=True, check=True, timeout=60)
    ajv = [v["valid"] for v in json.loads(result.stdout)]
    python = [not validate_instance(c, schema, builtin_plugins) for c in configs]
    assert ajv == python == [True, True, False, True, False, False, False, False]


def test_cli_validate_suggests_installed_rewards_and_names_bad_options(
        modelforge: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    config = {**BASE, "dataset": "d.jsonl", "grpo": {"rewards": [
        {"name": "exact", "options": {}}, {"name": "regex", "options": {"mode": 3}}]}}
    (tmp_path / "cfg.json").write_text(json.dumps(config, indent=1))
    (tmp_path / "d.jsonl").write_text('{"prompt": "Hi", "answer": "x"}\n')
    result = modelforge("validate", "cfg.json", "--json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = {e["path"]: e for e in json.loads(result.stdout)["errors"]}
    assert set(errors) == {"grpo.rewards[0].name", "grpo.rewards[1].options.mode"}
    assert "exact_match" in errors["grpo.rewards[0].name"]["message"]
    assert errors["grpo.rewards[0].name"]["hint"] == "did you mean 'exact_match'?"
    assert errors["grpo.rewards[1].options.mode"]["line"] is not None
    plain = modelforge("validate", "cfg.json", cwd=tmp_path)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr


def test_cli_plugins_lists_rewards(modelforge: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    result = modelforge("plugins", "--json")
    assert result.returncode == 0, result.stderr
    [row] = [r for r in json.loads(result.stdout)["plugins"] if r["distribution"] == "modelforge-rewards-basic"]
    assert row["hooks"] == ["register_rewards"]
    components = {c["name"]: c for c in row["components"]}
    assert set(components) == {"exact_match", "numeric_match", "regex", "length_penalty"}
    assert components["exact_match"]["kind"] == "reward"
    assert components["exact_match"]["capabilities"]["fields"] == ["answer"]
    assert components["regex"]["options"] == ["ignore_case", "mode", "pattern"]
    text = modelforge("plugins")
    assert "reward 'numeric_match'" in text.stdout


def test_validate_data_checks_prompt_rows_by_line(modelforge: Callable[..., subprocess.CompletedProcess[str]],
                                                  tmp_path: Path) -> None:
    rows = [{"prompt": "Where does the fox live?", "answer": "forest"}, {"prompt": 7},
            {"prompt": [{"role": "user", "content": "Hi"}], "answer": "x"}, {"prompt": "Q", "completion": "A"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "cfg.json").write_text(json.dumps({**BASE, "grpo": {"rewards": [{"name": "exact_match"}]}}))
    result = modelforge("validate", "cfg.json", "--data", "--json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    found = {(e["line"], e["path"]) for e in json.loads(result.stdout)["errors"]}
    assert found == {(2, "prompt"), (4, "(row)")}  # a supervised row is not a prompt row
