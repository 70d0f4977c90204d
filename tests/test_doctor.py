"""`modelforge doctor` (issue 8): what this machine has and the profile it suits, on a machine
without a GPU as well as with one; `--help` stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge_core.cli import main
from modelforge_core.hardware import ASSUME_MEMORY_ENV, LIBRARIES, recommend_profile, system_memory


def test_doctor_json_reports_cpu_memory_versions_and_a_recommendation(
        tmp_path: Path, modelforge: Callable[..., Any]) -> None:
    result = modelforge("doctor", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cpu"]["count"] >= 1
    assert report["memory"]["total_gb"] > 0
    assert 0 < report["memory"]["available_gb"] <= report["memory"]["total_gb"]
    assert set(LIBRARIES) <= set(report["versions"])
    assert report["versions"]["torch"] and report["versions"]["transformers"] and report["versions"]["peft"]
    assert report["bitsandbytes"]["installed"] and report["bitsandbytes"]["runs"]
    training = report["bitsandbytes"]["training"]  # a real tiny 4-bit training (issue 16)
    assert training["works"] is True, training["reason"]
    assert training["device"] == report["device"]["device"]
    assert "optimizer steps through biased and bias-free 4-bit layers after an evaluation" in training["reason"]
    # Each installed provider says whether it can train here; a provider's own libraries are reported.
    assert report["providers"]["huggingface"] == {"ready": True, "problem": None, "multi_process": True,
                                                  "devices": None}
    unsloth = report["providers"]["unsloth"]
    assert unsloth["multi_process"] is False and "mps" not in unsloth["devices"]
    assert unsloth["ready"] is (report["versions"]["unsloth"] is not None and unsloth["problem"] is None)
    device = report["device"]
    # Whatever this machine is, the recommendation is the rule applied to its figures.
    expected = recommend_profile(device["device"], device["memory_gb"])
    assert report["recommendation"]["compute_specs"] == expected.profile
    assert report["recommendation"]["reason"] == expected.reason
    assert report["recommendation"]["thresholds_gb"] == {"low_end_below": 7.2, "mid_range_below": 15.2}
    if not report["accelerators"]:  # no GPU: the CPU's system memory, low_end, fp32
        assert device["device"] == "cpu" and device["source"] == "system memory"
        assert report["recommendation"]["compute_specs"] == "low_end"
        assert report["precision"] == "fp32"
        assert report["recommendation"]["reason"].startswith("no GPU")


def test_doctor_prints_the_profile_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ASSUME_MEMORY_ENV, "12")
    result = CliRunner().invoke(main, ["doctor"])  # in this process: torch and bitsandbytes load once
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("system memory") for line in lines)
    assert any(line.startswith("libraries") and "torch" in line for line in lines)
    assert any(line.startswith("4-bit training works on ") for line in lines), lines
    assert any(line.startswith("assumed") and "12 GiB" in line for line in lines)
    [profile_line] = [line for line in lines if line.startswith("compute_specs")]
    profile = profile_line.split()[-1]
    assert profile in ("low_end", "mid_range")  # 12 GiB: mid_range on a GPU, low_end on a CPU
    assert any(line.strip().startswith("why:") for line in lines)
    assert any(line.strip().startswith("text-generation:") for line in lines)


def test_doctor_refuses_a_bad_assumed_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ASSUME_MEMORY_ENV, "lots")
    monkeypatch.delenv("MODELFORGE_DEBUG", raising=False)
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 2
    assert f"error: {ASSUME_MEMORY_ENV}='lots'" in result.stderr and "Traceback" not in result.stderr


def test_system_memory_is_read_without_psutil() -> None:
    total, available = system_memory()
    assert total is not None and total > 0.5
    assert available is None or 0 < available <= total


def test_help_of_doctor_and_plan_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from modelforge_core.cli import main\n"
        "for args in (['--help'], ['doctor', '--help'], ['plan', '--help']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('torch', 'transformers', 'bitsandbytes') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
