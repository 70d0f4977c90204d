"""The canonical schema, the effective schema (canonical + installed plugins), and the
translation of JSON Schema errors into messages a person can act on.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from .errors import Problem

if TYPE_CHECKING:
    from jsonschema import ValidationError

    from .api import Component
    from .plugins import Plugins, Registry

SCHEMA_FILE = "training-config.schema.json"
COMPONENT_FIELDS = {"task": "task", "strategy": "strategy", "provider": "provider"}


@lru_cache(maxsize=1)
def _canonical_text() -> str:
    return resources.files("modelforge_core").joinpath("data").joinpath(SCHEMA_FILE).read_text("utf-8")


def canonical_schema() -> dict[str, Any]:
    """A fresh copy of the canonical schema shipped with the core."""
    return json.loads(_canonical_text())  # type: ignore[no-any-return]


def schema_version() -> str:
    """The MODEL-REVISION-ADDITION version, read from the schema's ``$id``."""
    return str(canonical_schema()["$id"]).rstrip("/").split("/")[-2]


def _allowed(registry: Registry, kind: str) -> list[str]:
    return list(registry.of_kind(kind))


def compatible(registry: Registry, task: str, strategy: str, provider: str) -> list[str]:
    """Reasons why the triple cannot work together, from the declared capabilities."""
    reasons = []
    t, s, p = registry.tasks.get(task), registry.strategies.get(strategy), registry.providers.get(provider)
    if t and s:
        if s.tasks is not None and task not in s.tasks:
            reasons.append(f"strategy {strategy!r} does not support task {task!r}")
        elif s.data_shape not in t.data_shapes:
            reasons.append(
                f"strategy {strategy!r} trains on {s.data_shape} data, which task {task!r} does not have"
            )
    if t and p:
        if p.tasks is not None and task not in p.tasks:
            reasons.append(f"provider {provider!r} does not support task {task!r}")
        elif not set(t.heads) & p.heads:
            reasons.append(f"provider {provider!r} cannot load a head that task {task!r} needs")
    if s and p and p.strategies is not None and strategy not in p.strategies:
        reasons.append(f"provider {provider!r} does not support strategy {strategy!r}")
    return reasons


def compatibility_rules(registry: Registry) -> list[dict[str, Any]]:
    """``if``/``then`` rules derived from the declared capabilities of the registry."""
    rules: list[dict[str, Any]] = []
    tasks, strategies, providers = (sorted(registry.of_kind(k)) for k in ("task", "strategy", "provider"))
    for task in tasks:
        ok_strategies = [s for s in strategies if not compatible(registry, task, s, "")]
        ok_providers = [p for p in providers if not compatible(registry, task, "", p)]
        rules.append({
            "$comment": "compatibility",
            "description": f"The {task} task supports the strategies {', '.join(ok_strategies) or 'none'} "
                           f"and the providers {', '.join(ok_providers) or 'none'}.",
            "if": {"properties": {"task": {"const": task}}, "required": ["task"]},
            "then": {"properties": {"strategy": _one_of_names(ok_strategies),
                                    "provider": _one_of_names(ok_providers)}},
        })
    for provider in providers:
        ok_tasks = [t for t in tasks if not compatible(registry, t, "", provider)]
        ok_strategies = [s for s in strategies if not compatible(registry, "", s, provider)]
        rules.append({
            "$comment": "compatibility",
            "description": f"The {provider} provider supports the tasks {', '.join(ok_tasks) or 'none'} "
                           f"and runs the strategies {', '.join(ok_strategies) or 'none'}.",
            "if": {"properties": {"provider": {"const": provider}}, "required": ["provider"]},
            "then": {"properties": {"task": _one_of_names(ok_tasks), "strategy": _one_of_names(ok_strategies)}},
        })
    return rules


def _canonical_compatibility() -> list[dict[str, Any]]:
    return [r for r in canonical_schema()["allOf"] if r.get("$comment") == "compatibility"]


