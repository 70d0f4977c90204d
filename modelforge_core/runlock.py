"""One writer per run folder, enforced by the operating system.

Before a training writes anything into its run folder (a new run, or ``--resume``), it takes an
exclusive ``flock`` on ``RUN/.lock``. The lock belongs to the open file, so it ends when its holder
exits, however it exits (SIGKILL, out of memory): a lock file left behind locks nothing. A
writer that ends normally removes the file.

A second writer (another ``--resume``, a second server job, a ``train`` with the same ``output_dir``) is
refused with one sentence naming the holder, and changes nothing in the folder: it opens the lock
file without truncating it and writes nothing else.

Under ``accelerate launch`` the main process holds the lock for the whole group (the other
processes write nothing into the run folder). The server's jobs run ``modelforge train`` in a
process of their own, which takes the lock like any other.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

from .errors import RunError

LOCK_FILE = ".lock"


class RunLock:
    """A held lock on a run folder; :meth:`release` (or process exit) frees it."""

    def __init__(self, path: Path, handle: IO[str] | None) -> None:
        self.path = path
        self._handle = handle

    @property
    def held(self) -> bool:
        return self._handle is not None and not self._handle.closed

    def release(self) -> None:
        """Remove the lock file, then drop the lock (closing the file drops the flock): a finished
        run folder holds no trace of it. A writer that opened the old file meanwhile sees it was
        removed and opens the new one (:func:`lock_run` checks the inode)."""
        if self._handle is not None and not self._handle.closed:
            # Gone already, or a read-only folder: the lock still ends with the close.
            with contextlib.suppress(OSError):
                (self.path / LOCK_FILE).unlink()
            self._handle.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    text = handle.read(200).strip()
    return f" (process {text})" if text.isdigit() else ""


def lock_run(folder: Path) -> RunLock:
    """Take the run folder's write lock, or raise :class:`RunError` when another process holds it.

    Also the first write into the folder: an unwritable folder (read-only, under a file) is
    reported here, before any training starts.
    """
    lock_path = folder / LOCK_FILE
    for _attempt in range(10):
        try:
            handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 (held open on purpose)
        except OSError as exc:
            raise RunError(f"cannot write into the run folder {folder}: {exc.strerror or exc}; "
                           "choose a folder this user can write") from None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one writer per folder is up to the user
            return RunLock(folder, handle)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(handle)
            handle.close()
            raise RunError(f"{folder} is being written by another training{holder}: one writer per run folder. "
                           "Wait for it to end (or stop it), then try again; nothing was changed") from None
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(handle.fileno()).st_ino:  # its holder removed it as we opened it
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return RunLock(folder, handle)
    raise RunError(f"cannot lock the run folder {folder}: its lock file keeps changing")


def claim_new_run(folder: Path, *, given: bool) -> RunLock:
    """Lock a run folder just created for a new run. ``given``: the folder is the user's
    ``output_dir``, which another training may have filled between the check and the lock; it
    must still hold nothing but the lock file, or it is refused (and left as it was)."""
    lock = lock_run(folder)
    if given and any(child.name != LOCK_FILE for child in folder.iterdir()):
        lock.release()
        raise RunError(f"output_dir {folder} exists already and is not empty: another training wrote into it "
                       "first. Nothing is overwritten; choose another output_dir")
    return lock
