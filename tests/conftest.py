"""Shared light fixtures: the built-in plugins, a clean process-wide plugin slot, and the real
``modelforge`` console script run in a subprocess. Nothing here imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from modelforge_core.plugins import (
    BUILTIN_DISTRIBUTIONS,
    DISABLE_ENV,
    LOAD_ENV,
    Plugins,
    load_plugins,
    set_plugins,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def builtin_plugins() -> Plugins:
    """The nine built-ins, found through their entry points, ignoring the caller's
    MODELFORGE_LOAD_PLUGINS / MODELFORGE_DISABLE_PLUGINS and any third-party plugin installed
    beside them (the core's tests hold with one installed)."""
    return load_plugins(environ={LOAD_ENV: ",".join(sorted(set(BUILTIN_DISTRIBUTIONS.values())))})


@pytest.fixture
def use_plugins() -> Iterator[Callable[[Plugins], Plugins]]:
    """Install a :class:`Plugins` as the process-wide plugins for one test; restored after."""

    def install(plugins: Plugins) -> Plugins:
        set_plugins(plugins)
        return plugins

    try:
        yield install
    finally:
        set_plugins(None)


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without the plugin selection variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in (LOAD_ENV, DISABLE_ENV, "MODELFORGE_DEBUG")}
    env.update(extra or {})
    return env


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment for a subprocess, without MODELFORGE_LOAD_PLUGINS / _DISABLE_PLUGINS."""
    return clean_environment()


@pytest.fixture
def modelforge() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed ``modelforge`` console script in a subprocess:
    ``modelforge("validate", path, cwd=tmp_path, extra_env={...})``."""
    script = Path(sys.executable).with_name("modelforge")
    assert script.exists(), f"{script} is missing: run `make setup`"

    def run(*args: str | Path, cwd: Path | None = None,
            extra_env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), *map(str, args)], cwd=cwd, env=clean_environment(extra_env),
                              capture_output=True, text=True, timeout=120, check=False)

    return run
