"""ModelForge logger plugin: every training as a Weights & Biases run.

Enabled by a ``"wandb"`` object in the config (``"wandb": {}`` uses the defaults). Built on the
public lifecycle hooks only, with the same mapping as the MLflow plugin:

- ``on_run_start``: a W&B run (id kept in ``<run>/wandb.json``, so a resumed training continues
  it) with the resolved config as its config and each value's source under ``_sources``;
- ``on_log`` / ``on_evaluate``: every value with its step (evaluations during training under
  their own names; before and after training as ``before/<name>`` and ``after/<name>`` in the
  run's summary, since W&B's history only moves forward);
- ``on_run_end``: ``config.json``, ``manifest.json`` and ``metrics.json`` as an artifact, the
  status in the summary (``modelforge/status``) and as the exit code (finished 0, else 1).

``"mode": "offline"`` (or ``WANDB_MODE=offline``) writes the run under ``<run>/wandb/`` for a
later ``wandb sync``. A W&B service that cannot start or be reached costs one warning; the
training goes on (see ``modelforge_core.tracking.Guard``).
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import Logger, RunInfo
from modelforge_core.tracking import Guard, flat_config, read_state, write_state

NAME = "wandb"
ARTIFACTS = ("config.json", "manifest.json", "metrics.json")
EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 1}


class WandbLogger(Logger):
    name: ClassVar[str] = NAME
    description: ClassVar[str] = "Log every training to Weights & Biases (online or offline)."
    options_schema: ClassVar[Mapping[str, Any] | None] = {
        "description": "Log this training to Weights & Biases (the object's presence enables it).",
        "properties": {
            "project": {"type": "string", "minLength": 1, "default": "modelforge",
                        "description": "The W&B project.", "examples": ["summaries"]},
            "entity": {"type": ["string", "null"], "minLength": 1, "default": None,
                       "description": "The team or user; null: your default entity.", "examples": ["my-team", None]},
            "mode": {"type": ["string", "null"], "enum": ["online", "offline", "disabled", None], "default": None,
                     "description": "online, offline (write locally, `wandb sync` later) or disabled; null: "
                                    "WANDB_MODE, else online.",
                     "examples": ["offline", None]},
            "run_name": {"type": ["string", "null"], "minLength": 1, "default": None,
                         "description": "The W&B run's name; null: the run folder's name.",
                         "examples": ["lr-sweep-3", None]},
            "group": {"type": ["string", "null"], "minLength": 1, "default": None,
                      "description": "Group runs together in the W&B UI.", "examples": ["sweep-1", None]},
            "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "default": [],
                     "description": "Tags of the W&B run.", "examples": [["baseline"]]},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 300, "default": 30,
                          "description": "Seconds W&B may take to start the run; after that the run goes on "
                                         "without W&B.", "examples": [30]},
        },
    }

    def check_environment(self) -> str | None:
        if importlib.util.find_spec("wandb") is None:
            return "the wandb logger needs the W&B client: pip install wandb"
        return None


class Session:
    """One training's W&B run."""

    def __init__(self, run: RunInfo, options: Mapping[str, Any]) -> None:
        self.run = run
        self.options = options
        self.guard = Guard(NAME, run.name)
        self.handle: Any = None

    def start(self) -> None:
        import wandb

        previous = read_state(self.run, NAME)
        resuming = bool(previous.get("run_id") and self.run.resumed_from)
        run_id = str(previous["run_id"]) if resuming else uuid.uuid4().hex[:12]
        flat = flat_config(self.run)
        config = {key: value for key, (value, _) in flat.items()}
        config["_sources"] = {key: source for key, (_, source) in flat.items()}
        self.handle = self.guard.call(
            "starting the run", wandb.init, project=self.options["project"], entity=self.options.get("entity"),
            name=self.options.get("run_name") or self.run.name, group=self.options.get("group"),
            tags=list(self.options.get("tags") or []), mode=self.options.get("mode"), dir=str(self.run.directory),
            id=run_id, resume="allow", config=None if resuming else config, reinit="create_new",
            settings=wandb.Settings(init_timeout=float(self.options["timeout_s"]), silent=True,
                                    console="off", x_disable_stats=True))
        if self.handle is not None:
            write_state(self.run, NAME, {"run_id": run_id, "project": self.options["project"]})

    def log(self, values: Mapping[str, float], step: int) -> None:
        if self.handle is not None:
            numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
            self.guard.call("logging metrics", self.handle.log, numbers, step=int(step))

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.handle is not None:
            self.guard.call("updating the summary", self.handle.summary.update, dict(values))

    def end(self, status: str, metrics: Mapping[str, Any], error: str | None) -> None:
        if self.handle is None:
            return
        import wandb

        summary: dict[str, Any] = {"modelforge/status": status}
        if isinstance(metrics.get("best_step"), int):
            summary["modelforge/best_step"] = metrics["best_step"]
        if error:
            summary["modelforge/error"] = error[:5000]
        self.summary(summary)
        files = [Path(self.run.directory) / name for name in ARTIFACTS if (Path(self.run.directory) / name).is_file()]
        if files:
            def upload() -> None:
                artifact = wandb.Artifact(f"run-{self.handle.id}", type="modelforge-run")
                for path in files:
                    artifact.add_file(str(path))
                self.handle.log_artifact(artifact)

            self.guard.call("uploading the run files", upload)
        # finish even when an earlier call failed: it releases the W&B service.
        try:
            self.handle.finish(exit_code=EXIT_CODES.get(status, 1))
        except Exception as exc:  # never fail the training for the tracker
            self.guard.call("finishing the run", _raise, exc)


def _raise(exc: BaseException) -> None:
    raise exc


_sessions: dict[str, Session] = {}


@hookimpl
def register_loggers(register: Callable[[Logger], None]) -> None:
    register(WandbLogger())


@hookimpl
def on_run_start(run: RunInfo) -> None:
    if not Logger.enabled_in(run.config, NAME):
        return
    session = Session(run, run.config[NAME])
    _sessions[str(run.directory)] = session
    session.start()


@hookimpl
def on_log(run: RunInfo, step: int, logs: Mapping[str, float]) -> None:
    session = _sessions.get(str(run.directory))
    if session is not None:
        # Evaluation results come through on_evaluate (with the perplexity the core adds).
        session.log({k: v for k, v in logs.items() if not k.startswith("eval_")}, step)


@hookimpl
def on_evaluate(run: RunInfo, stage: str, metrics: Mapping[str, float], step: int) -> None:
    session = _sessions.get(str(run.directory))
    if session is None:
        return
    if stage == "during":
        session.log(metrics, step)
    else:
        session.summary({f"{stage}/{k}": v for k, v in metrics.items()} | {f"{stage}/step": step})


@hookimpl
def on_run_end(run: RunInfo, status: str, metrics: Mapping[str, Any], error: str | None) -> None:
    session = _sessions.pop(str(run.directory), None)
    if session is not None:
        session.end(status, metrics, error)