def canonical_allows(names: Mapping[str, str]) -> bool:
    """Whether the canonical schema's compatibility rules accept these component names together
    (``{"task": ..., "strategy": ...}``)."""
    from jsonschema import Draft202012Validator

    return bool(Draft202012Validator({"allOf": _canonical_compatibility()}).is_valid(dict(names)))


def _selected_by(rule: Mapping[str, Any]) -> tuple[str, str] | None:
    """``("task", "summarization")`` for a rule that starts "if task is summarization"."""
    props = rule.get("if", {}).get("properties", {})
    if len(props) == 1:
        field, condition = next(iter(props.items()))
        if "const" in condition:
            return str(field), str(condition["const"])
    return None


def rules_with_missing_builtins(derived: list[dict[str, Any]], registry: Registry) -> list[dict[str, Any]]:
    """Compatibility rules for a registry that lacks some components the canonical schema names.

    Such a name stays valid wherever the canonical schema accepts it: each rule derived from an
    installed component also admits the missing canonical names the canonical rules allow with
    it, and the canonical rules about a missing component are kept as they are. With every
    built-in installed, ``derived`` comes back unchanged.
    """
    props = canonical_schema()["properties"]
    missing = {field: [n for n in props[field]["enum"] if n not in registry.of_kind(kind)]
               for field, kind in COMPONENT_FIELDS.items()}
    if not any(missing.values()):
        return derived
    rules = []
    for original in derived:
        selected = _selected_by(original)
        if selected is None or not original.get("then", {}).get("properties"):
            rules.append(original)
            continue
        rule = copy.deepcopy(original)
        added = []
        for field, allowed in rule["then"]["properties"].items():
            extra = [n for n in missing.get(field, []) if canonical_allows({selected[0]: selected[1], field: n})]
            if extra:
                rule["then"]["properties"][field] = _one_of_names(list(allowed.get("enum", [])) + extra)
                added += [f"{field} {name}" for name in extra]
        if added:
            rule["description"] += f" Not installed here, but accepted by the canonical schema: {', '.join(added)}."
        rules.append(rule)
    for rule in _canonical_compatibility():
        selected = _selected_by(rule)
        if selected is not None and selected[1] in missing.get(selected[0], []):
            rules.append(rule)
    return rules


