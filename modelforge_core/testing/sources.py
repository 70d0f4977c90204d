"""Writing the same rows as every kind of dataset source, for tests: parquet, CSV/TSV and arrow
files (pyarrow), ``save_to_disk`` folders (datasets), and a Hugging Face hub cache laid out on
disk exactly as ``huggingface_hub`` stores one (``datasets--owner--name/refs/main``,
``snapshots/<commit>/...``), so the real hub resolution runs offline.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _table(rows: Sequence[Mapping[str, Any]]) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist([dict(row) for row in rows])


def write_parquet(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(rows), path)
    return path


def write_delimited(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """A CSV (or, for a ``.tsv`` name, tab-separated) file with a header row."""
    import pyarrow.csv as pcsv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    delimiter = "\t" if path.suffix == ".tsv" else ","
    pcsv.write_csv(_table(rows), path, pcsv.WriteOptions(delimiter=delimiter))
    return path


def write_arrow(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """An Arrow IPC stream file, the format of the shards ``save_to_disk`` writes."""
    import pyarrow as pa

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = _table(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def save_to_disk(folder: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    Dataset.from_list([dict(row) for row in rows]).save_to_disk(str(folder))
    return Path(folder)


def write_hub_dataset(cache: str | Path, repo: str, files: Mapping[str, Sequence[Mapping[str, Any]]], *,
                      revision: str = "main") -> str:
    """Lay out ``repo`` (``owner/name``) in the hub cache ``cache`` (what ``HF_HUB_CACHE`` names):
    each of ``files`` (a path in the repo such as ``data/train-00000-of-00001.parquet`` -> rows)
    written under ``snapshots/<commit>/``, and ``refs/<revision>`` naming the commit. Returns the
    commit hash."""
    content = json.dumps({"repo": repo, "files": {k: list(v) for k, v in files.items()}}, sort_keys=True,
                         default=str)
    commit = hashlib.sha1(content.encode(), usedforsecurity=False).hexdigest()  # a commit hash's shape
    root = Path(cache) / f"datasets--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    for name, rows in files.items():
        target = snapshot / name
        if target.suffix == ".parquet":
            write_parquet(target, rows)
        elif target.suffix in (".csv", ".tsv"):
            write_delimited(target, rows)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(json.dumps(dict(row)) + "\n" for row in rows), "utf-8")
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return commit
