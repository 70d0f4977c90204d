"""Scaling out through ``accelerate launch`` (issue 12).

One real two-process data-parallel training on the CPU (gloo), started the way a user starts it
(``modelforge train CONFIG --launcher accelerate --accelerate-config examples/accelerate/cpu-gloo.yaml``),
trained once and checked for everything a user sees: one run folder, one adapter, the step count
that the effective batch size implies, the same adapter in both processes, progress and results
reported once. The refusals (unsloth on several processes, a 4-bit base with FSDP, DeepSpeed
missing, FSDP without a GPU) and the launcher's signal and exit-code forwarding are checked
without training.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelforge_core.launch import (
    LAUNCHER_OPTIONS,
    accelerate_command,
    forwarded_arguments,
    plan_from_accelerate_config,
    run_launcher,
    scaling_problem,
)
from modelforge_core.plugins import DISABLE_ENV, LOAD_ENV
from modelforge_core.testing.datasets import sample_rows, write_jsonl
from modelforge_core.testing.pytest_plugin import tiny_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODELFORGE = BIN / "modelforge"
EXAMPLES = REPO / "examples" / "accelerate"
UNSLOTH_BIN = REPO / ".venv-unsloth" / "bin"

BATCH, ACCUMULATION, EPOCHS, PROCESSES = 4, 2, 2, 2


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without the plugin selection and debug variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in (LOAD_ENV, DISABLE_ENV, "MODELFORGE_DEBUG")}
    env.update(extra or {})
    return env


def _config_file(folder: Path, model: Path, **overrides: Any) -> Path:
    data = write_jsonl(folder / "data.jsonl", sample_rows("text-generation"))
    config = tiny_config(model, data, per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUMULATION,
                         num_train_epochs=EPOCHS, logging_steps=1, **overrides)
    path = folder / "config.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ddp_run(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Train once on two CPU processes through the real CLI and accelerate."""
    root = tmp_path_factory.mktemp("ddp")
    config = _config_file(root, tiny_causal_lm)
    env = clean_environment({"MODELFORGE_DEBUG_RANK_HASHES": str(root / "hashes")})
    result = subprocess.run(
        [str(MODELFORGE), "train", config.name, "--launcher", "accelerate",
         "--accelerate-config", str(EXAMPLES / "cpu-gloo.yaml"), "--json"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = sorted((root / "runs").iterdir())
    return SimpleNamespace(root=root, result=result, runs=runs, run=runs[0],
                           outcome=json.loads(result.stdout))


@pytest.mark.slow
def test_two_processes_write_one_run_folder_with_one_adapter(ddp_run: SimpleNamespace) -> None:
    assert len(ddp_run.runs) == 1, ddp_run.runs
    run = ddp_run.run
    assert Path(ddp_run.outcome["run_dir"]).resolve() == run.resolve()
    assert ddp_run.outcome["status"] == "finished"
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    # Nothing half-written, nothing written twice: one adapter, no temporary folders left.
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    adapters = sorted(p.relative_to(run) for p in run.rglob("adapter_model.safetensors"))
    checkpoints = sorted(p for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert adapters == [Path("adapter/adapter_model.safetensors"),
                        *(c.relative_to(run) / "adapter_model.safetensors" for c in checkpoints)]
    # Each process keeps its own random state in a checkpoint (what the trainer writes per rank).
    for checkpoint in checkpoints:
        assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]


@pytest.mark.slow
def test_both_processes_end_with_the_same_trained_adapter(ddp_run: SimpleNamespace) -> None:
    hashes = {path.name: path.read_text().split() for path in sorted((ddp_run.root / "hashes").iterdir())}
    assert sorted(hashes) == ["rank0.sha256", "rank1.sha256"]
    assert hashes["rank0.sha256"][0] == "adapter"
    assert hashes["rank0.sha256"] == hashes["rank1.sha256"]
    # And it is a trained adapter: LoRA starts with B = 0, training moved it.
    from safetensors.numpy import load_file

    weights = load_file(str(ddp_run.run / "adapter" / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(abs(w).max() > 0 for w in lora_b)


@pytest.mark.slow
def test_step_count_and_manifest_follow_the_effective_batch_size(ddp_run: SimpleNamespace) -> None:
    manifest = json.loads((ddp_run.run / "manifest.json").read_text())
    assert manifest["effective_batch_size"] == BATCH * ACCUMULATION * PROCESSES == 16
    assert manifest["hardware"]["processes"] == PROCESSES
    train_rows = manifest["data"]["train_rows"]
    # The trainer's rounding: batches of BATCH rows, dealt out to the processes (the last
    # process's share padded to an even count), then grouped by ACCUMULATION.
    batches = math.ceil(train_rows / BATCH)
    per_process = math.ceil(batches / PROCESSES)
    expected = EPOCHS * math.ceil(per_process / ACCUMULATION)
    assert ddp_run.outcome["metrics"]["global_step"] == expected
    assert expected < EPOCHS * math.ceil(batches / ACCUMULATION)  # what one process would take
    status = json.loads((ddp_run.run / "status.json").read_text())
    assert status["global_step"] == expected


@pytest.mark.slow
def test_only_the_main_process_reports(ddp_run: SimpleNamespace) -> None:
    stderr = ddp_run.result.stderr
    # The launcher prints the command it ran.
    assert "running: " in stderr and "accelerate.commands.launch --config_file" in stderr
    assert "-m modelforge_core train config.json --json" in stderr
    assert stderr.count("effective batch size: 16 (4 per device × 2 accumulation steps × 2 processes)") == 1
    assert stderr.count("run folder: ") == 1
    assert stderr.count("before: eval_loss") == 1
    # One JSON object on stdout (json.loads in the fixture fails on two), one log line per step.
    records = [json.loads(line) for line in (ddp_run.run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, ddp_run.outcome["metrics"]["global_step"] + 1))
    # Evaluation is gathered over both processes' shares, and the adapter learned.
    metrics = json.loads((ddp_run.run / "metrics.json").read_text())
    assert metrics["after"]["eval_loss"] < metrics["before"]["eval_loss"]


# --- the launcher, without training ------------------------------------------------------------

def test_launcher_builds_the_accelerate_command() -> None:
    plain = accelerate_command(["cfg.json", "--json"], num_processes=4, accelerate_config=None)
    assert plain[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert plain[plain.index("--num_processes") + 1] == "4" and "--multi_gpu" in plain
    assert plain[-5:] == ["-m", "modelforge_core", "train", "cfg.json", "--json"]
    single = accelerate_command(["cfg.json"], num_processes=None, accelerate_config=None)
    assert "--multi_gpu" not in single and single[single.index("--num_processes") + 1] == "1"
    configured = accelerate_command(["cfg.json"], num_processes=None, accelerate_config=Path("fsdp.yaml"))
    assert configured[3:5] == ["--config_file", "fsdp.yaml"] and "--num_processes" not in configured
    overridden = accelerate_command(["cfg.json"], num_processes=1, accelerate_config=Path("fsdp.yaml"))
    assert overridden[3:7] == ["--config_file", "fsdp.yaml", "--num_processes", "1"]


def test_launcher_forwards_every_train_option_but_its_own() -> None:
    from modelforge_core.cli.train import train

    context = train.make_context("train", ["cfg.yaml", "--set", "seed=3", "--set", "lora_r=8", "--json", "--quiet",
                                           "--launcher", "accelerate", "--num-processes", "2", "--force"])
    assert forwarded_arguments(train, context.params, drop=LAUNCHER_OPTIONS) == [
        "cfg.yaml", "--set", "seed=3", "--set", "lora_r=8", "--json", "--quiet", "--force"]
    resumed = train.make_context("train", ["--resume", "runs/r1", "--launcher", "accelerate",
                                           "--accelerate-config", "fsdp.yaml"])
    assert forwarded_arguments(train, resumed.params, drop=LAUNCHER_OPTIONS) == ["--resume", "runs/r1"]


def test_example_configs_are_accelerate_configs() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert names == ["cpu-gloo.yaml", "deepspeed-zero2.yaml", "deepspeed-zero3.yaml", "fsdp.yaml", "multi-gpu.yaml"]
    loaded = {name: load_config_from_file(str(EXAMPLES / name)) for name in names}
    fsdp = loaded["fsdp.yaml"].fsdp_config
    assert fsdp["fsdp_use_orig_params"] is True and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert loaded["deepspeed-zero2.yaml"].deepspeed_config["zero_stage"] == 2
    assert loaded["deepspeed-zero3.yaml"].deepspeed_config["zero_stage"] == 3
    for config in loaded.values():  # precision comes from the ModelForge config
        assert str(config.mixed_precision) in ("no", "PrecisionType.NO")
    assert plan_from_accelerate_config(EXAMPLES / "fsdp.yaml", None)[:2] == (2, "fsdp")
    assert plan_from_accelerate_config(EXAMPLES / "deepspeed-zero3.yaml", 4)[:2] == (4, "zero3")
    assert plan_from_accelerate_config(EXAMPLES / "deepspeed-zero2.yaml", None)[:2] == (2, None)
    assert plan_from_accelerate_config(None, 3) == (3, None, "MULTI_GPU")


@pytest.mark.parametrize(("example", "overrides", "message"), [
    ("fsdp.yaml", ["--set", "use_4bit=true", "--set", "strategy=qlora"],
     "use_4bit cannot be combined with FSDP: sharding a 4-bit bitsandbytes base needs its weights stored in "
     "the compute dtype (bnb_4bit_quant_storage), which the huggingface provider does not set"),
    ("deepspeed-zero3.yaml", ["--set", "use_8bit=true"],
     "use_8bit cannot be combined with DeepSpeed ZeRO-3: 8-bit bitsandbytes weights cannot be sharded"),
    ("deepspeed-zero2.yaml", [], "asks for DeepSpeed, which is not installed in this Python environment: "
                                 "pip install deepspeed"),
    ("fsdp.yaml", [], "asks for FSDP, which needs GPUs, and this machine has none"),
])
def test_impossible_combinations_are_refused_before_launching(example: str, overrides: list[str], message: str,
                                                               tiny_causal_lm: Path, tmp_path: Path) -> None:
    config = _config_file(tmp_path, tiny_causal_lm)
    result = subprocess.run([str(MODELFORGE), "train", str(config), *overrides, "--launcher", "accelerate",
                             "--accelerate-config", str(EXAMPLES / example)],
                            cwd=tmp_path, env=clean_environment(), capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 3, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "running:" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_launcher_options_need_the_launcher(tmp_path: Path) -> None:
    result = subprocess.run([str(MODELFORGE), "train", "cfg.json", "--num-processes", "2"], cwd=tmp_path,
                            env=clean_environment(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--num-processes and --accelerate-config need --launcher accelerate" in result.stderr


UNSLOTH_REFUSAL = ("provider unsloth cannot run on 2 processes: unsloth trains in a single process only (it does not "
                   "support multi-GPU data parallel training under accelerate/torchrun); train in one process "
                   "(no --launcher, or --num-processes 1), or set provider to huggingface")


def test_unsloth_on_several_processes_is_refused_by_the_orchestrator(tiny_causal_lm: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``accelerate launch`` (WORLD_SIZE=2), before any data or model is touched."""
    from modelforge_core.config import resolve_config
    from modelforge_core.errors import EnvironmentProblem
    from modelforge_core.orchestrate import train

    assert scaling_problem({"provider": "unsloth"}, processes=1) is None
    resolved = resolve_config(json.loads(_config_file(tmp_path, tiny_causal_lm).read_text()), base_dir=tmp_path)
    # The config as it resolves where unsloth is installed (here it is not, which validation says first).
    resolved.data["provider"] = "unsloth"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(EnvironmentProblem) as refused:
        train(resolved, runs_root=tmp_path / "runs")
    assert str(refused.value) == UNSLOTH_REFUSAL
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not (UNSLOTH_BIN / "modelforge").exists(), reason="needs .venv-unsloth (make unsloth-env)")
def test_unsloth_on_several_processes_is_refused_by_the_launcher(tiny_causal_lm: Path, tmp_path: Path) -> None:
    """Through the real CLI of the environment where unsloth is installed; nothing is launched."""
    config = _config_file(tmp_path, tiny_causal_lm, provider="unsloth")
    result = subprocess.run([str(UNSLOTH_BIN / "modelforge"), "train", str(config), "--launcher", "accelerate",
                             "--num-processes", "2"], cwd=tmp_path, env=clean_environment(),
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 3, result.stderr
    assert f"error: {UNSLOTH_REFUSAL}" in result.stderr
    assert "running:" not in result.stderr and not (tmp_path / "runs").exists()


CHILD = """
import pathlib, signal, sys, time
here = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    with open(here / "signals", "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
(here / "ready").write_text("ready")
time.sleep(60)
sys.exit(0)
"""


def test_launcher_passes_ctrl_c_to_its_child_once_and_returns_130(tmp_path: Path) -> None:
    """The launcher's own process gets the SIGINT (as from a terminal); the child, in its own
    session, gets it from the launcher, once."""

    def interrupt_when_ready() -> None:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Thread(target=interrupt_when_ready)
    timer.start()
    returncode = run_launcher([sys.executable, "-c", CHILD, str(tmp_path)])
    timer.join()
    assert returncode == 130
    assert (tmp_path / "signals").read_text() == "SIGINT\n"


def test_launcher_returns_the_child_exit_code() -> None:
    assert run_launcher([sys.executable, "-c", "import sys; sys.exit(5)"]) == 5
    assert run_launcher([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]) == 143
