"""The canonical schema, the effective schema (canonical + installed plugins), and the
translation of JSON Schema errors into messages a person can act on."""

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


def compatibility_rules(registry: Registry) -> list[dict[str, Any]]:
    """``if``/``then`` rules derived from the declared capabilities of the registry."""
    from .plugins import compatible

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


def early_stopping_rules(registry: Registry, schema: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One rule per compatible task and strategy: ``early_stopping_metric`` must be a metric
    that one of the two declares in ``training_metrics`` (null turns early stopping off)."""
    from .plugins import compatible

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
        props[field]["enum"] = [n for n in canonical_order if n in installed] + sorted(
            n for n in installed if n not in canonical_order
        )
    rules = [r for r in schema["allOf"] if r.get("$comment") != "compatibility"]
    rules.extend(compatibility_rules(registry))
    rules.extend(early_stopping_rules(registry, schema))
    for component in registry.components():
        if component.options_schema is not None:
            fragment = copy.deepcopy(dict(component.options_schema))
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
    schema["description"] += " (Effective schema: the canonical schema plus the installed plugins.)"
    return schema


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
    return node


def _property_schema(schema: Mapping[str, Any], path: list[Any]) -> Mapping[str, Any] | None:
    node: Any = schema
    for part in path:
        if isinstance(part, int):
            node = node.get("items", {}) if isinstance(node, Mapping) else {}
            continue
        props = node.get("properties", {}) if isinstance(node, Mapping) else {}
        if part not in props:
            return None
        node = props[part]
    return node if isinstance(node, Mapping) else None


def _describe(value: Any) -> str:
    # default=str: a value from YAML or the Python API may not be JSON (a date, a set).
    return json.dumps(value, ensure_ascii=False, default=str)


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
            known = list((_subschema(schema, list(error.absolute_schema_path)[:-1]) or {})
                         .get("properties", {}))
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
    from .plugins import BUILTIN_DISTRIBUTIONS

    if ("logger", name) in BUILTIN_DISTRIBUTIONS and name not in plugins.registry.loggers:
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
