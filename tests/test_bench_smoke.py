"""Every benchmark script runs end to end at tiny sizes and prints its figures, so that
``make bench`` cannot rot. No timing is asserted: these machines are shared and noisy; the
measured figures live in bench/RESULTS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_smoke(name: str, tmp_path: Path) -> list[dict[str, object]]:
    env = dict(os.environ, MODELFORGE_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--only", name], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, done.stdout[-3000:]
    return results


def test_cli_benchmark_prints_every_command(tmp_path: Path) -> None:
    results = run_smoke("cli", tmp_path)
    commands = {r["command"] for r in results}
    assert {"modelforge --help", "modelforge validate", "modelforge schema", "modelforge plugins"} <= commands
    assert any(str(c).startswith("modelforge validate --data") for c in commands)
    assert all(float(r["median_s"]) > 0 for r in results)  # type: ignore[arg-type]


@pytest.mark.slow
def test_data_benchmark_reports_both_runs_and_the_ratio(tmp_path: Path) -> None:
    results = {r["run"]: r for r in run_smoke("data", tmp_path)}
    assert {"first", "second", "speedup", "trl_reference"} <= set(results)
    assert results["first"]["rows"] == 300
    assert float(results["speedup"]["ratio"]) > 0  # type: ignore[arg-type]


@pytest.mark.slow
def test_overhead_benchmark_compares_both_sides(tmp_path: Path) -> None:
    results = {r["side"]: r for r in run_smoke("overhead", tmp_path)}
    assert {"modelforge train", "plain TRL + peft", "comparison", "per_step_costs"} <= set(results)
    for side in ("modelforge train", "plain TRL + peft"):
        assert float(results[side]["tokens_per_s"]) > 0  # type: ignore[arg-type]
        assert float(results[side]["loop_tokens_per_s"]) > 0  # type: ignore[arg-type]
        assert float(results[side]["num_tokens"]) > 0  # type: ignore[arg-type]
    assert results["modelforge train"]["num_tokens"] == results["plain TRL + peft"]["num_tokens"], \
        "both sides must train on the same tokens"
    assert "throughput_ratio" in results["comparison"] and len(results["comparison"]["pair_ratios"]) == 1  # type: ignore[arg-type]
    costs = results["per_step_costs"]
    assert {"callback step end (per step)", "JSONL line + hooks (per log)", "TensorBoard scalars + flush (per log)",
            "progress line (per log)"} <= set(costs)


def test_gpu_benchmark_is_one_prepared_script() -> None:
    """The GPU run cannot happen here; its script must at least parse and name every run."""
    script = (REPO / "bench" / "gpu" / "run.sh").read_text()
    assert "HF_HUB_OFFLINE=1" in script and "--no-index --no-deps" in script
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu" / "bench_gpu.py"), "--help"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "--tiny" in done.stdout
