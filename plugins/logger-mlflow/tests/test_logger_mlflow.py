"""The MLflow logger against a real tracking server (``mlflow server``, SQLite backend store,
artifacts served by the server) on a loopback port: one server for the module, short trainings."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from modelforge_core import hookimpl
from modelforge_core.api import RunInfo
from modelforge_core.config import resolve_config
from modelforge_core.orchestrate import train
from modelforge_core.plugins import load_plugins
from modelforge_core.testing.pytest_plugin import tiny_config
from modelforge_core.training import Display, Interrupted

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination",
         str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310 - http only
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _config(model: Path, data: Path, url: str, experiment: str, **overrides: Any) -> dict[str, Any]:
    return tiny_config(model, data, max_steps=6, logging_steps=2, eval_steps=3,
                       mlflow={"tracking_uri": url, "experiment": experiment, "tags": {"team": "nlp"},
                               "timeout_s": 120}, **overrides)


def test_a_training_is_an_mlflow_run(mlflow_server: str, tiny_causal_lm: Path, sample_dataset: Any,
                                     tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    resolved = resolve_config(_config(tiny_causal_lm, sample_dataset(), mlflow_server, "one-run"),
                              overrides={"learning_rate": 0.002}, base_dir=tmp_path)
    outcome = train(resolved, display=Display(enabled=False), runs_root=tmp_path / "runs")
    assert outcome.status == "finished"

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("one-run")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == outcome.run_dir.name
    assert (outcome.run_dir / "mlflow.json").is_file()
    # The resolved config, flattened, each value with its source.
    params, tags = run.data.params, run.data.tags
    assert params["learning_rate"] == "0.002" and tags["source.learning_rate"] == "--set"
    assert params["lora_r"] == "16" and tags["source.lora_r"] == "api"
    assert params["seed"] == "42" and tags["source.seed"] == "default"
    assert params["mlflow.experiment"] == "one-run"
    assert tags["team"] == "nlp"
    # Every logged and evaluated metric with its step.
    loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    logged = [json.loads(line) for line in (outcome.run_dir / "log.jsonl").read_text("utf-8").splitlines()]
    # Every logging_steps step, and every checkpoint step (so train_loss survives a resume).
    assert loss_steps == sorted(r["step"] for r in logged if "loss" in r) and {2, 4, 6} <= set(loss_steps)
    eval_history = client.get_metric_history(run.info.run_id, "eval_loss")
    assert [m.step for m in eval_history] == [3, 6]
    after = client.get_metric_history(run.info.run_id, "after/eval_loss")
    assert [m.step for m in after] == [6] and after[0].value == pytest.approx(outcome.metrics["after"]["eval_loss"])
    before = client.get_metric_history(run.info.run_id, "before/eval_loss")
    assert [m.step for m in before] == [0] and before[0].value > after[0].value
    # The run folder's records as artifacts.
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"manifest.json", "metrics.json", "config.json"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path / "download"))
    assert Path(local).read_text() == (outcome.run_dir / "metrics.json").read_text()


class Interrupter:
    """Sends SIGINT to this process once the training logged step ``at``: a Ctrl-C."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.sent = False

    @hookimpl
    def on_log(self, run: RunInfo, step: int, logs: Mapping[str, float]) -> None:
        if step >= self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_and_resumed_training_is_one_mlflow_run(mlflow_server: str, tiny_causal_lm: Path,
                                                                sample_dataset: Any, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    plugins = load_plugins(extra=[("interrupter", Interrupter(at=2))])
    config = _config(tiny_causal_lm, sample_dataset(), mlflow_server, "resumed", save_steps=1000,
                     output_dir=str(tmp_path / "run"))
    resolved = resolve_config(config, plugins=plugins, base_dir=tmp_path)
    with pytest.raises(Interrupted):
        train(resolved, plugins=plugins, display=Display(enabled=False))
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("resumed")
    [first] = client.search_runs([experiment.experiment_id])
    assert first.info.status == "KILLED"
    [checkpoint] = (tmp_path / "run" / "checkpoints").glob("checkpoint-*")
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 2 <= stopped_at < 6

    outcome = train(resolved, plugins=load_plugins(), display=Display(enabled=False), resume=tmp_path / "run")
    assert outcome.status == "finished"
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [first.info.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["modelforge.resumed_from"] == f"checkpoint-{stopped_at}"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps[0] <= stopped_at < steps[-1] == 6  # logged before and after the interruption
    assert "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
