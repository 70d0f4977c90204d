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
    """The JSON value in ``path``: a regular file of at most ``MAX_RUN_JSON_BYTES``, read once.

    :raises FileNotFoundError: no such file.
    :raises DamagedRun: anything else that stops it from being read or parsed.
    """
    from .safeio import MAX_RUN_JSON_BYTES, describe_error, read_file

    try:
        raw = read_file(path, limit=MAX_RUN_JSON_BYTES).data
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise DamagedRun(f"{path} cannot be read: {describe_error(exc)}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = "it is empty" if not raw.strip() else f"it is not valid JSON ({str(exc)[:120]})"
        raise DamagedRun(f"{path} is damaged: {reason}") from None


class DamagedRun(RunError, ValueError):
    """A file of a run folder is unreadable or malformed (a crash while writing it, a foreign folder).

    Also a :class:`ValueError`, as ``json.load`` raised before, so readers that skip a malformed
    file keep doing so."""


def output_dir_problem(path: Path) -> str | None:
    """Why a new run cannot be written at ``path`` (an ``output_dir``), or ``None`` when it can:
    a file is there, a file is in the way above it, a folder there is not empty, or the folder
    (or its nearest existing parent) is not writable."""
    try:
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                return f"output_dir {path} is a file, not a folder: choose another output_dir"
            if any(path.iterdir()):
                return (f"output_dir {path} exists already and is not empty: nothing is overwritten. "
                        "Choose another output_dir, remove the folder, or resume it with "
                        f"`modelforge train --resume {path}`")
            existing = path
        else:
            existing = path.parent
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                return f"output_dir {path} cannot be created: {existing} is a file, not a folder"
    except (OSError, ValueError) as exc:
        from .safeio import describe_error

        return f"output_dir {path} cannot be used: {describe_error(exc)}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"output_dir {path} cannot be written: {existing} is not writable for this user"
    return None


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
            problem = output_dir_problem(path)
            if problem:
                raise RunError(problem)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunError(f"output_dir {path} cannot be created: {exc.strerror or exc}") from None
            return cls(path)
        base = (root or Path.cwd() / "runs")
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"the runs folder {base} cannot be created: {exc.strerror or exc}") from None
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        stem = f"{default_run_name(config)}-{stamp}"
        for attempt in range(1000):
            path = base / (stem if attempt == 0 else f"{stem}-{attempt}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise RunError(f"cannot create a run folder under {base}: {exc.strerror or exc}") from None
            return cls(path)
        raise RunError(f"cannot find a free run folder name under {base}")

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run folder (for ``--resume``, ``generate``, ``evaluate``, ...)."""
        if not path.is_dir():
            raise RunError(f"{path} is not a folder")
        if not (path / CONFIG_FILE).exists():
            raise RunError(f"{path} is not a ModelForge run folder (no {CONFIG_FILE})")
        run = cls(path)
        document = run.read_json(CONFIG_FILE)
        saved = document.get("config") if isinstance(document, dict) else None
        if not isinstance(saved, dict):
            if isinstance(document, dict) and ("model_type" in document or "architectures" in document):
                raise RunError(f"{path} is a model folder, not a ModelForge run folder: give a run folder "
                               "(one that `modelforge train` made)")
            raise DamagedRun(f"{path / CONFIG_FILE} is damaged: it holds no saved config")
        missing = [key for key in ("task", "model_name") if not isinstance(saved.get(key), str)]
        if missing:
            raise DamagedRun(f"{path / CONFIG_FILE} is damaged: the saved config has no {', '.join(missing)}")
        return run

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
            value = self.read_json(STATUS_FILE)
        except (FileNotFoundError, DamagedRun):
            return {"status": "unknown"}
        return dict(value) if isinstance(value, dict) else {"status": "unknown"}

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

    def adapter_problem(self, name: str = ADAPTER_DIR) -> str | None:
        """Why the adapter folder ``name`` cannot be loaded (missing, empty or truncated files, a
        broken ``adapter_config.json``), or ``None`` when it looks complete. Cheap: reads headers only."""
        folder = self.path / name
        if not (folder / "adapter_config.json").is_file():
            return f"{self.path} has no trained adapter (status: {self.status().get('status')}); " \
                   "finish or resume the training first"
        try:
            adapter_config = read_json(folder / "adapter_config.json")
        except DamagedRun as exc:
            return str(exc)
        if not isinstance(adapter_config, dict) or not adapter_config.get("peft_type"):
            return f"{folder / 'adapter_config.json'} is damaged: it is not a peft adapter config"
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            if (folder / "adapter_model.bin").is_file():
                return None
            return f"{folder} is damaged: it has no adapter_model.safetensors"
        problem = safetensors_problem(weights)
        return f"{weights} is damaged: {problem}" if problem else None

    def save_directory(self, name: str, writer: Any) -> Path:
        """Let ``writer(tmp_dir)`` fill a temporary folder, then rename it to ``name``."""
        final = self.path / name
        if final.exists():
            raise RunError(f"{final} exists already: nothing is overwritten")
        # The run's lock makes this process the folder's only writer: any temporary folder of an
        # earlier save (a process killed while saving) is stale, never reused.
        for stale in self.path.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            writer(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (empty, truncated, a bad header), or ``None``."""
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "it is empty" if size == 0 else "it is truncated"
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 << 20):
                return "it is truncated (its header is cut)"
            header = json.loads(handle.read(length).decode("utf-8"))
    except (OSError, ValueError) as exc:
        return f"its header cannot be read ({str(exc)[:120]})"
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    ends = [entry.get("data_offsets", [0, 0])[1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2]
    if not ends and len(header) > 1:
        return "its header is malformed"
    if ends and 8 + length + max(ends) > size:
        return f"it is truncated ({size:,} bytes, {8 + length + max(ends):,} expected)"
    return None