def early_stopping_rules(registry: Registry, schema: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One rule per compatible task and strategy: ``early_stopping_metric`` must be a metric
    that one of the two declares in ``training_metrics`` (null turns early stopping off)."""
    if "early_stopping_metric" not in schema["properties"]:
        return []
    rules: list[dict[str, Any]] = []
    for task_name, task in sorted(registry.tasks.items()):
        for strategy_name, strategy in sorted(registry.strategies.items()):
            if compatible(registry, task_name, strategy_name, ""):
                continue
            metrics = sorted({**task.training_metrics, **strategy.training_metrics})
            condition: dict[str, Any] = {"properties": {"task": {"const": task_name},
                                                        "strategy": {"const": strategy_name}},
                                         "required": ["task"]}
            if schema["properties"]["strategy"].get("default") != strategy_name:
                condition["required"].append("strategy")
            rules.append({
                "$comment": "early stopping",
                "description": f"early_stopping_metric must be a metric that the {task_name} task or the "
                               f"{strategy_name} strategy reports during training: "
                               f"{', '.join(metrics) or 'they report none'}.",
                "if": condition,
                "then": {"properties": {"early_stopping_metric": {"anyOf": [
                    {"type": "null"}, _one_of_names(metrics)]}}},
            })
    return rules


def _nothing() -> dict[str, Any]:
    """A schema no value matches. Not ``false``: python-jsonschema reports the error of a
    ``false`` property schema at the parent object, Ajv at the property; both report
    ``{"not": {}}`` at the property."""
    return {"not": {}}


def _one_of_names(names: list[str]) -> dict[str, Any]:
    # An empty "enum" is legal JSON Schema but Ajv refuses to compile it.
    return {"enum": names} if names else _nothing()


def _options_rule(schema: Mapping[str, Any], component: Component) -> dict[str, Any]:
    """The rule that allows a component's options object only when the component is selected.

    Written as "if the component is not selected, its options object must be absent" so that the
    error points at the options object (``dpo``), not at the selecting field. An absent
    selecting field means its default, so the default component's options need no selection.
    """
    field = component.kind
    selected: dict[str, Any] = {"properties": {field: {"const": component.name}}}
    if schema["properties"][field].get("default") != component.name:
        selected["required"] = [field]
    return {
        "description": f"Options under {component.name!r} apply only when {field} is {component.name!r}.",
        "if": {"not": selected},
        "then": {"properties": {component.name: _nothing()}},
    }


def effective_schema(registry: Registry) -> dict[str, Any]:
    """The canonical schema extended with what the installed plugins contribute.

    Component enums list the installed components; each component with options gets an
    object property under its name (allowed only when that component is selected); the
    compatibility rules are derived from the declared capabilities (a test checks that they
    agree with the canonical file for the built-ins); plugins' own rules are appended.

    Its ``$id`` differs from the canonical one (``.../effective.schema.json`` under the same
    version), so both can be loaded side by side in one validator.
    """
    schema = canonical_schema()
    schema["$id"] = str(schema["$id"]).rsplit("/", 1)[0] + "/effective.schema.json"
    props = schema["properties"]
    for field, kind in COMPONENT_FIELDS.items():
        canonical_order = props[field]["enum"]
        installed = _allowed(registry, kind)
        # Names the canonical schema accepts stay valid where their plugin is missing.
        props[field]["enum"] = list(canonical_order) + sorted(n for n in installed if n not in canonical_order)
        added = [registry.of_kind(kind)[n] for n in props[field]["enum"] if n not in canonical_order]
        if added:  # the description names what plugins add, as it names the built-ins
            props[field]["description"] += " Installed plugins add: " + "; ".join(
                f"{c.name} ({c.description.rstrip('.') or 'no description'})" for c in added) + "."
    rules = [r for r in schema["allOf"] if r.get("$comment") != "compatibility"]
    rules.extend(rules_with_missing_builtins(compatibility_rules(registry), registry))
    rules.extend(early_stopping_rules(registry, schema))
    from .rewards import inline_reward_lists, reward_list_schema

    rewards = schema.setdefault("$defs", {})["rewards"] = reward_list_schema(registry)
    for component in registry.components():
        if component.kind == "reward":
            continue  # its options are checked in each entry of a reward list ($defs/rewards)
        if component.options_schema is not None:
            fragment = inline_reward_lists(copy.deepcopy(dict(component.options_schema)), rewards)
            fragment.setdefault("type", "object")
            fragment.setdefault("additionalProperties", False)
            fragment.setdefault("description", f"Options of the {component.name} {component.kind}.")
            fragment.setdefault("default", {})
            props[component.name] = fragment
            if component.kind in COMPONENT_FIELDS.values():
                # A logger has no selecting field: its options object, when present, enables it.
                rules.append(_options_rule(schema, component))
        rules.extend(copy.deepcopy(list(component.schema_rules)))
    schema["allOf"] = rules
    _extend_data_sources(schema, registry)
    schema["description"] += " (Effective schema: the canonical schema plus the installed plugins.)"
    return schema


def _extend_data_sources(schema: dict[str, Any], registry: Registry) -> None:
    """The installed data sources and the tasks' row formats in a dataset object's enums; a
    source's options as an object under its name."""
    source = schema.get("$defs", {}).get("dataSource")
    if source is None:
        return
    props = source["properties"]
    names = list(props["source"]["enum"])
    props["source"]["enum"] = names + sorted(n for n in registry.sources if n not in names)
    formats = list(props["format"]["enum"])
    extra = {f.name for task in registry.tasks.values() for f in task.formats}
    props["format"]["enum"] = formats + sorted(extra - set(formats))
    for data_source in registry.sources.values():
        if data_source.options_schema is not None and data_source.name not in props:
            fragment = copy.deepcopy(dict(data_source.options_schema))
            fragment.setdefault("type", "object")
            fragment.setdefault("additionalProperties", False)
            fragment.setdefault("description", f"Options of the {data_source.name} data source.")
            props[data_source.name] = fragment


# --- errors -------------------------------------------------------------------------------

def _path_text(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


def _subschema(schema: Mapping[str, Any], parts: Iterable[Any]) -> Any:
    node: Any = schema
    for part in parts:
        node = node[part]
        if isinstance(node, str) and node.startswith("#/"):  # a local $ref: the schema it names
            node = _subschema(schema, node[2:].split("/"))
    return node


def _property_schema(schema: Mapping[str, Any], path: list[Any]) -> Mapping[str, Any] | None:
    node: Any = schema
    for part in path:
        if isinstance(part, int):
            node = node.get("items", {}) if isinstance(node, Mapping) else {}
            continue
        props = node.get("properties", {}) if isinstance(node, Mapping) else {}
        if part not in props and isinstance(node, Mapping) and str(node.get("$ref", "")).startswith("#/"):
            props = _subschema(schema, node["$ref"][2:].split("/")).get("properties", {})
        if part not in props:
            return None
        node = props[part]
    return node if isinstance(node, Mapping) else None


def _describe(value: Any) -> str:
    # default=str: a value from YAML or the Python API may not be JSON (a date, a set).
    from .errors import shorten

    return shorten(json.dumps(value, ensure_ascii=False, default=str))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _rule_of(error: ValidationError, schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``allOf`` rule (an ``if``/``then`` with a description) that ``error`` breaks, if any."""
    parts = list(error.absolute_schema_path)
    for keyword in ("then", "else"):
        if keyword in parts:
            index = len(parts) - 1 - parts[::-1].index(keyword)
            rule = _subschema(schema, parts[:index])
            if isinstance(rule, Mapping) and "description" in rule:
                return rule
    return None


def _suggest(word: Any, choices: Iterable[Any]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return matches[0] if matches else None


def problems_from_errors(errors: Iterable[ValidationError], schema: Mapping[str, Any],
                         instance: Mapping[str, Any], plugins: Plugins | None = None) -> list[Problem]:
    """Turn jsonschema errors into :class:`Problem` objects, one per distinct finding."""
    problems: dict[tuple[str, str], Problem] = {}
    #: Paths whose value is not a known choice at all: rules about that value are noise there.
    unknown_choice: set[str] = set()

    def add(path: list[Any], message: str, code: str, hint: str | None = None) -> None:
        text = _path_text(path)
        problems.setdefault((text, message), Problem(text, message, hint=hint, code=code,
                                                     extra={"json_path": list(path)}))

    for error in errors:
        path = list(error.absolute_path)
        keyword = error.validator
        rule = _rule_of(error, schema)
        prop = _property_schema(schema, path)
        hint = prop.get("description") if prop else None
        if keyword == "required":
            missing = [name for name in error.validator_value if name not in (error.instance or {})]
            for name in missing:
                sub = _property_schema(schema, [*path, name])
                if rule is not None:
                    add([*path, name], str(rule["description"]), "conflict")
                else:
                    add([*path, name], "required field is missing", "required",
                        sub.get("description") if sub else None)
            continue
        if keyword == "additionalProperties":
            node = _subschema(schema, list(error.absolute_schema_path)[:-1]) or {}
            if "properties" not in node and str(node.get("$ref", "")).startswith("#/"):  # $ref is transparent
                node = _subschema(schema, node["$ref"][2:].split("/"))
            known = list(node.get("properties", {}))
            for name in error.instance:
                if name in known:
                    continue
                suggestion = _suggest(name, known)
                hint_text = f"did you mean {suggestion!r}?" if suggestion else None
                if not path and plugins is not None:
                    hint_text = _unknown_component_options(name, plugins) or hint_text
                add([*path, name], f"unknown field {name!r}", "unknown_field", hint_text)
            continue
        if rule is not None:
            got = error.instance
            scalar = got is None or isinstance(got, (str, int, float, bool))
            add(path, f"{rule['description']} (got {_describe(got)})" if scalar else str(rule["description"]),
                "conflict")
            continue
        value = error.instance
        if (keyword in ("enum", "not") and plugins is not None and path and path[-1] == "name"
                and isinstance(value, str) and value not in plugins.registry.rewards
                and plugins.is_builtin("reward", value)):
            add(path, plugins.why_missing("reward", value), "not_installed", hint)  # a built-in reward
            continue
        if keyword == "enum":
            unknown_choice.add(_path_text(path))
            field = path[-1] if path else None
            if plugins is not None and len(path) == 1 and field in COMPONENT_FIELDS and isinstance(value, str):
                kind = COMPONENT_FIELDS[field]
                canonical = canonical_schema()["properties"][field]["enum"]
                if value in canonical or value not in error.validator_value:
                    reason = plugins.why_missing(kind, value)
                    suggestion = _suggest(value, error.validator_value)
                    add(path, reason, "not_installed" if value in canonical else "enum",
                        f"did you mean {suggestion!r}?" if suggestion else hint)
                    continue
            choices = ", ".join(_describe(c) for c in error.validator_value)
            suggestion = _suggest(str(value), [str(c) for c in error.validator_value])
            add(path, f"{_describe(value)} is not one of {choices}", "enum",
                f"did you mean {suggestion!r}?" if suggestion else hint)
        elif keyword == "type":
            expected = error.validator_value
            expected_text = " or ".join(expected) if isinstance(expected, list) else expected
            got = "null" if value is None else f"{_json_type(value)} {_describe(value)}"
            add(path, f"expected {expected_text}, got {got}", "type", hint)
        elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            words = {"minimum": "below the minimum of", "maximum": "above the maximum of",
                     "exclusiveMinimum": "must be greater than", "exclusiveMaximum": "must be less than"}
            if keyword.startswith("exclusive"):
                message = f"{_describe(value)} is out of range: it {words[keyword]} {error.validator_value}"
            else:
                message = f"{_describe(value)} is {words[keyword]} {error.validator_value}"
            add(path, message, "out_of_range", hint)
        elif keyword in ("minLength", "pattern") and isinstance(value, str) and not value.strip():
            add(path, "must not be empty", "empty", hint)
        elif keyword == "not":
            add(path, f"{_describe(value)} is not allowed", "out_of_range", hint)
        elif keyword in ("oneOf", "anyOf"):
            add(path, f"{_describe(value)} is not a valid value", "type", hint)
        elif keyword == "const":
            add(path, f"must be {_describe(error.validator_value)}, got {_describe(value)}", "const", hint)
        else:
            add(path, error.message, keyword or "invalid", hint)
    wrong_type = {p.path for p in problems.values() if p.code == "type"}
    found = [p for p in problems.values()
             if not (p.code == "conflict" and p.path in unknown_choice)
             and not (p.code == "enum" and p.path in wrong_type)]  # "not a string" says it all
    return sorted(found, key=lambda p: (p.path, p.message))


def _unknown_component_options(name: str, plugins: Plugins) -> str | None:
    for kind in ("strategy", "task", "provider"):
        if name in canonical_schema()["properties"][kind]["enum"] and name not in plugins.registry.of_kind(kind):
            return plugins.why_missing(kind, name)
    if plugins.is_builtin("logger", name) and name not in plugins.registry.loggers:
        return plugins.why_missing("logger", name)
    return None


def validate_instance(instance: Any, schema: Mapping[str, Any],
                      plugins: Plugins | None = None) -> list[Problem]:
    """Every problem with ``instance`` under ``schema`` (Draft 2020-12)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    if not isinstance(instance, Mapping):
        return [Problem("(root)", f"the config must be a JSON object, got {_json_type(instance)}",
                        code="type")]
    return problems_from_errors(validator.iter_errors(instance), schema, instance, plugins)
