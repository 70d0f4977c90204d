"""Can this Python environment run a valid config? A separate question from validity.

A config is valid or not by the schema (canonical + the installed plugins' fragments), the same
verdict everywhere. Whether *this* environment can run it depends on what is installed: the
plugin of each selected component, and what that component needs (``check_environment()``).
``modelforge validate`` reports the answer as warnings (exit 0); ``train``, ``plan`` and the
server's job submission refuse with :class:`~modelforge_core.errors.EnvironmentProblem` (exit 3)
before anything heavy loads. Nothing here imports torch.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import EnvironmentProblem

if TYPE_CHECKING:
    from .plugins import Plugins

COMPONENT_KINDS = ("task", "strategy", "provider")


def environment_problems(config: Mapping[str, Any], plugins: Plugins) -> list[str]:
    """Why this environment cannot run ``config`` (a valid one), one sentence each with how to
    fix it: a selected component whose plugin is not installed (or not loaded), or one that says
    what it lacks here. Empty when it can run."""
    from .schema import canonical_schema

    props = canonical_schema()["properties"]
    problems = []
    for kind in COMPONENT_KINDS:
        name = config.get(kind, props[kind].get("default"))
        if not isinstance(name, str):
            continue
        component = plugins.registry.of_kind(kind).get(name)
        if component is None:
            problems.append(plugins.why_missing(kind, name))
            continue
        message = component.check_environment()
        if message:
            problems.append(message)
    for name, logger in plugins.registry.loggers.items():  # only the loggers the config enables
        message = logger.check_environment() if logger.enabled_in(config, name) else None
        if message:
            problems.append(message)
    return problems


def require_runnable(config: Mapping[str, Any], plugins: Plugins) -> None:
    """Raise :class:`EnvironmentProblem` (exit 3) when this environment cannot run ``config``."""
    problems = environment_problems(config, plugins)
    if problems:
        raise EnvironmentProblem("this environment cannot run the config: " + "; ".join(problems))
