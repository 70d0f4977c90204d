"""Reward functions as components: the reward list of a config, its schema, and the callables
that online RL trainers (TRL's ``GRPOTrainer``) call.

A strategy that trains against reward functions writes ``"rewards": {"$ref": "#/$defs/rewards"}``
in its ``options_schema``; the effective schema defines ``$defs/rewards`` from the installed
rewards (:func:`reward_list_schema`): a list of ``{"name", "weight", "options"}`` entries whose
``name`` is an installed reward and whose ``options`` that reward's ``options_schema`` checks.
At training time :func:`reward_functions` turns the configured list into callables.

Importing this module is cheap: no torch, no transformers.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .api import REWARDS_REF as REWARDS_REF  # noqa: PLC0414  (the list's place, defined in the public API)
from .errors import ConfigError

if TYPE_CHECKING:
    from .api import Reward
    from .plugins import Registry

#: The dataset column holding each prompt's row number (see :func:`reward_functions`).
ROW_COLUMN = "modelforge_row"


def reward_list_schema(registry: Registry) -> dict[str, Any]:
    """The schema of a reward list, for the installed rewards."""
    names = sorted(registry.rewards)
    installed = "; ".join(f"{name}: {registry.rewards[name].description}" for name in names) or "none"
    rules: list[dict[str, Any]] = []
    for name in names:
        reward = registry.rewards[name]
        options = copy.deepcopy(dict(reward.options_schema or {}))
        options.setdefault("type", "object")
        options.setdefault("additionalProperties", False)
        options.setdefault("description", f"Options of the {name} reward.")
        # No "description" on the rule itself: an error inside the options is reported at its own
        # path (grpo.rewards[0].options.pattern), not as a broken rule.
        rules.append({"$comment": f"the options of the {name} reward",
                      "if": {"properties": {"name": {"const": name}}, "required": ["name"]},
                      "then": {"properties": {"options": options}}})
    name_schema: dict[str, Any] = {"type": "string", "description": f"An installed reward function ({installed})."}
    if names:
        name_schema["enum"] = names
    else:
        name_schema["not"] = {}
    item: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": name_schema,
            "weight": {"type": "number", "default": 1.0,
                       "description": "Weight of this reward in the sum that the policy maximises."},
            "options": {"type": "object", "default": {},
                        "description": "The reward's own options (see modelforge plugins)."},
        },
    }
    if rules:
        item["allOf"] = rules
    return {
        "type": "array",
        "minItems": 1,
        "description": ("Reward functions, each {\"name\", \"weight\", \"options\"}; the policy maximises their "
                        f"weighted sum. Installed: {installed}."),
        "examples": [[{"name": names[0], "weight": 1.0, "options": {}}]] if names else [],
        "items": item,
    }


def inline_reward_lists(node: Any, list_schema: Mapping[str, Any]) -> Any:
    """``node`` with every ``{"$ref": REWARDS_REF, ...}`` replaced by ``list_schema`` (sibling
    keywords such as a ``description`` kept): error paths and form builders then see the list
    itself, not a reference."""
    if isinstance(node, list):
        return [inline_reward_lists(item, list_schema) for item in node]
    if not isinstance(node, Mapping):
        return node
    if node.get("$ref") == REWARDS_REF:
        merged = copy.deepcopy(dict(list_schema))
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        return merged
    return {key: inline_reward_lists(value, list_schema) for key, value in node.items()}


def options_with_defaults(reward: Reward, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The reward's options: its schema's defaults, then what the config gives."""
    props = (reward.options_schema or {}).get("properties", {})
    options = {key: copy.deepcopy(prop["default"]) for key, prop in props.items() if "default" in prop}
    options.update(given or {})
    return options


