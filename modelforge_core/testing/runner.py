"""Run the core from a test as a user's command would, through the public test kit: validate and
resolve a config, train it, and find the rows a run trained and evaluated on. No pytest needed.

Import these from :mod:`modelforge_core.testing`; they replace reaching into the core's internal
modules (``config.resolve_config``, ``orchestrate.train``, ``orchestrate.split_rows``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..orchestrate import TrainOutcome
    from ..plugins import Plugins


@contextmanager
def use_plugins(*plugins: tuple[str, object], entry_points: bool = True,
                environ: Mapping[str, str] | None = None) -> Iterator[Plugins]:
    """Make the installed plugins plus ``plugins`` (``(name, module)`` pairs registered
    directly) the process-wide ones inside the block, and restore the previous ones after::

        with use_plugins(("my-plugin", my_plugin)) as loaded:
            assert "my-strategy" in loaded.registry.strategies

    ``entry_points=False`` starts from nothing but ``plugins``; ``environ`` stands in for
    ``os.environ`` when choosing plugins (``MODELFORGE_DISABLE_PLUGINS``...).
    """
    from ..plugins import _current, load_plugins, set_plugins

    previous = _current.get("plugins")
    loaded = load_plugins(extra=list(plugins), entry_points=entry_points, environ=environ)
    set_plugins(loaded)
    try:
        yield loaded
    finally:
        set_plugins(previous)


def resolved_config(config: Mapping[str, Any], *, plugins: Plugins | None = None,
                    base_dir: Path | None = None) -> dict[str, Any]:
    """``config`` validated and resolved (schema defaults, profile, the selected components'
    options) exactly as ``modelforge validate --resolved`` and ``train`` resolve it: the mapping
    a component receives as ``config``. Raises ``ValidationFailed`` with every problem.

    :param plugins: the plugins to validate against (default: the process-wide ones).
    :param base_dir: the folder relative paths in ``config`` are relative to.
    """
    from ..config import resolve_config

    return dict(resolve_config(dict(config), plugins=plugins, base_dir=base_dir).data)


def train_config(config: Mapping[str, Any], root: Path, *, plugins: Plugins | None = None) -> TrainOutcome:
    """Validate, resolve and train ``config`` quietly, the run folder under ``root/runs``.
    Returns the outcome: ``run_dir``, ``status`` and ``metrics`` (``metrics.json``'s content)."""
    from ..config import resolve_config
    from ..orchestrate import train
    from ..training import Display

    resolved = resolve_config(dict(config), plugins=plugins, base_dir=root)
    return train(resolved, plugins=plugins, display=Display(enabled=False), runs_root=root / "runs")


def run_split(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]],
                                                                          list[Mapping[str, Any]]]:
    """The rows of a finished run's dataset that it trained on and that it evaluated on, split
    as the core split them (the run's ``eval_split`` and ``seed``). ``rows`` are the dataset's
    rows in file order."""
    from ..orchestrate import split_rows

    config = json.loads((Path(run_dir) / "config.json").read_text("utf-8"))["config"]
    train_indices, eval_indices = split_rows(rows, config["eval_split"], config["seed"], str(run_dir))
    return [rows[i] for i in train_indices], [rows[i] for i in eval_indices]
