"""The job worker: ``python -m modelforge_core.server.worker --state-dir DIR --data-root DIR``.

The server starts one worker process. The worker runs queued jobs oldest first, at most
``--concurrency`` at a time, each as its own ``python -m modelforge_core train CONFIG --json
--data-root ROOT --set output_dir=RUN_DIR`` process in a session of its own (a Ctrl-C meant for
the server never reaches a training directly). So a training that crashes, or is killed for
memory, ends that job only.

- Cancel: the server drops a marker file; the worker sends the training one SIGINT, the core
  saves a checkpoint, marks the run ``interrupted`` and exits 130. A queued job is just dropped.
- Stop (SIGTERM/SIGINT to the worker, or the server gone): every running training is
  interrupted the same way and waited for; queued jobs stay queued for the next start.
- Start: jobs recorded ``running`` whose training is still alive are adopted and watched;
  those whose process is gone are settled from their run folder's ``status.json``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

from ..runs import STATUS_FILE, RunDir, now_iso, read_json
from .jobs import (
    CANCELLED,
    EXIT_INTERRUPTED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    TERMINAL,
    Job,
    JobStore,
    process_alive,
)

#: Seconds between two looks at the job folder.
POLL_SECONDS = 0.25
#: The end of a training's output searched for its error message.
LOG_TAIL_BYTES = 64 * 1024
MAX_ERROR_CHARS = 600


class Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...


class Adopted:
    """A training started by an earlier worker and still running: watched by its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int | None:
        return None if process_alive(self.pid) else -1  # -1: exit code unknown


def train_command(job: Job, data_root: Path) -> list[str]:
    """The ``modelforge train`` command line of ``job``."""
    base = [sys.executable, "-m", "modelforge_core", "train"]
    tail = ["--json", "--data-root", str(data_root)]
    if job.force:
        tail.append("--force")
    if job.resume:
        return [*base, "--resume", job.run_dir, *tail]
    return [*base, job.config_file, *tail, "--set", f"output_dir={job.run_dir}"]


def _our_training(job: Job) -> bool:
    """Whether ``job.pid`` still runs this job's training (and is not a reused pid)."""
    if not process_alive(job.pid):
        return False
    cmdline = Path(f"/proc/{job.pid}/cmdline")
    if not cmdline.parent.parent.joinpath("self").exists():
        return True  # no /proc (macOS): trust the pid
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return any(job.run_dir.encode() in a or job.config_file.encode() in a for a in args)


def failure_message(log_file: Path, run_dir: Path, exit_code: int | None) -> str:
    """One short message saying why a training failed: the run's recorded error, else the
    ``error:`` line (or the validation report) the CLI printed, never a traceback."""
    try:
        status = read_json(run_dir / STATUS_FILE)
        if isinstance(status, dict) and status.get("error"):
            return str(status["error"])[:MAX_ERROR_CHARS]
    except (OSError, ValueError):
        pass
    try:
        with open(log_file, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1][:MAX_ERROR_CHARS]
    for index, line in enumerate(lines):
        if " is invalid (" in line:
            report = [line.strip(), *(item.strip() for item in lines[index + 1:index + 6] if item.startswith("  "))]
            return " ".join(report)[:MAX_ERROR_CHARS]
    if exit_code is None:
        return "the training stopped without a result (the server or the machine stopped while it ran)"
    if exit_code < 0:
        return f"the training process was killed by signal {-exit_code}"
    return f"the training process exited with code {exit_code}"


