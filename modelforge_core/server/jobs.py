"""Job records and what a run folder says about its training, for the server and the worker.

A job is one JSON file, ``STATE/jobs/<id>.json``, written whole through a rename. The server
writes it when a job is submitted (``queued``) or re-queued (``resume``); the worker writes it
when the job starts and ends. A cancel is a marker file beside it (``<id>.cancel``) that only
the worker acts on, so the two processes never write the same file at the same moment.

Progress is never copied into the record: it is read from the run folder (``status.json``,
``log.jsonl``, ``metrics.json``), which the training writes anyway and which outlives the
server.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..runs import (
    CONFIG_FILE,
    LOG_FILE,
    MANIFEST_FILE,
    STATUS_FILE,
    RunDir,
    now_iso,
    read_json,
    write_json_atomic,
)

#: Job states. ``interrupted`` jobs keep a checkpoint and can be resumed; ``cancelled`` is a
#: queued job removed before it started.
QUEUED, RUNNING, FINISHED, FAILED, INTERRUPTED, CANCELLED = (
    "queued", "running", "finished", "failed", "interrupted", "cancelled")
JOB_STATES = (QUEUED, RUNNING, FINISHED, FAILED, INTERRUPTED, CANCELLED)
TERMINAL = frozenset({FINISHED, FAILED, INTERRUPTED, CANCELLED})
#: ``modelforge train`` exits with this code after a graceful interrupt (checkpoint saved).
EXIT_INTERRUPTED = 130
#: Log records kept for a chart; longer logs are thinned evenly (the last record always kept).
MAX_CHART_POINTS = 2000


@dataclass
class Job:
    """One submitted training. Paths are absolute; the API shows them relative to the data root."""

    id: str
    state: str
    created_at: str
    created_ns: int
    config_file: str
    run_dir: str
    force: bool = False
    resume: bool = False
    started_at: str | None = None
    ended_at: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: What a job id may look like: letters, digits, ``-`` and ``_``, at most 64 characters.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def new_job_id() -> str:
    """Sortable by creation time and unguessable enough not to collide: ``j20261122-085901-3fa2c1``."""
    return time.strftime("j%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class JobStore:
    """The job records under ``state_dir``: ``jobs/<id>.json``, ``configs/<id>.json`` (the
    config each job trains, paths made absolute) and ``logs/<id>.log`` (the training's output)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.jobs_dir = state_dir / "jobs"
        self.configs_dir = state_dir / "configs"
        self.logs_dir = state_dir / "logs"

    def ensure(self) -> None:
        for folder in (self.jobs_dir, self.configs_dir, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str) -> Path:
        # Job ids are ours (``new_job_id``): anything else is no job, never a filesystem error.
        if not JOB_ID.fullmatch(job_id):
            raise KeyError(job_id)
        return self.jobs_dir / f"{job_id}.json"

    def log_file(self, job_id: str) -> Path:
        return self.logs_dir / f"{job_id}.log"

    def cancel_marker(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.cancel"

    def create(self, config: Mapping[str, Any], run_dir: Path, *, force: bool = False,
               summary: Mapping[str, Any] | None = None, job_id: str | None = None) -> Job:
        """Write the job's config, then its record (``queued``): a worker that sees the record
        always finds the config."""
        self.ensure()
        job_id = job_id or new_job_id()
        config_file = self.configs_dir / f"{job_id}.json"
        write_json_atomic(config_file, dict(config))
        job = Job(id=job_id, state=QUEUED, created_at=now_iso(), created_ns=time.time_ns(),
                  config_file=str(config_file), run_dir=str(run_dir), force=force, summary=dict(summary or {}))
        self.save(job)
        return job

    def save(self, job: Job) -> None:
        write_json_atomic(self._path(job.id), job.to_json())

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; :class:`KeyError` when there is none."""
        path = self._path(job_id)
        try:
            return Job.from_json(read_json(path))
        except FileNotFoundError:
            raise KeyError(job_id) from None

    def all(self) -> list[Job]:
        """Every job, oldest first (the order the queue runs them in)."""
        jobs: list[Job] = []
        if not self.jobs_dir.is_dir():
            return jobs
        for path in self.jobs_dir.glob("*.json"):
            try:
                jobs.append(Job.from_json(read_json(path)))
            except (OSError, ValueError, TypeError):
                continue  # a foreign or damaged file is not a job
        return sorted(jobs, key=lambda j: (j.created_ns, j.id))

    def request_cancel(self, job_id: str) -> None:
        self.cancel_marker(job_id).touch()

    def cancel_requested(self, job_id: str) -> bool:
        return self.cancel_marker(job_id).exists()

    def clear_cancel(self, job_id: str) -> None:
        self.cancel_marker(job_id).unlink(missing_ok=True)


# --- what a run folder says ----------------------------------------------------------------

def read_log(run_dir: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete lines of ``log.jsonl`` from byte ``offset``; returns the records and the offset
    to read from next (a line still being written is left for the next read)."""
    path = run_dir / LOG_FILE
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records, offset + end


def _read(run_dir: Path, name: str) -> dict[str, Any]:
    try:
        value = read_json(run_dir / name)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def is_training_record(record: Mapping[str, Any]) -> bool:
    """A step logged while training (loss, learning rate), not a before/after evaluation."""
    return "step" in record and "loss" in record


def planned_steps(run_dir: Path) -> int | None:
    """How many optimizer steps the training will take: ``max_steps`` when set, else an estimate
    from the manifest (train rows, batch size, accumulation, epochs, processes)."""
    config = _read(run_dir, CONFIG_FILE).get("config")
    config = config if isinstance(config, dict) else {}
    max_steps = config.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        return max_steps
    manifest = _read(run_dir, MANIFEST_FILE)
    data, hardware = manifest.get("data"), manifest.get("hardware")
    rows: Any = data.get("train_rows") if isinstance(data, dict) else None
    batch: Any = config.get("per_device_train_batch_size")
    accumulation = config.get("gradient_accumulation_steps") or 1
    epochs: Any = config.get("num_train_epochs")
    processes = (hardware.get("processes") if isinstance(hardware, dict) else None) or 1
    if not all(isinstance(v, int) and v > 0 for v in (rows, batch, epochs)):
        return None
    batches = math.ceil(int(rows) / (int(batch) * int(processes)))
    return max(1, math.ceil(batches / int(accumulation))) * int(epochs)


def progress(run_dir: Path, records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Step, loss, learning rate, steps per second and ETA from a run folder."""
    status = _read(run_dir, STATUS_FILE)
    if records is None:
        records, _ = read_log(run_dir)
    training = [r for r in records if is_training_record(r)]
    total = planned_steps(run_dir)
    step = status.get("global_step") or 0
    out: dict[str, Any] = {"step": step, "total_steps": total, "loss": None, "learning_rate": None,
                           "epoch": None, "steps_per_second": None, "eta_seconds": None}
    if training:
        last = training[-1]
        step = max(step, int(last["step"]))
        out.update(step=step, loss=last.get("loss"), learning_rate=last.get("learning_rate"),
                   epoch=last.get("epoch"))
        first = training[0]
        elapsed = float(last.get("time", 0)) - float(first.get("time", 0))
        done = int(last["step"]) - int(first["step"])
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            out["steps_per_second"] = round(rate, 4)
            if total and total >= step:
                out["eta_seconds"] = round((total - step) / rate, 1)
    if total is not None and step > total:
        out["total_steps"] = None  # the estimate was wrong (e.g. a multi-stage strategy)
    if status.get("status") == "finished":
        out["eta_seconds"] = 0.0
    return out


def chart_points(records: list[dict[str, Any]], limit: int = MAX_CHART_POINTS) -> list[dict[str, Any]]:
    """The training records, thinned evenly to at most ``limit`` (the last one always kept)."""
    points = [r for r in records if is_training_record(r) or ("eval_loss" in r and "step" in r)]
    if len(points) <= limit:
        return points
    stride = len(points) / limit
    kept = [points[int(i * stride)] for i in range(limit - 1)]
    return [*kept, points[-1]]


def run_summary(run_dir: Path) -> dict[str, Any]:
    """What ``modelforge runs --json`` says of a run folder, plus its dataset, adapter and last
    checkpoint (the absolute ``path`` is left for the API to show relative to its root)."""
    from ..runlist import summarize_safely

    summary = summarize_safely(run_dir).to_json()
    config = _read(run_dir, CONFIG_FILE).get("config")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    try:
        checkpoint = (RunDir(run_dir).last_checkpoint() or Path("")).name or None
    except OSError:
        checkpoint = None
    summary.update(dataset=dataset if isinstance(dataset, str) else None,
                   has_adapter=(run_dir / "adapter").is_dir(), checkpoint=checkpoint)
    return summary


def iter_run_dirs(runs_dir: Path) -> Iterator[Path]:
    """Run folders directly under ``runs_dir`` (those holding a ``config.json``)."""
    if not runs_dir.is_dir():
        return
    for child in sorted(runs_dir.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and (child / CONFIG_FILE).exists():
            yield child


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
