"""The tutorial plugin (examples/plugin-tutorial) built and installed as its own distribution, into
a private folder on PYTHONPATH (the shared .venv is left alone), then used through the real CLI."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "examples" / "plugin-tutorial"
DISTRIBUTION = "modelforge-strategy-tutorial"
STRATEGY = "sft-noisy-embeddings"
ALPHA = "neftune_noise_alpha"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Build the tutorial with pip (no network, no build isolation) into a --target folder; return
    the environment variables that put it on the path."""
    work = tmp_path_factory.mktemp("tutorial")
    source = work / "source"
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    shutil.copytree(TUTORIAL, source)
    target = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(target.glob("modelforge_strategy_tutorial-*.dist-info/entry_points.txt"))
    return {"PYTHONPATH": str(target)}


def _config(tmp_path: Path, **options: Any) -> Path:
    config = json.loads((TUTORIAL / "example-config.json").read_text("utf-8"))
    config[STRATEGY] = options
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, indent=2), "utf-8")
    return path


def test_plugins_lists_the_tutorial(modelforge: Run, installed: dict[str, str]) -> None:
    result = modelforge("plugins", "--json", extra_env=installed)
    assert result.returncode == 0, result.stderr
    (row,) = [r for r in json.loads(result.stdout)["plugins"] if r["distribution"] == DISTRIBUTION]
    assert (row["name"], row["version"], row["hooks"]) == ("strategy-tutorial", "0.1.0", ["register_strategies"])
    (component,) = row["components"]
    assert (component["kind"], component["name"], component["options"]) == ("strategy", STRATEGY, [ALPHA])
    assert component["capabilities"]["tasks"] == ["text-generation"]
    assert component["capabilities"]["data_shape"] == "supervised"
    text = modelforge("plugins", extra_env=installed).stdout
    assert f"strategy {STRATEGY!r}: Supervised fine-tuning with NEFTune noise" in text


def test_schema_contains_its_option_object(modelforge: Run, installed: dict[str, str]) -> None:
    schema = json.loads(modelforge("schema", extra_env=installed).stdout)
    assert STRATEGY in schema["properties"]["strategy"]["enum"]
    options = schema["properties"][STRATEGY]
    assert options["type"] == "object"
    assert options["additionalProperties"] is False
    assert options["properties"][ALPHA]["default"] == 5.0
    assert STRATEGY not in json.loads(modelforge("schema", "--canonical", extra_env=installed).stdout)["properties"]


def test_config_using_it_validates(modelforge: Run, installed: dict[str, str], tmp_path: Path) -> None:
    result = modelforge("validate", TUTORIAL / "example-config.json", "--resolved", "--json", extra_env=installed)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["config"]["strategy"] == STRATEGY
    assert report["config"][STRATEGY] == {ALPHA: 10}
    defaults = json.loads(modelforge("validate", _config(tmp_path), "--resolved", "--json",
                                     extra_env=installed).stdout)
    assert defaults["config"][STRATEGY] == {ALPHA: 5.0}
    assert defaults["sources"][f"{STRATEGY}.{ALPHA}"] == "default"


@pytest.mark.parametrize(("value", "message"), [(0, "must be greater than 0"), (150, "above the maximum of 100"),
                                                ("loud", "expected number")])
def test_bad_option_value_is_rejected_with_its_path(modelforge: Run, installed: dict[str, str], tmp_path: Path,
                                                    value: Any, message: str) -> None:
    result = modelforge("validate", _config(tmp_path, **{ALPHA: value}), "--json", extra_env=installed)
    assert result.returncode == 2
    (error,) = json.loads(result.stdout)["errors"]
    assert error["path"] == f"{STRATEGY}.{ALPHA}"
    assert message in error["message"]
    assert error["line"] == 9


def test_bad_option_through_set(modelforge: Run, installed: dict[str, str]) -> None:
    result = modelforge("validate", TUTORIAL / "example-config.json", "--set", f"{STRATEGY}.{ALPHA}=-1",
                        extra_env=installed)
    assert result.returncode == 2
    assert f"--set: {STRATEGY}.{ALPHA}: -1 is out of range" in result.stdout


def test_its_capabilities_are_enforced(modelforge: Run, installed: dict[str, str], tmp_path: Path) -> None:
    path = _config(tmp_path)
    config = json.loads(path.read_text("utf-8"))
    path.write_text(json.dumps({**config, "task": "summarization"}), "utf-8")
    result = modelforge("validate", path, extra_env=installed)
    assert result.returncode == 2
    assert "strategy: The summarization task supports the strategies qlora, sft" in result.stdout


def test_without_the_distribution_the_config_is_refused(modelforge: Run) -> None:
    result = modelforge("validate", TUTORIAL / "example-config.json")
    assert result.returncode == 2
    assert f"no installed plugin provides the strategy {STRATEGY!r}" in result.stdout
    assert f"unknown field {STRATEGY!r}" in result.stdout


def test_disabling_it_by_distribution_name(modelforge: Run, installed: dict[str, str]) -> None:
    env = {**installed, "MODELFORGE_DISABLE_PLUGINS": DISTRIBUTION}
    result = modelforge("plugins", "--json", extra_env=env)
    assert {"name": "strategy-tutorial", "distribution": DISTRIBUTION,
            "reason": "disabled by MODELFORGE_DISABLE_PLUGINS"} in json.loads(result.stdout)["skipped"]


def test_it_uses_only_the_public_api() -> None:
    """The tutorial imports modelforge_core's public API only, and nothing heavy at module level."""
    tree = ast.parse((TUTORIAL / "modelforge_strategy_tutorial" / "__init__.py").read_text("utf-8"))
    top_level: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module)
        elif isinstance(node, ast.Import):
            top_level.update(alias.name for alias in node.names)
    core = {m for m in top_level if m.startswith("modelforge_core")}
    assert core == {"modelforge_core", "modelforge_core.api"}
    assert top_level - core <= {"__future__", "importlib.util", "collections.abc", "typing"}
    inner = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} - top_level
    assert inner == {"modelforge_core.trainer"}  # the trainer kit, imported where it is used
