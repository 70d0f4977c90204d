"""Finding plugins, calling their hooks, and the registry of components they register.

The manager is built by :func:`load_plugins`, never at import time. Plugins are found through
the ``modelforge`` entry-point group; ``MODELFORGE_LOAD_PLUGINS`` (a comma-separated allowlist
of entry-point or distribution names) and ``MODELFORGE_DISABLE_PLUGINS`` (a blocklist) choose
which of them load.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from . import hookspecs
from .api import Component, Logger, Provider, Reward, RunInfo, Strategy, Task
from .errors import PluginError
from .schema import (
    canonical_schema,
    compatible,  # noqa: F401 - re-exported: it moved to schema.py (no import circle)
)

if TYPE_CHECKING:
    import click

    from .api import DataSource

ENTRY_POINT_GROUP = "modelforge"
LOAD_ENV = "MODELFORGE_LOAD_PLUGINS"
DISABLE_ENV = "MODELFORGE_DISABLE_PLUGINS"
#: The plugin name of the core's built-in data sources.
BUILTIN_SOURCES = "modelforge-sources"

#: The distribution that ships each built-in component, for "not installed" messages.
BUILTIN_DISTRIBUTIONS: Mapping[tuple[str, str], str] = {
    ("provider", "huggingface"): "modelforge-provider-huggingface",
    ("provider", "unsloth"): "modelforge-provider-unsloth",
    ("strategy", "sft"): "modelforge-strategy-sft",
    ("strategy", "qlora"): "modelforge-strategy-qlora",
    ("strategy", "dpo"): "modelforge-strategy-dpo",
    ("strategy", "rlhf"): "modelforge-strategy-rlhf",
    ("task", "text-generation"): "modelforge-task-text-generation",
    ("task", "summarization"): "modelforge-task-summarization",
    ("task", "extractive-question-answering"): "modelforge-task-extractive-qa",
    ("strategy", "grpo"): "modelforge-strategy-grpo",
    ("reward", "exact_match"): "modelforge-rewards-basic",
    ("reward", "numeric_match"): "modelforge-rewards-basic",
    ("reward", "regex"): "modelforge-rewards-basic",
    ("reward", "length_penalty"): "modelforge-rewards-basic",
    ("logger", "mlflow"): "modelforge-logger-mlflow",
    ("logger", "wandb"): "modelforge-logger-wandb",
}


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its entry-point name, distribution and version."""

    name: str
    distribution: str
    version: str

    def label(self) -> str:
        return f"plugin {self.name!r} (distribution {self.distribution} {self.version})"


@dataclass(frozen=True)
class Skipped:
    """An installed plugin that was not loaded, and why."""

    name: str
    distribution: str
    reason: str


C = TypeVar("C", bound=Component)


