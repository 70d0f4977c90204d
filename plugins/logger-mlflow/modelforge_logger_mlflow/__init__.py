"""ModelForge logger plugin: every training as an MLflow run.

Enabled by an ``"mlflow"`` object in the config (``"mlflow": {}`` uses the defaults). Built on
the public lifecycle hooks only:

- ``on_run_start``: an MLflow run in the configured experiment, with the resolved config as
  params (flattened: ``dpo.beta``) and each value's source as a tag (``source.dpo.beta``); a
  resumed training continues the MLflow run whose id is in ``<run>/mlflow.json``;
- ``on_log``: every logged value with its step;
- ``on_evaluate``: evaluations during training under their own names (``eval_loss``), before
  and after training as ``before/<name>`` and ``after/<name>``, each with its step;
- ``on_run_end``: ``config.json``, ``manifest.json`` and ``metrics.json`` as artifacts, and the
  status: finished -> FINISHED, failed -> FAILED, interrupted -> KILLED.

A tracking server that cannot be reached costs one short request and one warning; the run goes
on untracked (see ``modelforge_core.tracking.Guard``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import Logger, RunInfo
from modelforge_core.tracking import Guard, flat_config, read_state, write_state

NAME = "mlflow"
#: ModelForge's run status -> MLflow's.
STATUSES = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
#: Files of the run folder uploaded as artifacts when the run ends.
ARTIFACTS = ("config.json", "manifest.json", "metrics.json")
#: MLflow's request settings the user set before the plugin loaded (those are left alone).
_USER_ENVIRONMENT = {v for v in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES") if v in os.environ}
MAX_PARAM_LENGTH = 6000  # MLflow refuses longer param values
BATCH = 100  # MLflow's limit of params per log_batch call


class MLflowLogger(Logger):
    name: ClassVar[str] = NAME
    description: ClassVar[str] = "Log every training to MLflow: params, metrics, artifacts, status."
    options_schema: ClassVar[Mapping[str, Any] | None] = {
        "description": "Log this training to MLflow (the object's presence enables it; {} uses the defaults).",
        "properties": {
            "tracking_uri": {
                "type": ["string", "null"], "minLength": 1, "default": None,
                "description": "The tracking server (http://host:5000) or store; null: MLFLOW_TRACKING_URI, "
                               "else MLflow's default (./mlruns).",
                "examples": ["http://127.0.0.1:5000", None]},
            "experiment": {
                "type": "string", "minLength": 1, "default": "modelforge",
                "description": "The experiment the run goes into (created when missing).",
                "examples": ["summaries"]},
            "run_name": {
                "type": ["string", "null"], "minLength": 1, "default": None,
                "description": "The MLflow run's name; null: the run folder's name.",
                "examples": ["lr-sweep-3", None]},
            "tags": {
                "type": "object", "additionalProperties": {"type": "string"}, "default": {},
                "description": "Tags set on the MLflow run.", "examples": [{"team": "nlp"}]},
            "timeout_s": {
                "type": "number", "exclusiveMinimum": 0, "maximum": 300, "default": 15,
                "description": "Seconds one request to the server may take (no retries): a server that "
                               "does not answer costs at most this once, then the run goes on untracked.",
                "examples": [15]},
        },
    }

    def check_environment(self) -> str | None:
        if importlib.util.find_spec("mlflow") is None:
            return "the mlflow logger needs the MLflow client: pip install mlflow-skinny"
        return None


class Session:
    """One training's MLflow run."""

    def __init__(self, run: RunInfo, options: Mapping[str, Any]) -> None:
        # Short, unretried requests: an unreachable server must not hold the training up.
        # (MLflow reads these from the environment; a value the user set wins.)
        wanted = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(float(options["timeout_s"])))),
                  "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        for variable, value in wanted.items():
            if variable not in _USER_ENVIRONMENT:
                os.environ[variable] = value
        from mlflow.tracking import MlflowClient

        self.run = run
        self.guard = Guard(NAME, run.name)
        self.client = MlflowClient(tracking_uri=options.get("tracking_uri") or None)
        self.run_id: str | None = None
        self.options = options

    def call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.guard.call(what, function, *args, **kwargs)

    def start(self) -> None:
        previous = read_state(self.run, NAME)
        if previous.get("run_id") and self.run.resumed_from:
            self.run_id = str(previous["run_id"])
            self.call("reopening the MLflow run", self.client.update_run, self.run_id, status="RUNNING")
            self.call("tagging the resumed run", self.client.set_tag, self.run_id, "modelforge.resumed_from",
                      self.run.resumed_from)
            return
        experiment = self.call("looking up the experiment", self.client.get_experiment_by_name,
                               self.options["experiment"])
        if self.guard.disabled:
            return
        experiment_id = (experiment.experiment_id if experiment is not None else
                         self.call("creating the experiment", self.client.create_experiment,
                                   self.options["experiment"]))
        if experiment_id is None:
            return
        tags = {**dict(self.options.get("tags") or {}), "modelforge.run_dir": str(self.run.directory),
                "modelforge.run_name": self.run.name}
        created = self.call("creating the run", self.client.create_run, experiment_id,
                            run_name=self.options.get("run_name") or self.run.name, tags=tags)
        if created is None:
            return
        self.run_id = created.info.run_id
        write_state(self.run, NAME, {"run_id": self.run_id, "experiment_id": experiment_id,
                                     "tracking_uri": self.client.tracking_uri})
        self.log_config()

    def log_config(self) -> None:
        from mlflow.entities import Param, RunTag

        flat = flat_config(self.run)
        params = [Param(key, _text(value)[:MAX_PARAM_LENGTH]) for key, (value, _) in flat.items()]
        tags = [RunTag(f"source.{key}", source) for key, (_, source) in flat.items()]
        for start in range(0, max(len(params), len(tags)), BATCH):
            self.call("logging the config", self.client.log_batch, self.run_id,
                      params=params[start:start + BATCH], tags=tags[start:start + BATCH])

    def metrics(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(f"{prefix}{key}", float(value), now, int(step)) for key, value in values.items()
                 if isinstance(value, (int, float)) and not math.isnan(value)]
        for start in range(0, len(batch), 1000):
            self.call("logging metrics", self.client.log_batch, self.run_id, metrics=batch[start:start + 1000])

    def end(self, status: str, metrics: Mapping[str, Any], error: str | None) -> None:
        if self.run_id is None:
            return
        for name in ARTIFACTS:
            path = Path(self.run.directory) / name
            if path.is_file():
                self.call(f"uploading {name}", self.client.log_artifact, self.run_id, str(path))
        if isinstance(metrics.get("best_step"), int):
            self.call("tagging the best step", self.client.set_tag, self.run_id, "modelforge.best_step",
                      str(metrics["best_step"]))
        stopped = metrics.get("early_stopping")
        if isinstance(stopped, Mapping) and stopped.get("stop_reason"):
            self.call("tagging the stop reason", self.client.set_tag, self.run_id, "modelforge.stop_reason",
                      str(stopped["stop_reason"]))
        if error:
            self.call("tagging the error", self.client.set_tag, self.run_id, "modelforge.error", error[:5000])
        self.call("ending the run", self.client.set_terminated, self.run_id, status=STATUSES.get(status, "FAILED"))


