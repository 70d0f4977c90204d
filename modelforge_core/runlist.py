"""``modelforge runs``: every run under a runs folder, read from the run folders themselves.

There is no separate database: a run folder is the record (``config.json``, ``manifest.json``,
``status.json``, ``metrics.json``), so the list can never drift out of sync with what is on
disk. Reading it imports nothing heavy.

Status is what ``status.json`` says, with one correction: a run that says ``running`` but whose
training process (the ``pid`` in ``status.json``) no longer exists on this machine is shown as
``stale``. Its process died without writing a final status (killed with SIGKILL, out of memory,
a reboot); ``modelforge train --resume RUN_DIR`` continues it from its last checkpoint. A
folder without a readable ``status.json`` is ``unknown``.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .runs import CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, STATUS_FILE

#: Shown in the table, in this order, when a run reports them after training.
KEY_METRICS = ("eval_loss", "eval_perplexity", "rougeL", "rouge1", "exact_match", "f1",
               "rewards/accuracies", "eval_rewards/accuracies")

#: Where ``modelforge evaluate`` writes its results inside a run folder.
EVALUATIONS_DIR = "evaluations"


def _read(path: Path) -> Any:
    from .errors import RunError
    from .runs import read_json

    try:
        return read_json(path)  # a regular file only: a FIFO named status.json never blocks the list
    except (OSError, RunError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


@dataclass
class RunSummary:
    """One row of ``modelforge runs``."""

    path: Path
    status: str
    task: str | None
    strategy: str | None
    provider: str | None
    model: str | None
    started_at: str | None
    ended_at: str | None
    duration_s: float | None
    global_step: int | None
    metrics_before: dict[str, Any] = field(default_factory=dict)
    metrics_after: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None
    evaluations: int = 0
    merged: bool = False
    #: Why training stopped before its end (``"early_stopping"``), and the sentence that says so.
    stop_reason: str | None = None
    stop_message: str | None = None
    #: The step whose checkpoint became the adapter, when early stopping kept the best one.
    best_step: int | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def key_metrics(self) -> dict[str, float]:
        """The metrics worth a column: the first few of :data:`KEY_METRICS` the run has."""
        found = {k: float(self.metrics_after[k]) for k in KEY_METRICS
                 if isinstance(self.metrics_after.get(k), (int, float))}
        return dict(list(found.items())[:3])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": str(self.path), "status": self.status, "task": self.task,
            "strategy": self.strategy, "provider": self.provider, "model": self.model,
            "started_at": self.started_at, "ended_at": self.ended_at, "duration_s": self.duration_s,
            "global_step": self.global_step, "metrics": {"before": self.metrics_before, "after": self.metrics_after},
            "error": self.error, "note": self.note, "evaluations": self.evaluations, "merged": self.merged,
            "stop_reason": self.stop_reason, "stop_message": self.stop_message, "best_step": self.best_step,
        }


def effective_status(status: Mapping[str, Any] | None) -> tuple[str, str | None]:
    """The status to show and, for a stale run, why."""
    if not status or not isinstance(status.get("status"), str):
        return "unknown", "no readable status.json"
    name = str(status["status"])
    pid = status.get("pid")
    if name == "running" and isinstance(pid, int) and not process_alive(pid):
        return "stale", (f"status says running but process {pid} is gone; "
                         "resume it with `modelforge train --resume`")
    return name, None


def summarize(path: Path, *, now: datetime | None = None) -> RunSummary:
    """Read one run folder (missing or damaged files give empty fields, never an error)."""
    config = _dict(_dict(_read(path / CONFIG_FILE)).get("config"))
    manifest = _dict(_read(path / MANIFEST_FILE))
    status = _read(path / STATUS_FILE)
    metrics = _dict(_read(path / METRICS_FILE))
    shown, note = effective_status(status if isinstance(status, dict) else None)
    status = status if isinstance(status, dict) else {}
    started = _parse_time(status.get("started_at")) or _parse_time(manifest.get("created_at"))
    end_for_duration: datetime | None
    if shown == "running":
        ended = None
        end_for_duration = now or datetime.now(timezone.utc)
    else:
        ended = _parse_time(status.get("finished_at")) or _parse_time(status.get("updated_at"))
        end_for_duration = ended
    duration = (end_for_duration - started).total_seconds() if started and end_for_duration else None
    components = _dict(manifest.get("components"))

    def component(kind: str) -> str | None:
        value = config.get(kind) or _dict(components.get(kind)).get("name")
        return str(value) if value else None

    def text(value: Any) -> str | None:
        return str(value) if value is not None else None

    evaluations = path / EVALUATIONS_DIR
    return RunSummary(
        path=path, status=shown, task=component("task"), strategy=component("strategy"),
        provider=component("provider"), model=text(config.get("model_name")),
        started_at=started.isoformat() if started else None, ended_at=ended.isoformat() if ended else None,
        duration_s=round(duration, 1) if duration is not None else None,
        global_step=status.get("global_step") if isinstance(status.get("global_step"), int) else None,
        metrics_before=_numbers(metrics.get("before")), metrics_after=_numbers(metrics.get("after")),
        error=text(status.get("error")), note=note or text(status.get("note")),
        evaluations=len(list(evaluations.glob("*.json"))) if evaluations.is_dir() else 0,
        merged=(path / "merged" / "config.json").is_file(),
        stop_reason=status.get("stop_reason") if isinstance(status.get("stop_reason"), str) else None,
        stop_message=status.get("stop_message") if isinstance(status.get("stop_message"), str) else None,
        best_step=status.get("best_step") if isinstance(status.get("best_step"), int) else None,
    )


def _numbers(value: Any) -> dict[str, Any]:
    """A metrics table as saved, keeping only name -> number (a damaged file gives fewer)."""
    return {str(k): v for k, v in _dict(value).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def damaged(path: Path, reason: str) -> RunSummary:
    """The row of a run folder that cannot be summarized: status ``damaged`` and why."""
    return RunSummary(path=path, status="damaged", task=None, strategy=None, provider=None, model=None,
                      started_at=None, ended_at=None, duration_s=None, global_step=None,
                      note=f"this run folder is damaged: {reason}")


def summarize_safely(path: Path) -> RunSummary:
    """:func:`summarize`, or a ``damaged`` row when the folder defeats it: one damaged folder never
    hides the others."""
    try:
        summary = summarize(path)
    except Exception as exc:  # any damage: the row says so, the list goes on
        return damaged(path, f"{type(exc).__name__}: {str(exc)[:200]}")
    if not (path / CONFIG_FILE).is_file() or _read(path / CONFIG_FILE) is None or summary.task is None:
        return damaged(path, f"its {CONFIG_FILE} is missing, unreadable or holds no saved config")
    return summary


def list_runs(root: Path) -> list[RunSummary]:
    """Every run folder directly under ``root`` (a folder with a ``config.json``), oldest first;
    a damaged one is listed with status ``damaged``."""
    if not root.is_dir():
        return []
    runs = [summarize_safely(child) for child in root.iterdir()
            if child.is_dir() and not child.name.startswith(".") and (child / CONFIG_FILE).exists()]
    return sorted(runs, key=lambda run: (run.started_at or "", run.name))


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
