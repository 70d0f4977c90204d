"""Early stopping (modelforge_core/earlystop.py) and the logger plugins in one short training:
the run stops when its metric stops improving and saves the best checkpoint's adapter; W&B in
offline mode records its metrics in the run folder; an MLflow server on a dead port costs one
warning and nothing else."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.config import resolve_config
from modelforge_core.errors import ValidationFailed
from modelforge_core.runlist import summarize
from modelforge_core.testing.pytest_plugin import tiny_config


def _problems(config: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as caught:
        resolve_config(config, base_dir=tmp_path)
    return {p.path: p.message for p in caught.value.problems}


def _base(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    data = tmp_path / "d.jsonl"
    data.write_text('{"input": "a", "output": "b"}\n' * 10)
    return tiny_config(tmp_path, data, **overrides)


def test_early_stopping_metric_must_be_one_the_components_report(tmp_path: Path) -> None:
    found = _problems(_base(tmp_path, early_stopping_metric="rougeL"), tmp_path)
    assert "early_stopping_metric" in found
    assert "sft strategy reports during training: eval_loss, eval_perplexity" in found["early_stopping_metric"]
    found = _problems(_base(tmp_path, strategy="dpo", early_stopping_metric="eval_perplexity"), tmp_path)
    assert "eval_rewards/accuracies" in found["early_stopping_metric"]
    # The components' own metrics pass, with dpo's reward among them.
    resolve_config(_base(tmp_path, early_stopping_metric="eval_perplexity"), base_dir=tmp_path)


def test_early_stopping_needs_evaluations_and_a_checkpoint_for_each(tmp_path: Path) -> None:
    found = _problems(_base(tmp_path, early_stopping_metric="eval_loss", eval_split=0), tmp_path)
    assert found["eval_split"].startswith("Early stopping watches evaluations during training")
    found = _problems(_base(tmp_path, early_stopping_metric="eval_loss", save_steps=50), tmp_path)
    assert "leave save_steps null" in found["save_steps"]


def test_early_stopping_refuses_eval_steps_beyond_the_training(tmp_path: Path) -> None:
    from modelforge_core.earlystop import check_evaluations

    config = resolve_config(_base(tmp_path, early_stopping_metric="eval_loss", max_steps=20, eval_steps=50),
                            base_dir=tmp_path)
    with pytest.raises(ValidationFailed) as caught:
        check_evaluations(config, train_rows=8)
    [problem] = caught.value.problems
    assert problem.path == "eval_steps" and "more than the 20 optimizer steps" in problem.message
    assert caught.value.exit_code == 2
    check_evaluations({**config, "eval_steps": 5}, train_rows=8)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nothing listens there


@pytest.fixture(scope="module")
def stopped_run(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One training, to 40 steps at most, watching eval_loss with direction "max": the loss
    falls, so the first evaluation (step 2) stays the best and patience 2 stops it at step 6."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    import os

    from modelforge_core.orchestrate import train
    from modelforge_core.testing.datasets import sample_rows, write_jsonl
    from modelforge_core.training import Display

    folder = tmp_path_factory.mktemp("early-stop")
    data = write_jsonl(folder / "data.jsonl", sample_rows("text-generation"))
    config = tiny_config(tiny_causal_lm, data, max_steps=40, eval_steps=2, logging_steps=2,
                         early_stopping_metric="eval_loss", early_stopping_direction="max",
                         early_stopping_patience=2, wandb={"mode": "offline", "project": "tests"},
                         mlflow={"tracking_uri": f"http://127.0.0.1:{_dead_port()}"})
    os.environ.pop("WANDB_MODE", None)
    resolved = resolve_config(config, base_dir=folder)
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        outcome = train(resolved, display=Display(enabled=True, tty=False), runs_root=folder / "runs")
    outcome.stderr = stderr.getvalue()
    return outcome


@pytest.mark.slow
def test_early_stopping_stops_and_saves_the_best_adapter(stopped_run: Any) -> None:
    from safetensors.torch import load_file

    run_dir: Path = stopped_run.run_dir
    assert stopped_run.status == "finished"
    assert stopped_run.metrics["global_step"] == 6  # of max_steps 40
    evals = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    during = {r["step"]: r["eval_loss"] for r in evals if "eval_loss" in r and r.get("stage") is None and r["step"]}
    assert sorted(during) == [2, 4, 6]
    best = max(during, key=during.__getitem__)  # direction "max"
    assert best == 2
    status = json.loads((run_dir / "status.json").read_text())
    assert status["stop_reason"] == "early_stopping" and status["best_step"] == 2 and status["stopped_at"] == 6
    assert "did not improve" in status["stop_message"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_step"] == 2
    assert metrics["after"]["eval_loss"] == pytest.approx(during[2], rel=1e-4)
    # The saved adapter is the step-2 checkpoint's, not the last one's.
    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    best_weights = load_file(run_dir / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    last_weights = load_file(run_dir / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors")
    assert saved.keys() == best_weights.keys()
    assert all(saved[k].equal(best_weights[k]) for k in saved)
    assert not all(saved[k].equal(last_weights[k]) for k in saved)
    # The progress output says why it stopped; `modelforge runs` shows it.
    assert "early stopping at step 6: eval_loss did not improve" in stopped_run.stderr
    summary = summarize(run_dir)
    assert summary.stop_reason == "early_stopping" and summary.best_step == 2
    from click.testing import CliRunner

    from modelforge_core.cli import main

    listed = CliRunner().invoke(main, ["runs", "--root", str(run_dir.parent)])
    assert listed.exit_code == 0, listed.output
    assert "stopped at step 6: early_stopping; adapter from the best step 2" in listed.output


def _wandb_records(path: Path) -> list[Any]:
    """The records of a W&B offline run file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending, records = 7, 32768, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _key(item: Any) -> str:
    return str(item.key or "/".join(item.nested_key))


@pytest.mark.slow
def test_wandb_offline_run_holds_the_metrics(stopped_run: Any) -> None:
    run_dir: Path = stopped_run.run_dir
    run_id = json.loads((run_dir / "wandb.json").read_text())["run_id"]
    [offline] = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    records = _wandb_records(offline / f"run-{run_id}.wandb")
    history: dict[int, dict[str, float]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            history[int(row["_step"])] = row
    logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r}
    assert losses and all(history[step]["loss"] == pytest.approx(loss) for step, loss in losses.items())
    assert [step for step in sorted(history) if "eval_loss" in history[step]] == [2, 4, 6]
    summary = {_key(item): json.loads(item.value_json) for record in records
               if record.WhichOneof("record_type") == "summary" for item in record.summary.update}
    assert summary["after/eval_loss"] == pytest.approx(stopped_run.metrics["after"]["eval_loss"])
    assert summary["modelforge/status"] == "finished" and summary["modelforge/best_step"] == 2
    [run_record] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {_key(item): json.loads(item.value_json) for item in run_record.config.update}
    assert config["early_stopping_metric"] == {"value": "eval_loss"} or config["early_stopping_metric"] == "eval_loss"
    [exit_record] = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


@pytest.mark.slow
def test_an_unreachable_mlflow_server_warns_once_and_the_training_goes_on(stopped_run: Any) -> None:
    warnings = [line for line in stopped_run.stderr.splitlines() if line.startswith("warning: mlflow:")]
    assert len(warnings) == 1 and "goes on without mlflow" in warnings[0]
    assert stopped_run.status == "finished"
    assert not (stopped_run.run_dir / "mlflow.json").exists()