def completion_text(completion: Any) -> str:
    """The generated text of a completion as TRL hands it: a string, or (for conversational
    prompts) a list of messages whose contents are joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, Mapping))
    return str(completion)


@dataclass
class RewardFunction:
    """One configured reward as a TRL reward function: called with ``prompts``,
    ``completions`` and the dataset's other columns, returns one float per completion.

    Its ``__name__`` is the reward's name (the ``#2`` suffix when a list names it twice), so TRL
    logs ``rewards/<name>/mean`` and ``rewards/<name>/std``.
    """

    reward: Reward
    options: dict[str, Any]
    weight: float
    label: str
    fields: tuple[str, ...]
    #: The rows the dataset's :data:`ROW_COLUMN` indexes, or ``None``: fields are columns.
    rows: list[Mapping[str, Any]] | None = None

    @property
    def __name__(self) -> str:
        return self.label

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if self.rows is not None and ROW_COLUMN in columns:
            picked = [self.rows[int(i)] for i in columns[ROW_COLUMN]]
            values = {name: [row[name] for row in picked] for name in self.fields}
        else:
            values = {name: list(columns[name]) for name in self.fields}
        scores = self.reward.score(list(prompts), texts, fields=values, options=self.options)
        if len(scores) != len(texts):
            raise ConfigError(f"reward {self.reward.name!r} returned {len(scores)} scores for {len(texts)} completions")
        return [float(s) for s in scores]


def reward_functions(entries: Sequence[Mapping[str, Any]], rewards: Registry | Mapping[str, Reward], *,
                     where: str = "rewards", rows: Sequence[Mapping[str, Any]] | None = None) -> list[RewardFunction]:
    """The configured reward list as callables, options with their defaults.

    :param rewards: the installed rewards by name (``job.rewards``) or a registry.
    :param where: the list's JSON path, for messages (``grpo.rewards``).
    :param rows: the dataset's rows; when given, the reward functions read the row fields from
        them through the :data:`ROW_COLUMN` column of the dataset (any JSON value, no Arrow types).
    """
    installed: Mapping[str, Reward] = rewards if isinstance(rewards, Mapping) else rewards.rewards
    functions: list[RewardFunction] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        name = str(entry["name"])
        if name not in installed:
            names = ", ".join(sorted(installed)) or "none"
            raise ConfigError(f"{where}[{index}].name: no installed plugin provides the reward {name!r} "
                              f"(installed: {names})")
        reward = installed[name]
        options = options_with_defaults(reward, entry.get("options"))
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        fields = tuple(reward.fields(options))
        try:  # options the schema cannot judge (a regular expression that does not compile)
            reward.score([], [], fields={f: [] for f in fields}, options=options)
        except Exception as exc:
            raise ConfigError(f"{where}[{index}].options: the {name} reward refuses its options: "
                              f"{type(exc).__name__}: {exc}") from exc
        functions.append(RewardFunction(reward, options, float(entry.get("weight", 1.0)), label, fields,
                                        None if rows is None else list(rows)))
    return functions


def missing_fields(functions: Sequence[RewardFunction], rows: Sequence[Mapping[str, Any]], *,
                   where: str = "rewards", split: str = "train") -> list[str]:
    """A sentence for each reward whose row fields some rows lack (first row numbered from 1)."""
    problems = []
    for index, function in enumerate(functions):
        for name in function.fields:
            lacking = [number for number, row in enumerate(rows, 1) if name not in row]
            if lacking:
                problems.append(
                    f"{where}[{index}] ({function.reward.name}) reads the row field {name!r}, which "
                    f"{len(lacking)} of {len(rows)} {split} rows lack (the first: row {lacking[0]} of the {split} "
                    f"split); add it to every row, or change the reward's options")
    return problems


def describe(functions: Sequence[RewardFunction]) -> list[dict[str, Any]]:
    """The configured rewards as plain data for ``metrics.json``."""
    return [{"name": f.reward.name, "label": f.label, "weight": f.weight,
             "options": json.loads(json.dumps(f.options, default=str))} for f in functions]
