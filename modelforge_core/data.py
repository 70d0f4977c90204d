"""Reading a dataset file and checking it row by row, before any model is loaded.

No heavy imports here: ``modelforge validate --data`` runs this on 10,000-row files in a
fraction of a second. Rows are JSON objects, one per line (JSONL); a ``.json`` file holding an
array of objects is accepted too. A UTF-8 byte-order mark and blank lines are fine.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dataload import MAX_PROBLEMS as MAX_PROBLEMS  # noqa: PLC0414  (where they were before)
from .dataload import Dataset as Dataset  # noqa: PLC0414

if TYPE_CHECKING:
    from .plugins import Plugins


def check_dataset(config: Mapping[str, Any], *, plugins: Plugins | None = None,
                  path: str | Path | None = None, shape: str | None = None) -> Dataset:
    """Read and check the dataset of a resolved config; raise :class:`ValidationFailed`
    naming file, line and field for every bad row (a screenful, then a count).

    :param path: check this file instead of ``config["dataset"]``.
    :param shape: the data shape expected; default: the configured strategy's.
    """
    from .dataload import load_dataset_rows
    from .plugins import get_plugins

    return load_dataset_rows(config, plugins=plugins or get_plugins(), path=path, shape=shape)
