"""Issue 22 with real trainings of the tiny model: one writer per run folder (two real
processes), signals from the moment a run says ``running``, final metrics that mean the same
however many times a run was interrupted, damaged run folders, an unwritable run folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge_core import hookimpl
from modelforge_core.testing.pytest_plugin import tiny_config

pytestmark = pytest.mark.slow

MODELFORGE = [sys.executable, "-m", "modelforge_core"]
#: Twelve steps; losses logged every 5, so interruptions fall between two logs.
STEPS = 12


class Stopper:
    """A lifecycle-hook plugin that sends this process a SIGINT when a given step is logged,
    as a user pressing Ctrl-C would (the core then stops at the next step end)."""

    def __init__(self, *steps: int, action: Any = None) -> None:
        self.steps = set(steps)
        self.action = action

    @hookimpl
    def on_log(self, run: Any, step: int, logs: Any) -> None:
        if step in self.steps and "loss" in logs:
            self.steps.discard(step)
            if self.action is not None:
                self.action(run)
            else:
                os.kill(os.getpid(), signal.SIGINT)


def plugins_with(plugin: object | None) -> Any:
    from modelforge_core.plugins import load_plugins

    return load_plugins(extra=[("stopper", plugin)] if plugin is not None else [])


@pytest.fixture(scope="module")
def setup(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from modelforge_core.testing.datasets import text_generation_rows, write_jsonl

    root = tmp_path_factory.mktemp("reliability-runs")
    data = write_jsonl(root / "io.jsonl", text_generation_rows("io"))
    return {"root": root, "data": data, "model": tiny_causal_lm}


def train(setup: dict[str, Any], out: Path, *, plugin: object | None = None, resume: bool = False,
          **overrides: Any) -> Any:
    from modelforge_core.config import resolve_config
    from modelforge_core.orchestrate import train as run_training
    from modelforge_core.runs import RunDir
    from modelforge_core.training import Display

    plugins = plugins_with(plugin)
    if resume:
        resolved = resolve_config(RunDir.open(out).config(), plugins=plugins, base_dir=out)
        return run_training(resolved, plugins=plugins, resume=out, display=Display(enabled=False))
    config = tiny_config(setup["model"], setup["data"], **{"max_steps": STEPS, "logging_steps": 5, "eval_steps": 1000,
                                                           "save_steps": 1000, "output_dir": str(out), **overrides})
    return run_training(resolve_config(config, plugins=plugins, base_dir=setup["root"]), plugins=plugins,
                        display=Display(enabled=False))


@pytest.fixture(scope="module")
def uninterrupted(setup: dict[str, Any]) -> Any:
    """The reference run, also the finished run that the damaged-folder tests copy."""
    return train(setup, setup["root"] / "uninterrupted")


def _status(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "status.json").read_text()))


# --- final metrics -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stops", [(5,), (1, 10)], ids=["once", "twice"])
def test_resumed_metrics_equal_an_uninterrupted_run(stops: tuple[int, ...], setup: dict[str, Any],
                                                    uninterrupted: Any) -> None:
    from modelforge_core.training import Interrupted

    out = setup["root"] / f"stopped-{len(stops)}"
    with pytest.raises(Interrupted):
        train(setup, out, plugin=Stopper(stops[0]))
    status = _status(out)
    assert status["status"] == "interrupted" and status["global_step"] == stops[0] + 1  # the real step
    for stop in stops[1:]:
        with pytest.raises(Interrupted):
            train(setup, out, plugin=Stopper(stop), resume=True)
        assert _status(out)["global_step"] == stop + 1
    # A process killed while saving the adapter left its temporary folder: never reused, removed.
    stale = out / ".adapter.tmp-999999"
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"partial")
    outcome = train(setup, out, resume=True)
    expected, got = uninterrupted.metrics, outcome.metrics
    assert got["global_step"] == expected["global_step"] == STEPS
    assert got["after"]["train_loss"] == pytest.approx(expected["after"]["train_loss"], rel=1e-4)
    assert got["after"]["eval_loss"] == pytest.approx(expected["after"]["eval_loss"], rel=1e-4)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["global_step"] == STEPS and saved["after"]["train_loss"] == got["after"]["train_loss"]
    assert not stale.exists() and (out / "adapter" / "adapter_model.safetensors").stat().st_size > 1000
    assert _status(out)["status"] == "finished"


def test_sigint_at_the_last_step_finishes_the_run(setup: dict[str, Any], uninterrupted: Any) -> None:
    out = setup["root"] / "last-step"
    outcome = train(setup, out, plugin=Stopper(STEPS - 1), logging_steps=1)
    assert outcome.status == "finished" and _status(out)["status"] == "finished"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert outcome.metrics["global_step"] == STEPS
    assert outcome.metrics["after"]["train_loss"] == pytest.approx(uninterrupted.metrics["after"]["train_loss"],
                                                                   rel=1e-4)


# --- an unwritable run folder ----------------------------------------------------------------------

def test_run_folder_failing_mid_training_ends_with_a_clear_status(setup: dict[str, Any]) -> None:
    from modelforge_core.errors import RunError

    def break_log(run: Any) -> None:  # the log file can no longer be appended to
        log = Path(run.directory) / "log.jsonl"
        log.unlink()
        log.mkdir()

    out = setup["root"] / "unwritable"
    with pytest.raises(RunError, match="no longer writable") as failed:
        train(setup, out, plugin=Stopper(5, action=break_log))
    assert "log.jsonl" in str(failed.value)
    status = _status(out)
    assert status["status"] == "failed" and "log.jsonl" in status["error"]


# --- damaged run folders -----------------------------------------------------------------------------

def _safetensors_header_only(path: Path) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[: 8 + length + 10])


DAMAGE: dict[str, tuple[Any, str]] = {
    "empty-adapter": (lambda run: (run / "adapter" / "adapter_model.safetensors").write_bytes(b""),
                      "adapter_model.safetensors is damaged: it is empty"),
    "truncated-adapter": (lambda run: _safetensors_header_only(run / "adapter" / "adapter_model.safetensors"),
                          "is damaged: it is truncated"),
    "cut-header": (lambda run: (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\xff" * 20),
                   "is damaged"),
    "broken-adapter-config": (lambda run: (run / "adapter" / "adapter_config.json").write_text('{"peft_type": '),
                              "adapter_config.json is damaged"),
    "foreign-adapter-config": (lambda run: (run / "adapter" / "adapter_config.json").write_text("[]"),
                               "not a peft adapter config"),
    "broken-run-config": (lambda run: (run / "config.json").write_text('{"config": {'), "config.json is damaged"),
    "empty-run-config": (lambda run: (run / "config.json").write_text(""), "it is empty"),
    "fifo-run-config": (lambda run: ((run / "config.json").unlink(), os.mkfifo(run / "config.json")),
                        "FIFO"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["generate", "evaluate", "export"])
def test_damaged_run_folders_get_one_sentence(command: str, damage: str, setup: dict[str, Any],
                                              uninterrupted: Any, tmp_path: Path) -> None:
    from modelforge_core.cli import main

    run = tmp_path / "run"
    shutil.copytree(uninterrupted.run_dir, run)
    breaker, expected = DAMAGE[damage]
    breaker(run)
    args = {"generate": ["generate", str(run), "--prompt", "hi"], "evaluate": ["evaluate", str(run)],
            "export": ["export", str(run), "--merge"]}[command]
    result = CliRunner().invoke(main, args, obj={})
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and expected in result.output, result.output
    assert len(result.output.strip().splitlines()) <= 3, result.output


def test_a_broken_base_model_or_a_model_folder_gets_one_sentence(setup: dict[str, Any], uninterrupted: Any,
                                                                 tmp_path: Path) -> None:
    from modelforge_core.cli import main

    model = tmp_path / "model"
    shutil.copytree(setup["model"], model)
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    run = tmp_path / "run"
    shutil.copytree(uninterrupted.run_dir, run)
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["model_name"] = str(model)
    (run / "config.json").write_text(json.dumps(saved))
    for args, expected in ((["generate", str(run), "--prompt", "hi"], "cannot load"),
                           (["generate", str(setup["model"]), "--prompt", "hi"], "is a model folder"),
                           (["evaluate", str(setup["model"])], "is a model folder"),
                           (["train", "--resume", str(setup["model"])], "is a model folder")):
        result = CliRunner().invoke(main, args, obj={})
        assert result.exit_code != 0 and isinstance(result.exception, SystemExit), (args, repr(result.exception))
        assert expected in result.output and "Traceback" not in result.output, result.output


def test_resume_of_damaged_runs_gets_one_sentence(setup: dict[str, Any], uninterrupted: Any, tmp_path: Path) -> None:
    from modelforge_core.cli import main
    from modelforge_core.training import Interrupted

    base = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        train(setup, base, plugin=Stopper(5))
    cases = {
        "no-manifest": (lambda run: (run / "manifest.json").unlink(), "has no manifest.json"),
        "broken-manifest": (lambda run: (run / "manifest.json").write_text("{"), "manifest.json is damaged"),
        "manifest-without-data": (lambda run: (run / "manifest.json").write_text("{}"), "no data fingerprint"),
        # A garbage status.json says nothing: the checkpoint and the manifest decide, it resumes.
        "broken-status": (lambda run: (run / "status.json").write_text("\x00"), '"status": "finished"'),
        # A FIFO named metrics.json is never opened (it would block): the resume finishes.
        "fifo-metrics": (lambda run: ((run / "metrics.json").unlink(), os.mkfifo(run / "metrics.json")),
                         '"status": "finished"'),
    }
    for name, (breaker, expected) in cases.items():
        run = tmp_path / name
        shutil.copytree(base, run)
        breaker(run)
        result = CliRunner().invoke(main, ["train", "--resume", str(run), "--json"], obj={})
        assert "Traceback" not in result.output, (name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (name, repr(result.exception))
        assert expected in result.output, (name, result.output)


# --- one writer per run folder, and signals, with real processes -------------------------------------

def _wait(predicate: Any, process: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()}")
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("the training did not get there in time")


def _logged_step(log: Path) -> int:
    if not log.is_file():
        return 0
    return max([json.loads(line).get("step", 0) for line in log.read_text().splitlines() if line.strip()] or [0])


def _running(run: Path) -> bool:
    try:
        return _status(run).get("status") == "running"
    except (OSError, ValueError):
        return False


def _snapshot(run: Path) -> dict[str, Any]:
    return {path.relative_to(run).as_posix(): path.stat().st_mtime_ns for path in run.rglob("*")
            if path.name not in ("log.jsonl", ".lock") and "checkpoints" not in path.parts and "logs" not in path.parts}


def test_a_second_writer_is_refused_and_changes_nothing(setup: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(setup["model"], setup["data"], output_dir=str(out), max_steps=2000,
                                             logging_steps=1, eval_steps=100_000, save_steps=3)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([*MODELFORGE, "train", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        _wait(lambda: _logged_step(out / "log.jsonl") >= 4, first)
        before = _snapshot(out)
        status_before = _status(out)
        second = [subprocess.Popen([*MODELFORGE, "train", "--resume", str(out)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env),
                  subprocess.Popen([*MODELFORGE, "train", str(config)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)]
        outputs = [process.communicate(timeout=180) for process in second]
        assert second[0].returncode == 1 and "Traceback" not in outputs[0][1]
        assert f"is being written by another training (process {first.pid})" in outputs[0][1]
        assert second[1].returncode == 1 and "exists already and is not empty" in outputs[1][1]
        assert first.poll() is None, "the first training goes on"
        assert _snapshot(out) == before or set(_snapshot(out)) - set(before) <= {"metrics.json"}
        status_now = _status(out)
        assert status_now["pid"] == status_before["pid"] == first.pid and status_now["status"] == "running"
        assert not (out / "error.txt").exists()
        # Two Ctrl-C: the second stops at once, still exit 130 and "interrupted".
        first.send_signal(signal.SIGINT)
        time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    # 130, or killed by the SIGINT itself when it lands after Python began tearing the finished
    # process down (its handlers are gone then): a shell reports both as exit status 130.
    assert first.returncode in (130, -signal.SIGINT), stderr
    assert "Traceback" not in stderr and _status(out)["status"] == "interrupted"


def test_sigterm_as_soon_as_the_run_says_running_is_a_graceful_stop(setup: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(setup["model"], setup["data"], output_dir=str(out), max_steps=50)))
    process = subprocess.Popen([*MODELFORGE, "train", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait(lambda: _running(out), process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    status = _status(out)
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM", status


# --- validate says OK, then training: what only the tokenizer knows ----------------------------------

def test_rows_longer_than_max_seq_length_are_named_before_training(setup: dict[str, Any], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from modelforge_core.cli import main

    rows = [{"input": "word " * 60 + str(i), "output": "answer"} for i in range(12)]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "c.json").write_text(json.dumps(tiny_config(setup["model"], tmp_path / "long.jsonl",
                                                            max_seq_length=16, max_steps=3)))
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["validate", "c.json", "--data"], obj={}).exit_code == 0  # only rows, no tokenizer
    result = CliRunner().invoke(main, ["train", "c.json"], obj={})
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "max_seq_length: every one of the" in result.output and "before its answer starts" in result.output
