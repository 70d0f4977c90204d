"""Reading, validating and resolving a training config.

Precedence, lowest first: the schema's defaults < the ``compute_specs`` profile < the user's
file < ``--set key=value`` on the command line. Every resolved value remembers where it came
from. Relative paths in the file are resolved against the file's folder; relative paths given
with ``--set`` against the current directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, Problem, UsageError, ValidationFailed
from .jsonpos import loads_with_lines
from .schema import canonical_schema, effective_schema, validate_instance

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
        parts = tuple(path)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return None


def load_document(path: str | Path) -> Document:
    """Read a JSON or YAML config file; malformed input raises :class:`ConfigError` with
    the line and column."""
    file = Path(path)
    shown = str(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError("config file not found", file=shown) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a config file", file=shown) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror}", file=shown) from None
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
    return Document(data, shown, lines)


def _load_yaml(text: str, shown: str) -> Document:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    lines: dict[tuple[str | int, ...], int] = {}

    def record(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    raise ConfigError(f"duplicate key {key!r}", file=shown,
                                      line=key_node.start_mark.line + 1)
                seen.add(key)
                record(value_node, path + (key,))
                lines[path + (key,)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                record(item, path + (index,))

    try:
        node = yaml.compose(text, Loader=Loader)
        if node is None:
            raise ConfigError("the config file is empty", file=shown)
        record(node, ())
        data = yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(f"invalid YAML: {exc.problem}", file=shown,
                          line=mark.line + 1 if mark else None,
                          column=mark.column + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=shown) from None
    return Document(data, shown, lines)


# --- --set overrides ----------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(text: str, prop: Mapping[str, Any], key: str) -> Any:
    types = prop.get("type")
    candidates = types if isinstance(types, list) else [types] if types else []
    if not candidates and "oneOf" in prop:
        candidates = [alt.get("type") for alt in prop["oneOf"]]
    lowered = text.strip().lower()
    for kind in candidates:
        if kind == "null" and lowered in ("null", "none", "~"):
            return None
    for kind in candidates:
        if kind == "boolean":
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        elif kind == "integer":
            try:
                return int(text)
            except ValueError:
                try:
                    number = float(text)
                except ValueError:
                    continue
                if number.is_integer():
                    return int(number)
        elif kind == "number":
            try:
                return float(text)
            except ValueError:
                continue
        elif kind in ("array", "object"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                if kind == "array":
                    return [item.strip() for item in text.split(",") if item.strip()]
                continue
            return value
        elif kind == "string":
            return text
    if not candidates:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    # Leave it as text: validation then names the field and the expected type.
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


def resolve_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative paths absolute against ``base`` (the config file's folder)."""
    out = dict(values)
    for key in PATH_FIELDS:
        value = out.get(key)
        if isinstance(value, str) and value.strip():
            path = Path(value).expanduser()
            out[key] = str(path if path.is_absolute() else (base / path).resolve())
    model = out.get(MODEL_FIELD)
    if isinstance(model, str) and model.strip():
        candidate = Path(model).expanduser()
        local = candidate if candidate.is_absolute() else base / candidate
        if _looks_like_path(model) or local.exists():
            out[MODEL_FIELD] = str(local.resolve())
    return out


def schema_defaults(schema: Mapping[str, Any], selected: Iterable[str]) -> dict[str, Any]:
    """Top-level defaults, plus the option objects of the selected components."""
    props = schema["properties"]
    defaults = {k: v["default"] for k, v in props.items() if "default" in v and k not in _option_keys(props)}
    for name in selected:
        fragment = props.get(name)
        if isinstance(fragment, Mapping) and fragment.get("type") == "object":
            defaults[name] = {k: v["default"] for k, v in fragment.get("properties", {}).items()
                              if "default" in v}
    return defaults


def _option_keys(props: Mapping[str, Any]) -> set[str]:
    return {k for k, v in props.items() if isinstance(v, Mapping) and v.get("type") == "object"}


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


def resolve_config(document: Document | Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None,
                   plugins: Plugins | None = None, base_dir: Path | None = None,
                   check_environment: bool = True) -> ResolvedConfig:
    """Validate the user's config (file + overrides) and resolve it with defaults and profile.

    Raises :class:`ValidationFailed` with every problem found.
    """
    from .plugins import get_plugins
    from .profiles import profile_values

    plugins = plugins or get_plugins()
    schema = effective_schema(plugins.registry)
    if isinstance(document, Document):
        data, file = document.data, document.file
        base = base_dir or Path(document.file).resolve().parent
    else:
        data, file, document = dict(document), None, None
        base = base_dir or Path.cwd()
    if not isinstance(data, Mapping):
        raise ValidationFailed([Problem("(root)", "the config must be a JSON object", code="type",
                                        file=file, line=1)])
    user = _merge(resolve_paths(dict(data), base), resolve_paths(dict(overrides or {}), Path.cwd()))
    problems = document_problems(validate_instance(user, schema, plugins), document)
    if not problems:
        problems = _environment_problems(user, plugins) if check_environment else []
    if problems:
        raise ValidationFailed(problems)
    selected = [user.get(k, schema["properties"][k].get("default")) for k in ("task", "strategy", "provider")]
    defaults = schema_defaults(schema, [s for s in selected if s])
    profile_name = user["compute_specs"]
    profile = profile_values(profile_name, user)
    sources: dict[str, str] = {}
    _record(sources, defaults, "default")
    _record(sources, profile, f"profile:{profile_name}")
    _record(sources, dict(data), f"file:{file}" if file else "api")
    _record(sources, dict(overrides or {}), "--set")
    values = _merge(_merge(defaults, profile), user)
    problems = validate_instance(values, schema, plugins)
    if problems:  # a profile value that conflicts with the user's choices
        raise ValidationFailed(problems)
    return ResolvedConfig(values, sources, file)


def _environment_problems(values: Mapping[str, Any], plugins: Plugins) -> list[Problem]:
    problems = []
    schema_props = canonical_schema()["properties"]
    for field_name in ("task", "strategy", "provider"):
        name = values.get(field_name, schema_props[field_name].get("default"))
        component = plugins.registry.of_kind(field_name).get(name)
        if component is None:
            continue
        message = component.check_environment()
        if message:
            problems.append(Problem(field_name, message, code="environment"))
    return problems
