"""Helpers for logger plugins (experiment trackers), shared by the built-in MLflow and W&B ones.

A logger plugin registers a :class:`modelforge_core.api.Logger` (its name and options) and
does its work in the lifecycle hooks. What every such plugin needs, and gets here:

- :func:`flat_config`: the resolved config as flat ``key -> value`` pairs (``dpo.beta``), with
  the source of each value (``default``, ``profile:<name>``, ``file:<path>``, ``--set``);
- :func:`read_state` / :func:`write_state`: a small JSON file of the logger's own in the run
  folder (the tracker's run id), so a resumed training continues the same tracked run;
- :class:`Guard`: call the tracker's client so that a failure (an unreachable server, a
  refused request) prints one warning and turns the logger off for the rest of the run,
  instead of failing or slowing the training.

Importing this module is cheap.

Public API (docs/plugins.md, "The public API"): the names in ``__all__`` are kept within a minor
release series (0.1.x); their parameters are only added, as keywords with defaults.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .api import RunInfo

__all__ = ["Guard", "flat_config", "read_state", "state_path", "write_state"]

T = TypeVar("T")


def flat_config(run: RunInfo) -> dict[str, tuple[Any, str]]:
    """``{"learning_rate": (0.0002, "default"), "dpo.beta": (0.2, "--set"), ...}``."""
    out: dict[str, tuple[Any, str]] = {}

    def walk(values: Mapping[str, Any], prefix: str) -> None:
        for key, value in values.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, dotted + ".")
            else:
                out[dotted] = (value, run.sources.get(dotted, "unknown"))

    walk(run.config, "")
    return out


def state_path(run: RunInfo, name: str) -> Path:
    return Path(run.directory) / f"{name}.json"


def read_state(run: RunInfo, name: str) -> dict[str, Any]:
    """The logger's state file in the run folder (``<run>/<name>.json``), or ``{}``."""
    try:
        data = json.loads(state_path(run, name).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return dict(data) if isinstance(data, dict) else {}


def write_state(run: RunInfo, name: str, data: Mapping[str, Any]) -> None:
    """Write the logger's state file atomically (a temporary file, then a rename)."""
    path = state_path(run, name)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(dict(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Guard:
    """Calls into a tracker that must never fail or slow the training.

    The first exception prints one warning (to stderr, naming the logger and what failed) and
    disables the guard: every later :meth:`call` returns ``None`` at once. Keep the client's own
    timeouts and retries short too, so that the one failing call is quick.
    """

    def __init__(self, logger: str, run_name: str) -> None:
        self.logger = logger
        self.run_name = run_name
        self.disabled = False
        self.warning: str | None = None

    def call(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        if self.disabled:
            return None
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # a tracker must never stop the training
            self.disabled = True
            self.warning = (f"warning: {self.logger}: {what} failed ({type(exc).__name__}: {_first_line(exc)}); "
                            f"run {self.run_name} goes on without {self.logger}")
            print(self.warning, file=sys.stderr, flush=True)
            return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