def _text(value: Any) -> str:
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value)
    return str(value)


#: The open sessions, by run folder (several runs may share a process: tests, the API server).
_sessions: dict[str, Session] = {}


def _session(run: RunInfo) -> Session | None:
    return _sessions.get(str(run.directory))


@hookimpl
def register_loggers(register: Callable[[Logger], None]) -> None:
    register(MLflowLogger())


@hookimpl
def on_run_start(run: RunInfo) -> None:
    if not Logger.enabled_in(run.config, NAME):
        return
    session = Session(run, run.config[NAME])
    _sessions[str(run.directory)] = session
    session.start()


@hookimpl
def on_log(run: RunInfo, step: int, logs: Mapping[str, float]) -> None:
    session = _session(run)
    if session is not None:
        # Evaluation results come through on_evaluate (with the perplexity the core adds).
        session.metrics({k: v for k, v in logs.items() if not k.startswith("eval_")}, step)


@hookimpl
def on_evaluate(run: RunInfo, stage: str, metrics: Mapping[str, float], step: int) -> None:
    session = _session(run)
    if session is not None:
        session.metrics(metrics, step, "" if stage == "during" else f"{stage}/")


@hookimpl
def on_run_end(run: RunInfo, status: str, metrics: Mapping[str, Any], error: str | None) -> None:
    session = _sessions.pop(str(run.directory), None)
    if session is not None:
        session.end(status, metrics, error)
