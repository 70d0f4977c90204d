"""A config's verdict is the schema's, whatever is installed (issue 16); whether this environment
can run it is a separate answer: a warning at ``validate``, exit 3 at ``train``, ``plan`` and the
server's job submission, before anything heavy loads. Also with the core alone installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from modelforge_core.config import load_document, resolve_config
from modelforge_core.errors import EnvironmentProblem, ValidationFailed
from modelforge_core.plugins import LOAD_ENV, Plugins, load_plugins
from modelforge_core.readiness import environment_problems, require_runnable

Run = Callable[..., subprocess.CompletedProcess[str]]

EXAMPLES = Path(__file__).resolve().parents[1] / "schema" / "examples"
REFERENCE = sorted((EXAMPLES / "valid").glob("reference-*.json"))
#: An allowlist entry that names no installed plugin: the CLI then runs with the core alone.
NOTHING = "no-such-plugin"


def test_the_reference_examples_are_all_here() -> None:
    assert [p.name for p in REFERENCE] == ["reference-1-huggingface-qlora-low-end.json",
                                           "reference-2-unsloth-qlora-mid-range.json",
                                           "reference-3-unsloth-sft-high-end.json"]


@pytest.mark.parametrize("example", REFERENCE, ids=[p.stem for p in REFERENCE])
def test_validate_accepts_each_reference_example_and_warns_what_training_needs(
        example: Path, modelforge: Run, builtin_plugins: Plugins) -> None:
    expected = environment_problems(resolve_config(load_document(example), plugins=builtin_plugins),
                                    builtin_plugins)
    if "unsloth" in example.name and importlib.util.find_spec("unsloth") is None:
        assert expected, "unsloth is not installed in this environment: the unsloth examples need a warning"
    result = modelforge("validate", example, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert report["warnings"] == expected
    text = modelforge("validate", example)
    assert text.returncode == 0
    assert [line.removeprefix("warning: ") for line in text.stdout.splitlines()
            if line.startswith("warning: ")] == expected


def test_train_and_plan_refuse_with_exit_3_and_the_same_message_before_loading_anything(
        modelforge: Run, builtin_plugins: Plugins, tmp_path: Path) -> None:
    example = EXAMPLES / "valid" / "reference-2-unsloth-qlora-mid-range.json"
    expected = environment_problems(resolve_config(load_document(example), plugins=builtin_plugins),
                                    builtin_plugins)
    if not expected:
        pytest.skip("this environment can run the unsloth provider: nothing to refuse")
    for command in ("train", "plan"):
        result = modelforge(command, example, cwd=tmp_path)
        assert result.returncode == 3, (command, result.stderr)
        assert "Traceback" not in result.stderr
        assert all(message in result.stderr for message in expected), result.stderr
    assert not (tmp_path / "runs").exists()
    # Nothing heavy was imported on the way to the refusal.
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('heavy:', sorted(m for m in ('torch', 'transformers') "
             "if m in sys.modules), file=sys.stderr))\n"
             "from modelforge_core.cli import run\n"
             f"sys.argv = ['modelforge', 'train', {str(example)!r}]\n"
             "run()\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            check=False, cwd=tmp_path)
    assert result.returncode == 3
    assert "heavy: []" in result.stderr


# --- the core alone -----------------------------------------------------------------------------

def test_with_the_core_alone_canonical_names_are_valid_and_training_names_the_packages() -> None:
    core = load_plugins(entry_points=False)
    assert not list(core.registry.components())
    for example in sorted((EXAMPLES / "valid").glob("*.json")):
        resolve_config(load_document(example), plugins=core)  # the schema's verdict: valid
    with pytest.raises(ValidationFailed):
        resolve_config(load_document(EXAMPLES / "invalid" / "enum-strategy.json"), plugins=core)
    resolved = resolve_config(load_document(EXAMPLES / "valid" / "reference-2-unsloth-qlora-mid-range.json"),
                              plugins=core)
    assert environment_problems(resolved, core) == [
        f"{kind} {name!r} is provided by {dist}, which is not installed (pip install {dist})"
        for kind, name, dist in (("task", "text-generation", "modelforge-task-text-generation"),
                                 ("strategy", "qlora", "modelforge-strategy-qlora"),
                                 ("provider", "unsloth", "modelforge-provider-unsloth"))]
    with pytest.raises(EnvironmentProblem) as refused:
        require_runnable(resolved, core)
    assert refused.value.exit_code == 3


def test_with_the_core_alone_through_the_cli(modelforge: Run, tmp_path: Path) -> None:
    example = EXAMPLES / "valid" / "reference-2-unsloth-qlora-mid-range.json"
    env = {LOAD_ENV: NOTHING}
    validated = modelforge("validate", example, "--json", extra_env=env)
    assert validated.returncode == 0, validated.stdout
    warnings = json.loads(validated.stdout)["warnings"]
    assert [w.split(" comes from ")[0] for w in warnings] == ["task 'text-generation'", "strategy 'qlora'",
                                                               "provider 'unsloth'"]
    trained = modelforge("train", example, cwd=tmp_path, extra_env=env)
    assert trained.returncode == 3
    assert all(warning in trained.stderr for warning in warnings)
    # A name outside the canonical schema is what the installed plugins say: unknown here.
    third_party = tmp_path / "third-party.json"
    third_party.write_text(json.dumps({**json.loads(example.read_text("utf-8")), "strategy": "my-strategy"}),
                           "utf-8")
    refused = modelforge("validate", third_party, "--json", extra_env=env)
    assert refused.returncode == 2
    [error] = json.loads(refused.stdout)["errors"]
    assert error["path"] == "strategy"
    assert "no installed plugin provides the strategy 'my-strategy'" in error["message"]
