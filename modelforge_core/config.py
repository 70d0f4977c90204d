"""Reading, validating and resolving a training config.

Precedence, lowest first: the schema's defaults < the ``compute_specs`` profile < the user's
file < ``--set key=value`` on the command line. Every resolved value remembers where it came
from. Relative paths in the file are resolved against the file's folder; relative paths given
with ``--set`` against the current directory.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, Problem, UsageError, ValidationFailed, shorten
from .jsonpos import loads_with_lines
from .schema import effective_schema, validate_instance

if TYPE_CHECKING:
    from .plugins import Plugins

#: Fields holding filesystem paths, resolved relative to the config file.
PATH_FIELDS = ("dataset", "output_dir")
#: ``model_name`` is a path when it looks like one (or exists), else a hub ID.
MODEL_FIELD = "model_name"


@dataclass
class Document:
    """A parsed config file: its data and the line of each value."""

    data: Any
    file: str
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)

    def line_of(self, path: Iterable[str | int]) -> int | None:
        """The line of the value at ``path``, or of the nearest enclosing value that exists
        (a missing field: the object that lacks it)."""
        parts = tuple(path)
        while parts not in self.lines and parts:
            parts = parts[:-1]
        return self.lines.get(parts)


def load_document(path: str | Path) -> Document:
    """Read a JSON or YAML config file; malformed input raises :class:`ConfigError` with
    the line and column."""
    file = Path(path)
    shown = str(path)
    from .safeio import MAX_CONFIG_BYTES, describe_error, read_file

    shown = shorten(shown, 300)
    try:
        raw = read_file(file, limit=MAX_CONFIG_BYTES).data
    except FileNotFoundError:
        raise ConfigError("config file not found", file=shown) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a config file", file=shown) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the config file: {describe_error(exc)}", file=shown) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=shown) from None
    if not text.strip():
        raise ConfigError("the config file is empty", file=shown)
    if file.suffix.lower() in (".yaml", ".yml"):
        return _load_yaml(text, shown)
    try:
        data, lines = loads_with_lines(text)
    except json.JSONDecodeError as exc:
        hint = ""
        if file.suffix.lower() not in (".json", "") or text.lstrip()[:1] not in "{[":
            hint = " (YAML files need a .yaml or .yml extension)"
        raise ConfigError(f"invalid JSON: {exc.msg}{hint}", file=shown, line=exc.lineno,
                          column=exc.colno) from None
    except RecursionError:
        raise ConfigError("invalid JSON: nested too deeply", file=shown) from None
    return Document(data, shown, lines)


#: YAML 1.2 core-schema scalars (PyYAML implements YAML 1.1, where ``2e-4`` is a string, ``no``
#: is false, ``012`` is octal and ``2024-01-01`` is a date). With these, a YAML file means
#: what the same JSON file means.
_YAML_BOOL = r"^(?:true|True|TRUE|false|False|FALSE)$"
_YAML_INT = r"^[-+]?[0-9]+$"
_YAML_FLOAT = r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"
_YAML_DROPPED_TAGS = {"bool", "int", "float", "timestamp"}
#: Bounds on a YAML document with its aliases expanded (a config holds a few dozen values).
MAX_YAML_NODES = 10_000
MAX_YAML_CHARS = 1 << 20


@lru_cache(maxsize=1)
def _yaml_loader() -> type[Any]:
    import math
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag.rsplit(":", 1)[-1] not in _YAML_DROPPED_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(_YAML_BOOL), list("tTfF"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(_YAML_INT), list("-+0123456789"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_YAML_FLOAT), list("-+0123456789."))

    def construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
        from .jsonpos import MAX_NUMBER_CHARS

        text = str(loader.construct_scalar(node))
        if len(text) > MAX_NUMBER_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"a number of {len(text):,} characters is too long (at most {MAX_NUMBER_CHARS})",
                node.start_mark)
        try:
            return int(text)
        except ValueError:
            raise yaml.constructor.ConstructorError(None, None, f"{shorten(repr(text))} is not an integer",
                                                    node.start_mark) from None

    def construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
        text = str(loader.construct_scalar(node))
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise yaml.constructor.ConstructorError(
                None, None, f"{shorten(repr(text))} is not a finite number (JSON has no NaN or infinity)",
                node.start_mark)
        return value

    Loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    Loader.add_constructor("tag:yaml.org,2002:float", construct_float)
    return Loader


def _load_yaml(text: str, shown: str) -> Document:
    import yaml

    from .jsonpos import MAX_DEPTH, lone_surrogate

    lines: dict[tuple[str | int, ...], int] = {}
    # An alias is the node it names, visited again: without a bound, a 1 KB file of nested
    # aliases ("billion laughs") expands to gigabytes. Count every visit and the text it holds.
    visited = [0, 0]

    def record(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        visited[0] += 1
        if isinstance(node, yaml.ScalarNode):
            visited[1] += len(node.value)
        if visited[0] > MAX_YAML_NODES or visited[1] > MAX_YAML_CHARS:
            raise ConfigError(f"aliases expand the document beyond {MAX_YAML_NODES:,} values or "
                              f"{MAX_YAML_CHARS:,} characters: write the values out instead of repeating "
                              "anchors (*alias)", file=shown, line=node.start_mark.line + 1)
        if len(path) > MAX_DEPTH:
            raise ConfigError(f"invalid YAML: nested too deeply (more than {MAX_DEPTH} levels)", file=shown,
                              line=node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode) and lone_surrogate(node.value) is not None:
            raise ConfigError("invalid YAML: a lone surrogate escape (\\ud800-\\udfff) is not a Unicode "
                              "character", file=shown, line=node.start_mark.line + 1)
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                    raise ConfigError(f"keys must be strings, got {shorten(repr(key_node.value))} (quote it)",
                                      file=shown, line=key_node.start_mark.line + 1,
                                      column=key_node.start_mark.column + 1)
                key = str(key_node.value)
                if key in seen:
                    raise ConfigError(f"duplicate key {shorten(repr(key))}", file=shown,
                                      line=key_node.start_mark.line + 1, column=key_node.start_mark.column + 1)
                seen.add(key)
                child = (*path, key)
                record(value_node, child)
                lines[child] = key_node.start_mark.line + 1  # errors about a key: the key's line
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                record(item, (*path, index))

    try:
        loader = _yaml_loader()(text)  # the reader rejects control characters right away
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}".replace("\n", " "), file=shown) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("the config file is empty", file=shown)
        record(node, ())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(f"invalid YAML: {exc.problem or exc.context}", file=shown,
                          line=mark.line + 1 if mark else None,
                          column=mark.column + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=shown) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=shown) from None
    finally:
        loader.dispose()
    return Document(data, shown, lines)


# --- --set overrides ----------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


_NOT_CONVERTED = object()


def _alternatives(prop: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The subschemas a value may match: ``oneOf``/``anyOf`` branches, or the schema itself."""
    branches = prop.get("oneOf") or prop.get("anyOf")
    if branches and "type" not in prop:
        return [b for b in branches if isinstance(b, Mapping)]
    return [prop]