class Worker:
    """Runs the queue in ``store``; see the module docstring."""

    def __init__(self, store: JobStore, data_root: Path, *, concurrency: int = 1, stop_timeout: float = 120.0,
                 parent_pid: int | None = None) -> None:
        self.store = store
        self.data_root = data_root
        self.concurrency = concurrency
        self.stop_timeout = stop_timeout
        self.parent_pid = parent_pid
        self.running: dict[str, Process] = {}
        self.logs: dict[str, IO[bytes]] = {}
        #: Jobs whose training got its SIGINT already: a second one would stop it at once, unsaved.
        self.signalled: set[str] = set()
        self.stopping = False

    def say(self, text: str) -> None:
        print(f"modelforge worker: {text}", file=sys.stderr, flush=True)

    # -- life cycle ---------------------------------------------------------------------------

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self.stopping = True

    def parent_gone(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def run(self) -> None:
        self.store.ensure()
        self.recover()
        while not self.stopping and not self.parent_gone():
            self.tick()
            time.sleep(POLL_SECONDS)
        self.shutdown()

    def recover(self) -> None:
        for job in self.store.all():
            if job.state != RUNNING:
                continue
            if _our_training(job) and job.pid is not None:
                self.say(f"job {job.id}: adopting its running training (pid {job.pid})")
                self.running[job.id] = Adopted(job.pid)
                if job.cancel_requested:
                    self.signalled.add(job.id)
            else:
                self.finish(job, None)

    def tick(self) -> None:
        for job_id, process in list(self.running.items()):
            code = process.poll()
            if code is not None:
                self.finish(self.store.get(job_id), None if code == -1 and isinstance(process, Adopted) else code)
        jobs = self.store.all()
        for job in jobs:
            if self.store.cancel_requested(job.id):
                self.cancel(job)
        queued = [job for job in jobs if job.state == QUEUED and not self.store.cancel_requested(job.id)]
        while queued and len(self.running) < self.concurrency and not self.stopping:
            self.start(queued.pop(0))

    def shutdown(self) -> None:
        """Interrupt every running training (each saves a checkpoint), wait, then settle them."""
        for job_id, process in self.running.items():
            if job_id in self.signalled:
                continue
            self.say(f"job {job_id}: stopping its training (a checkpoint is saved)")
            _signal(process.pid, signal.SIGINT)
            self.signalled.add(job_id)
        deadline = time.monotonic() + self.stop_timeout
        while self.running and time.monotonic() < deadline:
            for job_id, process in list(self.running.items()):
                code = process.poll()
                if code is not None:
                    self.finish(self.store.get(job_id), None if isinstance(process, Adopted) else code)
            time.sleep(POLL_SECONDS)
        for job_id, process in list(self.running.items()):
            self.say(f"job {job_id}: no exit after {self.stop_timeout:.0f} s, killed")
            _signal(process.pid, signal.SIGKILL, group=True)
            if isinstance(process, subprocess.Popen):
                process.wait()
            self.finish(self.store.get(job_id), -signal.SIGKILL)

    # -- one job ------------------------------------------------------------------------------

    def start(self, job: Job) -> None:
        log = open(self.store.log_file(job.id), "ab")  # noqa: SIM115 (closed in finish())
        log.write(f"--- {now_iso()} attempt {job.attempts + 1}\n".encode())
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            process = subprocess.Popen(train_command(job, self.data_root), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=self.data_root, env=env,
                                       start_new_session=True)
        except OSError as exc:
            log.close()
            job.state, job.error, job.ended_at = FAILED, f"cannot start the training: {exc.strerror}", now_iso()
            self.store.save(job)
            return
        self.running[job.id] = process
        self.logs[job.id] = log
        job.state, job.pid, job.started_at, job.ended_at = RUNNING, process.pid, now_iso(), None
        job.exit_code, job.error, job.cancel_requested = None, None, False
        job.attempts += 1
        self.store.save(job)
        self.say(f"job {job.id}: started (pid {process.pid})")

    def cancel(self, job: Job) -> None:
        if job.state == QUEUED:
            job.state, job.ended_at, job.cancel_requested = CANCELLED, now_iso(), True
            self.store.save(job)
            self.store.clear_cancel(job.id)
            self.say(f"job {job.id}: cancelled before it started")
        elif job.state == RUNNING and job.id in self.running and job.id not in self.signalled:
            _signal(self.running[job.id].pid, signal.SIGINT)
            self.signalled.add(job.id)
            job.cancel_requested = True
            self.store.save(job)
            self.say(f"job {job.id}: cancel requested, the training saves a checkpoint and stops")
        elif job.state in TERMINAL:
            self.store.clear_cancel(job.id)

    def finish(self, job: Job, exit_code: int | None) -> None:
        """Settle a job whose training ended; ``exit_code`` None: unknown (not our child)."""
        self.running.pop(job.id, None)
        self.signalled.discard(job.id)
        log = self.logs.pop(job.id, None)
        if log is not None:
            log.close()
        run_dir = Path(job.run_dir)
        try:
            run_status = read_json(run_dir / STATUS_FILE).get("status")
        except (OSError, ValueError, AttributeError):
            run_status = None
        if exit_code == 0 or (exit_code is None and run_status == FINISHED):
            job.state = FINISHED
        elif exit_code == EXIT_INTERRUPTED or run_status == INTERRUPTED or (
                run_status == RUNNING and RunDir(run_dir).last_checkpoint() is not None):
            job.state = INTERRUPTED
        else:
            job.state = FAILED
        job.error = failure_message(self.store.log_file(job.id), run_dir, exit_code) if job.state == FAILED else None
        job.exit_code, job.pid, job.ended_at = exit_code, None, now_iso()
        self.store.save(job)
        self.store.clear_cancel(job.id)
        self.say(f"job {job.id}: {job.state}" + (f" ({job.error})" if job.error else ""))


def _signal(pid: int, signum: int, *, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modelforge_core.server.worker",
                                     description="Run the queued ModelForge jobs of a state folder.")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--stop-timeout", type=float, default=120.0)
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="Stop (interrupting running trainings) when this process is gone.")
    args: Any = parser.parse_args(argv)
    worker = Worker(JobStore(args.state_dir), args.data_root.resolve(), concurrency=args.concurrency,
                    stop_timeout=args.stop_timeout, parent_pid=args.parent_pid)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run()


if __name__ == "__main__":
    main()
