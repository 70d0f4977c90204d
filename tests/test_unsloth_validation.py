"""The unsloth provider as the main environment sees it (issue 7): unsloth is not installed here,
so ``modelforge validate`` (a warning: the config is valid, issue 16) and ``modelforge train``
(exit 3) must say so in one sentence with what to do, before anything loads; and the
combinations unsloth cannot run are named at their paths.

A broken unsloth environment (unsloth present, but beside a transformers it does not support, a
CUDA torchvision, or failing to import) is staged with stand-in distributions on PYTHONPATH:
the check reads package metadata only, which is exactly what those stand-ins provide.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]

UNSLOTH_CONFIG = {"task": "text-generation", "model_name": "Qwen/Qwen2.5-0.5B-Instruct",
                  "dataset": "data/train.jsonl", "compute_specs": "low_end", "provider": "unsloth",
                  "max_seq_length": 512}


def _write(tmp_path: Path, name: str = "config.json", **changes: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({**UNSLOTH_CONFIG, **changes}, indent=2), "utf-8")
    return path


def _errors(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {e["path"]: e["message"] for e in json.loads(result.stdout)["errors"]}


def _one_sentence(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert "Traceback" not in text
    return lines[-1]


def _warning(result: subprocess.CompletedProcess[str]) -> str:
    """The one warning line of a valid config that this environment cannot train."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    return line


def _stand_in(root: Path, name: str, version: str, requires: tuple[str, ...] = (),
              module: str | None = None) -> None:
    """A minimal installed distribution: its metadata and, optionally, its package."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n", "utf-8")
    if module is not None:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(module, "utf-8")


# --- unsloth missing -----------------------------------------------------------------------------

def test_validate_says_unsloth_is_missing_and_what_to_do(modelforge: Run, tmp_path: Path) -> None:
    config = _write(tmp_path)
    line = _warning(modelforge("validate", config))
    assert "unsloth provider" in line
    assert "unsloth package, which is not installed" in line
    assert "make unsloth-env" in line
    assert "set provider to huggingface" in line
    as_json = modelforge("validate", config, "--json")
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)
    assert report["valid"] is True
    [warning] = report["warnings"]
    assert warning == line.removeprefix("warning: ")


def test_train_says_unsloth_is_missing_before_loading_anything(modelforge: Run, tmp_path: Path) -> None:
    config = _write(tmp_path)
    result = modelforge("train", config, cwd=tmp_path)
    assert result.returncode == 3
    assert "unsloth package, which is not installed" in _one_sentence(result.stderr)
    assert not (tmp_path / "runs").exists(), "no run folder: the run never started"


# --- what unsloth cannot run -----------------------------------------------------------------------

@pytest.mark.parametrize("task", ["summarization", "extractive-question-answering"])
def test_tasks_other_than_text_generation_are_named(modelforge: Run, tmp_path: Path, task: str) -> None:
    result = modelforge("validate", _write(tmp_path, task=task), "--json")
    assert result.returncode == 2
    errors = _errors(result)
    assert "The unsloth provider supports the tasks text-generation" in errors["task"]
    assert f'"{task}"' in errors["task"]
    assert "providers huggingface" in errors["provider"]


def test_rlhf_is_named_as_a_strategy_unsloth_cannot_run(modelforge: Run, tmp_path: Path) -> None:
    result = modelforge("validate", _write(tmp_path, strategy="rlhf"), "--json")
    assert result.returncode == 2
    errors = _errors(result)
    assert "runs the strategies dpo, qlora, sft" in errors["strategy"]
    assert '"rlhf"' in errors["strategy"]


def test_max_seq_length_is_required(modelforge: Run, tmp_path: Path) -> None:
    result = modelforge("validate", _write(tmp_path, max_seq_length=None), "--json")
    assert result.returncode == 2
    assert "needs max_seq_length as an integer" in _errors(result)["max_seq_length"]


# --- unsloth present but unusable -----------------------------------------------------------------

def test_unsloth_beside_an_unsupported_transformers_is_named(modelforge: Run, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _stand_in(site, "unsloth", "2026.10.9", ("transformers<=5.17.0,>=4.52.4", "torch<2.15.0,>=2.4.0",
                                            "trl<=1.15.0; sys_platform == 'no-such-platform'"), module="")
    line = _warning(modelforge("validate", _write(tmp_path), extra_env={"PYTHONPATH": str(site)}))
    installed = metadata.version("transformers")
    assert f"unsloth 2026.10.9 is installed but cannot run with transformers {installed}" in line
    assert "<=5.17.0" in line
    assert "torch " not in line, "torch satisfies unsloth's range"
    assert "trl " not in line, "a requirement for another platform does not count"
    assert "make unsloth-env" in line


def test_a_cuda_torchvision_beside_the_cpu_torch_is_named(modelforge: Run, tmp_path: Path) -> None:
    if not metadata.version("torch").endswith("+cpu"):
        pytest.fail("the main .venv must hold the CPU build of torch (constraints/cpu.txt)")
    site = tmp_path / "site"
    _stand_in(site, "unsloth", "2026.10.9", module="")
    _stand_in(site, "torchvision", "0.28.0")
    line = _warning(modelforge("validate", _write(tmp_path), extra_env={"PYTHONPATH": str(site)}))
    assert "torchvision 0.28.0 is a CUDA build" in line
    assert "pip uninstall torchvision" in line


def test_unsloth_that_fails_to_import_is_reported_in_one_sentence(
        modelforge: Run, tmp_path: Path, tiny_causal_lm: Path, sample_dataset: Callable[..., Path]) -> None:
    """Only importing tells; validation stays cheap and passes, training stops at the load with
    the import's own reason and what to do, and the run is marked failed."""
    site = tmp_path / "site"
    _stand_in(site, "unsloth", "2026.10.9",
              module='raise ImportError("Unsloth: no kernel for this machine\\nsecond line")\n')
    config = _write(tmp_path, model_name=str(tiny_causal_lm), dataset=str(sample_dataset("text-generation")),
                    use_4bit=False)
    env = {"PYTHONPATH": str(site)}
    assert modelforge("validate", config, extra_env=env).returncode == 0
    result = modelforge("train", config, cwd=tmp_path, extra_env=env)
    assert result.returncode == 3, result.stderr[-2000:]
    line = _one_sentence(result.stderr)
    assert "unsloth 2026.10.9 is installed but fails to import (ImportError: Unsloth: no kernel for this machine)" \
        in line
    assert "make unsloth-env" in line
    [run] = (tmp_path / "runs").iterdir()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed"
    assert "fails to import" in status["error"]