def _types(alternative: Mapping[str, Any]) -> list[str]:
    types = alternative.get("type")
    return list(types) if isinstance(types, list) else [types] if isinstance(types, str) else []


def _convert(text: str, kind: str) -> Any:
    import math

    lowered = text.strip().lower()
    if kind == "boolean":
        return True if lowered in _TRUE else False if lowered in _FALSE else _NOT_CONVERTED
    if kind in ("integer", "number"):
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return _NOT_CONVERTED
        if not math.isfinite(number):  # not JSON, and NaN passes every range check
            return _NOT_CONVERTED
        if kind == "integer":
            return int(number) if number.is_integer() else _NOT_CONVERTED
        return number
    if kind in ("array", "object"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = _NOT_CONVERTED
        if kind == "array":
            if isinstance(value, list):
                return value
            return [item.strip() for item in text.split(",") if item.strip()]
        return value if isinstance(value, dict) else _NOT_CONVERTED
    if kind == "string":
        return text
    return _NOT_CONVERTED


def _coerce(text: str, prop: Mapping[str, Any], key: str) -> Any:
    """``text`` converted to the first type the schema ``prop`` allows for it (``key`` is
    the dotted field name, for messages). Text that fits no type stays text: validation then
    names the field and the expected type."""
    candidates = [(alt, kind) for alt in _alternatives(prop) for kind in _types(alt)]
    if not candidates:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    if text.strip().lower() in ("null", "none", "~") and any(kind == "null" for _, kind in candidates):
        return None
    for alternative, kind in candidates:
        value = _convert(text, kind)
        if value is _NOT_CONVERTED:
            continue
        if "const" in alternative and value != alternative["const"]:
            continue
        if "enum" in alternative and value not in alternative["enum"]:
            continue
        return value
    return text


def parse_overrides(items: Iterable[str], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Parse ``key=value`` items (``dpo.beta=0.2`` for nested options) into a nested dict,
    converting each value to the type the schema gives the field."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, for example --set lora_r=32")
        parts = key.split(".")
        node: Mapping[str, Any] = schema
        prop: Mapping[str, Any] | None = None
        for part in parts:
            prop = node.get("properties", {}).get(part) if isinstance(node, Mapping) else None
            if prop is None:
                break
            node = prop
        value = _coerce(text, prop, key) if prop is not None else _coerce(text, {}, key)
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise UsageError(f"--set {item!r}: {part!r} is set twice with different shapes")
        target[parts[-1]] = value
    return result


# --- resolution ---------------------------------------------------------------------------

@dataclass
class ResolvedConfig(Mapping[str, Any]):
    """The resolved config: every field with a value, and where each value came from.

    Sources are ``"default"``, ``"profile:<name>"``, ``"file:<path>"`` and ``"--set"``.
    Nested options (``dpo.beta``) have dotted keys in :attr:`sources`.
    """

    data: dict[str, Any]
    sources: dict[str, str]
    file: str | None = None
    #: The folder relative paths were resolved against (``owner/name`` datasets are decided there).
    base_dir: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def options(self, component: str) -> dict[str, Any]:
        """The resolved options object of a component (``{}`` when it has none)."""
        value = self.data.get(component)
        return dict(value) if isinstance(value, Mapping) else {}

    def to_json(self) -> dict[str, Any]:
        return {"config": self.data, "sources": self.sources}


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _record(sources: dict[str, str], values: Mapping[str, Any], source: str, prefix: str = "") -> None:
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            _record(sources, value, source, dotted + ".")
        else:
            sources[dotted] = source


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or "\\" in value


#: A path value longer than this is refused (Linux's PATH_MAX).
MAX_PATH_CHARS = 4096


def _unusable_path(value: str) -> str | None:
    """Why no filesystem call can take ``value`` (checked before any is made), or ``None``."""
    if "\0" in value:
        return "the path contains a NUL byte"
    if len(value) > MAX_PATH_CHARS:
        return f"the path is {len(value):,} characters long, more than the {MAX_PATH_CHARS} a path may have"
    return None


def path_problems(values: Mapping[str, Any]) -> list[Problem]:
    """Path fields (and ``model_name``) that no filesystem call can take: a NUL byte, too long."""
    problems = []
    for key in (*PATH_FIELDS, MODEL_FIELD):
        value = values.get(key)
        reason = _unusable_path(value) if isinstance(value, str) else None
        if reason:
            problems.append(Problem(key, reason, code="bad_path", extra={"json_path": [key]}))
    return problems


def resolve_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative paths absolute against ``base`` (the config file's folder); a value no
    filesystem call can take is left as it is (:func:`path_problems` reports it)."""
    out = dict(values)
    for key in PATH_FIELDS:
        value = out.get(key)
        if key == "dataset" and key in out:  # also hub datasets, source objects and mixtures
            from .sources import resolve_locations

            out[key] = resolve_locations(value, base)
        elif isinstance(value, str) and value.strip() and not _unusable_path(value):
            path = Path(value).expanduser()
            try:
                out[key] = str(path if path.is_absolute() else (base / path).resolve())
            except (OSError, RuntimeError):  # a symlink loop, a component too long: reported later
                continue
    model = out.get(MODEL_FIELD)
    if isinstance(model, str) and model.strip() and not _unusable_path(model):
        candidate = Path(model).expanduser()
        local = candidate if candidate.is_absolute() else base / candidate
        try:
            if _looks_like_path(model) or local.exists():
                out[MODEL_FIELD] = str(local.resolve())
        except (OSError, RuntimeError):
            pass
    return out


def schema_defaults(schema: Mapping[str, Any], selected: Iterable[str]) -> dict[str, Any]:
    """Top-level defaults, plus the option objects of the selected components."""
    props = schema["properties"]
    option_keys = _option_keys(props)
    defaults = {k: v["default"] for k, v in props.items() if "default" in v and k not in option_keys}
    for name in selected:
        fragment = props.get(name)
        if isinstance(fragment, Mapping) and fragment.get("type") == "object":
            defaults[name] = {k: v["default"] for k, v in fragment.get("properties", {}).items()
                              if "default" in v}
    return defaults


def _option_keys(props: Mapping[str, Any]) -> set[str]:
    return {k for k, v in props.items() if isinstance(v, Mapping) and v.get("type") == "object"}


def _normalized(value: Any, prop: Mapping[str, Any]) -> Any:
    """``value`` with integral floats made ints where ``prop`` wants an integer.

    JSON Schema counts 16.0 as an integer, but peft and torch do not take ``r=16.0``.
    """
    if isinstance(value, float) and value.is_integer():
        types = _types(prop)
        if "integer" in types and "number" not in types:
            return int(value)
    if isinstance(value, dict):
        props = prop.get("properties", {})
        return {k: _normalized(v, props.get(k, {})) for k, v in value.items()}
    return value


def _in_overrides(overrides: Mapping[str, Any], json_path: Iterable[Any]) -> bool:
    node: Any = overrides
    parts = list(json_path)
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return bool(parts)


def document_problems(problems: list[Problem], document: Document | None) -> list[Problem]:
    """Attach the file and line of each problem's path."""
    if document is None:
        return problems
    out = []
    for problem in problems:
        json_path = problem.extra.get("json_path", [])
        line = document.line_of(json_path)
        out.append(Problem(problem.path, problem.message, problem.hint, problem.code,
                           document.file, line, problem.extra))
    return sorted(out, key=lambda p: (p.line or 0, p.path))


def root_problems(values: Mapping[str, Any], root: Path) -> list[Problem]:
    """Paths that escape ``root`` (a frontend's ``--data-root``), symlinks resolved."""
    problems = []
    allowed = root.resolve()
    from .sources import locations

    checked = [(key, values.get(key)) for key in (*PATH_FIELDS, MODEL_FIELD) if key != "dataset"]
    checked += [("dataset", value) for value in locations(values.get("dataset"))]
    for key, value in checked:
        if not isinstance(value, str) or not value.strip():
            continue
        if key == MODEL_FIELD and not Path(value).is_absolute():
            continue  # a hub ID, not a path
        if _unusable_path(value):
            continue  # path_problems() says why
        if key == "dataset" and not Path(value).is_absolute():  # hf://..., or owner/name: a hub dataset
            if "://" in value or not (allowed / value).exists():
                problems.append(Problem(key, f"{value} is not a file or folder under the data root {allowed}",
                                        code="outside_root", hint="only files under --data-root can be used"))
            continue
        try:
            resolved = Path(value).resolve()
        except (OSError, RuntimeError):
            problems.append(Problem(key, f"{value} cannot be resolved (a symlink loop, a name too long?)",
                                    code="bad_path"))
            continue
        if resolved != allowed and allowed not in resolved.parents:
            problems.append(Problem(key, f"{value} is outside the allowed data root {allowed}", code="outside_root",
                                    hint="only files under --data-root can be used"))
    return problems


def resolve_config(document: Document | Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None,
                   plugins: Plugins | None = None, base_dir: Path | None = None,
                   data_root: Path | None = None) -> ResolvedConfig:
    """Validate the user's config (file + overrides) and resolve it with defaults and profile.

    Raises :class:`ValidationFailed` with every problem found. The verdict is the schema's alone:
    whether this environment can run the config is :mod:`modelforge_core.readiness`'s question.
    """
    from .plugins import get_plugins
    from .profiles import profile_values

    plugins = plugins or get_plugins()
    schema = effective_schema(plugins.registry)
    source_document: Document | None
    if isinstance(document, Document):
        data, file, source_document = document.data, document.file, document
        base = base_dir or Path(document.file).resolve().parent
    else:
        data = dict(document) if isinstance(document, Mapping) else document
        file, source_document = None, None
        base = base_dir or Path.cwd()
    if not isinstance(data, Mapping):
        raise ValidationFailed([Problem("(root)", "the config must be a JSON object", code="type",
                                        file=file, line=1)])
    overrides = overrides or {}
    user = _merge(resolve_paths(dict(data), base), resolve_paths(dict(overrides), Path.cwd()))
    problems = [
        # A value given with --set has no line in the file: say where it came from instead.
        Problem(p.path, p.message, p.hint, p.code, "--set", None, p.extra)
        if _in_overrides(overrides, p.extra.get("json_path", [])) else p
        for p in document_problems(validate_instance(user, schema, plugins) + path_problems(user),
                                   source_document)
    ]
    if data_root is not None:
        problems += root_problems(user, data_root)
    if problems:
        raise ValidationFailed(problems)
    selected = [user.get(k, schema["properties"][k].get("default")) for k in ("task", "strategy", "provider")]
    selected += [name for name in plugins.registry.loggers if isinstance(user.get(name), Mapping)]  # enabled loggers
    defaults = schema_defaults(schema, [s for s in selected if s])
    profile_name = user["compute_specs"]
    strategy = plugins.registry.strategies.get(str(selected[1]))
    probe = {**dict(zip(("task", "strategy", "provider"), selected[:3], strict=True)), **user}
    needs_4bit = strategy.needs_4bit if strategy is not None else _schema_forces_4bit(schema, probe)
    profile = profile_values(profile_name, user, needs_4bit=bool(needs_4bit))
    sources: dict[str, str] = {}
    _record(sources, defaults, "default")
    _record(sources, profile, f"profile:{profile_name}")
    _record(sources, dict(data), f"file:{file}" if file else "api")
    _record(sources, dict(overrides), "--set")
    merged = _merge(_merge(defaults, profile), user)
    problems = validate_instance(merged, schema, plugins)
    if problems:  # a profile value that conflicts with the user's choices
        raise ValidationFailed(problems)
    props = schema["properties"]
    # Schema order, so `--resolved` reads like the reference; plugin options last.
    values = {k: _normalized(merged[k], props.get(k, {})) for k in props if k in merged}
    values.update((k, v) for k, v in merged.items() if k not in values)
    return ResolvedConfig(values, sources, file, str(base))



def _schema_forces_4bit(schema: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """Whether a rule of ``schema`` requires ``use_4bit: true`` for ``config``: what the profile
    must respect when the strategy's plugin is not installed to say it (:attr:`Strategy.needs_4bit`)."""
    from jsonschema import Draft202012Validator

    for rule in schema.get("allOf", ()):
        forced = rule.get("then", {}).get("properties", {}).get("use_4bit", {})
        if forced.get("const") is True and "if" in rule and Draft202012Validator(rule["if"]).is_valid(config):
            return True
    return False
