"""``modelforge serve``: an HTTP API (and a web page) over the same config, schema and training.

The API takes the JSON a config file holds, validates it exactly as ``modelforge validate``
does, and queues trainings. Trainings never run inside the server: a worker process (see
:mod:`.worker`) starts ``modelforge train`` as a child process per job, so a crash, an
out-of-memory kill or a cancel ends one training, never the server. Job records are small JSON
files under the state folder and the run folders stay the record of each training, so a
restarted server finds its queue and its runs again.

Nothing here imports Starlette at module top except :mod:`.app`; the worker and the job store
are plain Python.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from .settings import ServerSettings

__all__ = ["ServerSettings"]
