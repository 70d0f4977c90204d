"""Every extension point of ModelForge, in one place.

A plugin is a module (or object) with functions decorated with :data:`modelforge_core.hookimpl`
and named after the hooks below; it is found through the ``modelforge`` entry-point group.
An implementation may accept fewer arguments than the specification lists: new arguments are
only ever added, never renamed, so plugins keep working when a hook grows.

Registration hooks run every time the plugin manager is built (``modelforge validate`` included),
so they must be cheap: import torch, transformers and friends inside the component's methods,
never at module top.

Public API (docs/plugins.md, "The public API"): hooks and their arguments are only added, never
renamed or removed, within a minor release series.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .api import DataSource, Logger, Provider, Reward, RunInfo, Strategy, Task

PROJECT_NAME = "modelforge"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_providers(register: Callable[[Provider], None]) -> None:
    """Register model loaders (providers).

    Called once when the plugin manager is built, before any config is validated.

    :param register: call it with a :class:`modelforge_core.api.Provider` instance for each
        provider the plugin offers. Its ``name`` is what a config's ``provider`` field selects;
        a name registered twice is refused with an error that names both plugins.
    """


@hookspec
def register_strategies(register: Callable[[Strategy], None]) -> None:
    """Register training strategies (trainers).

    Called once when the plugin manager is built.

    :param register: call it with a :class:`modelforge_core.api.Strategy` instance for each
        strategy; its ``name`` is what a config's ``strategy`` field selects.
    """


@hookspec
def register_tasks(register: Callable[[Task], None]) -> None:
    """Register tasks (dataset format, model head, metrics).

    Called once when the plugin manager is built.

    :param register: call it with a :class:`modelforge_core.api.Task` instance for each task;
        its ``name`` is what a config's ``task`` field selects.
    """


@hookspec
def register_data_sources(register: Callable[[DataSource], None]) -> None:
    """Register data sources: places dataset rows come from (a database table, S3, a data lake).

    Called once when the plugin manager is built. The core's own sources (``local`` files and
    folders, ``hub`` datasets) are registered through this hook too.

    :param register: call it with a :class:`modelforge_core.api.DataSource` instance for each
        source. A dataset location that its ``claims`` accepts (``s3://...``), or a dataset object
        with ``"source": "<name>"``, is read by it; its ``options_schema`` describes the object
        users write under its name in the dataset object. A name registered twice is refused.
    """


@hookspec
def register_rewards(register: Callable[[Reward], None]) -> None:
    """Register reward functions (for online RL strategies such as grpo).

    Called once when the plugin manager is built, like the other registration hooks.

    :param register: call it with a :class:`modelforge_core.api.Reward` instance for each
        reward function; its ``name`` is what a config names in a reward list
        (``"grpo": {"rewards": [{"name": "exact_match", "weight": 1.0, "options": {}}]}``) and its
        ``options_schema`` validates that entry's ``options``. A name registered twice is refused.
    """


@hookspec
def register_loggers(register: Callable[[Logger], None]) -> None:
    """Register experiment trackers and loggers (their name, options and environment check).

    Called once when the plugin manager is built. The logging itself happens in the plugin's
    lifecycle hooks; registering a :class:`modelforge_core.api.Logger` gives it an options
    object in the config under its ``name``, and the logger is enabled for a run when the
    config has that object (``"mlflow": {}`` enables MLflow with its defaults).

    :param register: call it with a :class:`modelforge_core.api.Logger` instance for each logger.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``modelforge`` command line.

    Called when the CLI starts, after the built-in commands exist.

    :param cli: the top-level click group; use ``@cli.command()`` to add a command. Import
        heavy libraries inside the command, so ``modelforge --help`` stays fast.
    """


@hookspec
def on_run_start(run: RunInfo) -> None:
    """A training run starts: its folder exists, the config is resolved, nothing is loaded yet.

    Called on the main process only.

    :param run: the run's folder, name and resolved config.
    """


@hookspec
def on_log(run: RunInfo, step: int, logs: Mapping[str, float]) -> None:
    """The trainer logged values (loss, learning rate, ...) at optimizer step ``step``.

    Called on the main process only, every ``logging_steps`` steps.

    :param run: the run.
    :param step: the global optimizer step.
    :param logs: the values the trainer logged, by name.
    """


@hookspec
def on_evaluate(run: RunInfo, stage: str, metrics: Mapping[str, float], step: int) -> None:
    """An evaluation finished.

    Called on the main process only.

    :param run: the run.
    :param stage: ``"before"`` (the base model, before training), ``"during"`` (every
        ``eval_steps``) or ``"after"`` (the trained model); strategies with several stages
        add their own names (rlhf: ``"reward_model_before"``, ``"reward_model_after"``).
    :param metrics: metric values by name (``eval_loss``, ``perplexity``, ``rougeL``, ...).
    :param step: the global optimizer step the evaluated weights come from (0 for
        ``"before"``; for ``"after"``, the last step, or the best step when early stopping
        restored the best checkpoint).
    """


@hookspec
def on_run_end(run: RunInfo, status: str, metrics: Mapping[str, Any],
               error: str | None) -> None:
    """A training run ended.

    Called on the main process only, also when the run failed or was interrupted.

    :param run: the run.
    :param status: ``"finished"``, ``"failed"`` or ``"interrupted"``.
    :param metrics: the final metrics (empty when the run did not finish); ``metrics.json``
        and ``status.json`` in ``run.directory`` are written before this hook is called.
    :param error: the error message when ``status`` is ``"failed"``, else ``None``.
    """
