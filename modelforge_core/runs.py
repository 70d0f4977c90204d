"""The run folder: everything a training leaves behind, written so nothing finished is lost.

Layout of ``runs/<name>-<timestamp>/`` (or ``output_dir``)::

    config.json        the resolved config, with the source of every value
    manifest.json      versions (core, plugins, libraries, schema), data fingerprint, seed, hardware
    status.json        running | finished | failed | interrupted, step, error
    log.jsonl          one JSON object per logged step and evaluation
    logs/              TensorBoard event files
    checkpoints/       checkpoint-<step>/ folders (resume after an interruption)
    adapter/           the final adapter and tokenizer (peft format)
    metrics.json       metrics before and after training

Every file is written to a temporary name and renamed into place, so it is complete or absent.
A folder that exists already is never reused, except by ``--resume``.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import RunError

CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "logs"

STATUSES = ("running", "finished", "failed", "interrupted")


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed versions of ``names`` (``None`` when absent), for manifests and cache keys."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _slug(text: str) -> str:
    keep = [c if c.isalnum() or c in "._-" else "-" for c in text]
    return "".join(keep).strip("-.")[:60] or "run"


def default_run_name(config: Mapping[str, Any]) -> str:
    if config.get("run_name"):
        return str(config["run_name"])
    model = Path(str(config["model_name"]).rstrip("/")).name
    return _slug(f"{model}-{config['strategy']}")


@dataclass
class RunDir:
    """A run folder on disk."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, config: Mapping[str, Any], *, root: Path | None = None) -> RunDir:
        """Create a new, empty run folder; never reuse an existing one."""
        if config.get("output_dir"):
            path = Path(config["output_dir"])
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise RunError(
                    f"output_dir {path} exists already and is not empty: nothing is overwritten. "
                    "Choose another output_dir, remove the folder, or resume it with "
                    f"`modelforge train --resume {path}`"
                )
            path.mkdir(parents=True, exist_ok=True)
            return cls(path)
        base = (root or Path.cwd() / "runs")
        base.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        stem = f"{default_run_name(config)}-{stamp}"
        for attempt in range(1000):
            path = base / (stem if attempt == 0 else f"{stem}-{attempt}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise RunError(f"cannot find a free run folder name under {base}")

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run folder (for ``--resume``, ``generate``, ``evaluate``, ...)."""
        if not path.is_dir():
            raise RunError(f"{path} is not a folder")
        if not (path / CONFIG_FILE).is_file():
            raise RunError(f"{path} is not a ModelForge run folder (no {CONFIG_FILE})")
        return cls(path)

    # -- files ------------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, data: Any) -> None:
        write_json_atomic(self.path / name, data)

    def read_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def config(self) -> dict[str, Any]:
        return dict(self.read_json(CONFIG_FILE)["config"])

    def append_log(self, record: Mapping[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **record}, default=str)
        with open(self.path / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        try:
            return dict(self.read_json(STATUS_FILE))
        except (FileNotFoundError, json.JSONDecodeError):
            return {"status": "unknown"}

    def set_status(self, status: str, **fields: Any) -> None:
        assert status in STATUSES, status
        current = self.status()
        current.update(fields)
        current.update({"status": status, "updated_at": now_iso(), "pid": os.getpid()})
        current.setdefault("started_at", current["updated_at"])
        if status != "failed":
            current.pop("error", None)
        self.write_json(STATUS_FILE, current)

    # -- checkpoints and adapters -----------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (one whose ``trainer_state.json`` was written)."""
        if not self.checkpoints.is_dir():
            return None
        complete = []
        for child in self.checkpoints.iterdir():
            prefix, _, step = child.name.partition("-")
            if prefix == "checkpoint" and step.isdigit() and (child / "trainer_state.json").is_file():
                complete.append((int(step), child))
        return max(complete)[1] if complete else None

    def save_directory(self, name: str, writer: Any) -> Path:
        """Let ``writer(tmp_dir)`` fill a temporary folder, then rename it to ``name``."""
        final = self.path / name
        if final.exists():
            raise RunError(f"{final} exists already: nothing is overwritten")
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            writer(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final
