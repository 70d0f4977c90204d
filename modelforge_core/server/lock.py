"""One server per state folder: two servers sharing a queue would each start every job."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from ..errors import UsageError

LOCK_FILE = "server.lock"


def hold_state_lock(state_dir: Path) -> IO[str]:
    """Lock ``state_dir`` for this process until the returned file is closed (or it exits)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held open on purpose)
    try:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # Windows: no advisory locks; one server per folder is up to the user
        return handle
    except OSError:
        handle.close()
        raise UsageError(f"another modelforge serve uses the job folder {state_dir}: stop it, or give "
                         "this one another --state-dir") from None
    return handle