@dataclass
class Registry:
    """The components registered by the loaded plugins, by kind and name."""

    providers: dict[str, Provider] = field(default_factory=dict)
    strategies: dict[str, Strategy] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    #: Data sources (``register_data_sources``): where dataset rows come from.
    sources: dict[str, DataSource] = field(default_factory=dict)
    rewards: dict[str, Reward] = field(default_factory=dict)
    loggers: dict[str, Logger] = field(default_factory=dict)
    owners: dict[tuple[str, str], PluginInfo] = field(default_factory=dict)

    def of_kind(self, kind: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {"provider": self.providers, "strategy": self.strategies,
                                             "task": self.tasks, "source": self.sources, "reward": self.rewards,
                                             "logger": self.loggers}
        return tables[kind]

    def components(self) -> Iterable[Component]:
        yield from self.tasks.values()
        yield from self.strategies.values()
        yield from self.providers.values()
        yield from self.rewards.values()
        yield from self.loggers.values()

    def add(self, component: Component, owner: PluginInfo, expected: type[C]) -> None:
        if not isinstance(component, expected):
            advice = (f"; pass an instance: register({component.__name__}())"
                      if isinstance(component, type) and issubclass(component, expected) else "")
            raise PluginError(
                f"{owner.label()} registered {component!r} as a {expected.kind}, "
                f"but it is not a modelforge_core.api.{expected.__name__} instance{advice}"
            )
        if not component.name:
            raise PluginError(f"{owner.label()} registered a {expected.kind} without a name")
        table = self.of_kind(expected.kind)
        key = (expected.kind, component.name)
        if component.name in table:
            first = self.owners[key]
            raise PluginError(
                f"{expected.kind} {component.name!r} is registered twice: by {first.label()} "
                f"and by {owner.label()}; uninstall or disable one of them "
                f"(for example {DISABLE_ENV}={owner.name})"
            )
        table[component.name] = component
        self.owners[key] = owner

    def owner_of(self, component: Component) -> PluginInfo:
        return self.owners[(component.kind, component.name)]

    def check_option_names(self, config_fields: Iterable[str]) -> None:
        """Refuse options objects whose name is already a config field or another
        component's options object: the effective schema has one property per name."""
        taken = {name: "the config field of that name" for name in config_fields}
        for component in self.components():
            if component.options_schema is None or component.kind == "reward":
                continue  # a reward's options live in its entry of a reward list
            owner = self.owner_of(component)
            if component.name in taken:
                raise PluginError(
                    f"{owner.label()} registered the {component.kind} {component.name!r} with options, "
                    f"but {component.name!r} is already {taken[component.name]}; rename the component"
                )
            taken[component.name] = f"the options of the {component.kind} from {owner.label()}"


class Hooks:
    """Typed calls into the plugins' hooks; errors name the plugin that raised."""

    def __init__(self, pm: pluggy.PluginManager, infos: Mapping[str, PluginInfo]) -> None:
        self._pm = pm
        self._infos = infos

    def _info(self, plugin: object) -> PluginInfo:
        name = self._pm.get_name(plugin) or repr(plugin)
        if name == BUILTIN_SOURCES:
            from . import __version__

            return PluginInfo(name, "modelforge-core", __version__)
        return self._infos.get(name, PluginInfo(name, "(registered directly)", ""))

    def _call(self, hook_name: str, **kwargs: Any) -> None:
        caller = getattr(self._pm.hook, hook_name)
        # Call each implementation ourselves, in pluggy's order, so a failure names its plugin.
        for impl in reversed(caller.get_hookimpls()):
            args = {name: kwargs[name] for name in impl.argnames}
            try:
                impl.function(**args)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"{self._info(impl.plugin).label()} failed in hook {hook_name}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

    def _register_into(self, hook_name: str, registry: Registry, expected: type[Component]) -> None:
        caller = getattr(self._pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            owner = self._info(impl.plugin)

            def register(component: Component, owner: PluginInfo = owner) -> None:
                registry.add(component, owner, expected)

            try:
                impl.function(**{name: register for name in impl.argnames})
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"{owner.label()} failed in hook {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc

    def register_components(self) -> Registry:
        """Run the registration hooks and return the registry they filled."""
        from .api import DataSource

        registry = Registry()
        self._register_into("register_tasks", registry, Task)
        self._register_into("register_strategies", registry, Strategy)
        self._register_into("register_providers", registry, Provider)
        self._register_into("register_data_sources", registry, DataSource)
        self._register_into("register_rewards", registry, Reward)
        self._register_into("register_loggers", registry, Logger)
        registry.check_option_names(canonical_schema()["properties"])
        return registry

    def register_commands(self, cli: click.Group) -> None:
        self._call("register_commands", cli=cli)

    def on_run_start(self, run: RunInfo) -> None:
        self._call("on_run_start", run=run)

    def on_log(self, run: RunInfo, step: int, logs: Mapping[str, float]) -> None:
        self._call("on_log", run=run, step=step, logs=logs)

    def on_evaluate(self, run: RunInfo, stage: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self._call("on_evaluate", run=run, stage=stage, metrics=metrics, step=step)

    def on_run_end(self, run: RunInfo, status: str, metrics: Mapping[str, Any],
                   error: str | None) -> None:
        self._call("on_run_end", run=run, status=status, metrics=metrics, error=error)


@dataclass
class Plugins:
    """The loaded plugins: the pluggy manager, typed hooks, the registry, what was skipped."""

    manager: pluggy.PluginManager
    hooks: Hooks
    registry: Registry
    infos: dict[str, PluginInfo]
    skipped: list[Skipped]

    def hook_names(self, plugin_name: str) -> list[str]:
        plugin = self.manager.get_plugin(plugin_name)
        if plugin is None:
            return []
        return sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or [])

    def is_builtin(self, kind: str, name: str) -> bool:
        """Whether a built-in distribution provides the ``kind`` called ``name``."""
        return (kind, name) in BUILTIN_DISTRIBUTIONS

    def why_missing(self, kind: str, name: str) -> str:
        """A sentence saying why no ``kind`` called ``name`` is available."""
        dist = BUILTIN_DISTRIBUTIONS.get((kind, name))
        for skipped in self.skipped:
            if dist and _normalize(skipped.distribution) == _normalize(dist):
                return f"{kind} {name!r} comes from {dist}, which is installed but {skipped.reason}"
        if dist:
            return f"{kind} {name!r} is provided by {dist}, which is not installed (pip install {dist})"
        available = ", ".join(sorted(self.registry.of_kind(kind))) or "none"
        return f"no installed plugin provides the {kind} {name!r} (installed: {available})"


def _normalize(name: str) -> str:
    """PEP 503 normalization: ``modelforge_strategy_DPO`` names ``modelforge-strategy-dpo``."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _split_env(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {_normalize(part) for part in value.split(",") if part.strip()}


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def load_plugins(extra: Iterable[tuple[str, object]] = (), *, entry_points: bool = True,
                 environ: Mapping[str, str] | None = None) -> Plugins:
    """Build the plugin manager, load the plugins and collect their components.

    :param extra: ``(name, plugin)`` pairs registered directly (tests, embedding). A pair whose
        plugin an installed entry point of the same name already loaded is registered once.
    :param entry_points: load the plugins installed under the ``modelforge`` group.
    :param environ: where to read ``MODELFORGE_LOAD_PLUGINS``/``MODELFORGE_DISABLE_PLUGINS``.
    """
    env = os.environ if environ is None else environ
    allow = _split_env(env.get(LOAD_ENV))
    block = _split_env(env.get(DISABLE_ENV)) or set()
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    _register_builtin_sources(pm)
    skipped: list[Skipped] = []
    if entry_points:
        for ep in _entry_points():
            dist = ep.dist.name if ep.dist else "(unknown distribution)"
            version = ep.dist.version if ep.dist else ""
            names = {_normalize(ep.name), _normalize(dist)}
            if allow is not None and not names & allow:
                skipped.append(Skipped(ep.name, dist, f"not listed in {LOAD_ENV}"))
                continue
            if names & block:
                skipped.append(Skipped(ep.name, dist, f"disabled by {DISABLE_ENV}"))
                continue
            info = PluginInfo(ep.name, dist, version)
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"{info.label()} failed to import ({ep.value}): {type(exc).__name__}: {exc}; "
                    f"reinstall it, or skip it with {DISABLE_ENV}={ep.name}"
                ) from exc
            if pm.get_plugin(ep.name) is not None:
                raise PluginError(f"two installed plugins use the entry-point name {ep.name!r}: "
                                  f"{infos[ep.name].label()} and {info.label()}")
            _register(pm, plugin, info)
            infos[ep.name] = info
    for name, plugin in extra:
        info = PluginInfo(name, "(registered directly)", "")
        if pm.get_plugin(name) is plugin:
            continue  # the same plugin is installed too (its entry point loaded this very module)
        if pm.get_plugin(name) is not None:
            raise PluginError(f"{info.label()}: the name {name!r} is already taken by {infos[name].label()}")
        _register(pm, plugin, info)
        infos[name] = info
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        culprit = infos.get(pm.get_name(exc.plugin) or "")
        who = culprit.label() if culprit else "a plugin"
        raise PluginError(f"{who} implements a hook that does not exist: {exc}; "
                          f"the hooks are listed in modelforge_core.hookspecs") from exc
    hooks = Hooks(pm, infos)
    registry = hooks.register_components()
    return Plugins(pm, hooks, registry, infos, skipped)


def _register_builtin_sources(pm: pluggy.PluginManager) -> None:
    """The core's own data sources (local files and folders, the hub), registered through
    ``register_data_sources`` like a plugin's."""
    from . import __version__, sources

    _register(pm, sources, PluginInfo(BUILTIN_SOURCES, "modelforge-core", __version__))


def _register(pm: pluggy.PluginManager, plugin: object, info: PluginInfo) -> None:
    try:
        pm.register(plugin, name=info.name)
    except pluggy.PluginValidationError as exc:
        # A known hook with arguments the specification does not have, for example.
        raise PluginError(f"{info.label()} does not match the hook specification: {exc}") from exc
    except ValueError as exc:  # the same object registered twice
        raise PluginError(f"{info.label()} cannot be registered: {exc}") from exc
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                pm.unregister(plugin)
                raise PluginError(f"{info.label()} implements {caller.name} as a hook wrapper; "
                                  f"ModelForge hooks take plain implementations only")


#: The process-wide plugins (a one-slot holder, filled on first use).
_current: dict[str, Plugins] = {}


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    if "plugins" not in _current:
        _current["plugins"] = load_plugins()
    return _current["plugins"]


def set_plugins(plugins: Plugins | None) -> None:
    """Replace the process-wide plugins (tests, embedding applications); ``None``: load them
    again on next use."""
    if plugins is None:
        _current.pop("plugins", None)
    else:
        _current["plugins"] = plugins


def plugins_report(loaded: Plugins) -> dict[str, Any]:
    """What ``modelforge plugins --json`` prints and the server's ``/plugins`` answers: each
    plugin with its hooks and components, and the skipped ones."""
    rows: list[dict[str, Any]] = []
    for name, info in sorted(loaded.infos.items()):
        components = [
            {"kind": c.kind, "name": c.name, "description": c.description, "capabilities": c.capabilities(),
             "options": sorted((c.options_schema or {}).get("properties", {}))}
            for c in loaded.registry.components() if loaded.registry.owner_of(c).name == name
        ]
        rows.append({"name": name, "distribution": info.distribution, "version": info.version,
                     "hooks": loaded.hook_names(name), "components": components})
    skipped = [{"name": s.name, "distribution": s.distribution, "reason": s.reason} for s in loaded.skipped]
    return {"plugins": rows, "skipped": skipped}
