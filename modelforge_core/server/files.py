"""Files under the data root as the API may show them: dataset and model listings and a
parsed preview of a dataset's first rows. Nothing here returns a file's raw bytes, and every
path is checked to stay inside the root (symlinks resolved) before anything is opened."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Suffixes ModelForge reads as datasets (JSONL, or a ``.json`` array of objects).
DATASET_SUFFIXES = (".jsonl", ".json", ".jsonlines", ".ndjson")
#: Folders never listed: hidden ones, environments and caches.
SKIPPED_DIRS = frozenset({"node_modules", "__pycache__", "site-packages"})
MAX_LISTED = 500
MAX_DEPTH = 5
#: A preview reads at most this much of a JSONL file, and whole ``.json`` arrays up to this size.
PREVIEW_BYTES = 1 << 20
JSON_ARRAY_LIMIT = 32 << 20
#: Longer string values are cut in a preview.
PREVIEW_STRING_CHARS = 400
MAX_PREVIEW_ROWS = 50
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
#: Longer paths are refused before the filesystem sees them.
MAX_PATH_CHARS = 1024


class FileProblem(Exception):
    """A path the API refuses; ``status`` is the HTTP status, the message never holds file content."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_inside(root: Path, given: str) -> Path:
    """``given`` (relative to ``root``, or absolute) resolved, refused unless it stays in ``root``."""
    if not given or "\0" in given or len(given) > MAX_PATH_CHARS:
        raise FileProblem(400, "bad_path", "give a path relative to the data root (no NUL byte, at most "
                          f"{MAX_PATH_CHARS} characters)")
    candidate = Path(given).expanduser()
    try:
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (OSError, RuntimeError):  # a symlink loop, a component too long for the filesystem
        raise FileProblem(400, "bad_path", "the path cannot be resolved (a symlink loop, a name too long?)") from None
    if not inside(resolved, root):
        raise FileProblem(403, "outside_root", f"{given} is outside the data root: only files under it can be used")
    return resolved


def _walk(root: Path, skip: Path | None) -> Iterator[tuple[Path, list[str], list[str]]]:
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS
                         and not d.startswith(".venv") and (skip is None or here / d != skip)
                         and len(here.parts) - base_depth < MAX_DEPTH)
        yield here, dirs, sorted(files)


def list_files(root: Path, runs_dir: Path | None = None) -> dict[str, Any]:
    """Dataset files and model folders (a ``config.json`` beside weights) under ``root``,
    relative to it; the runs folder is left out (its run folders are listed as runs)."""
    datasets: list[str] = []
    models: list[str] = []
    truncated = False
    for folder, _dirs, files in _walk(root, runs_dir):
        if "config.json" in files and any(f.endswith(WEIGHT_SUFFIXES) for f in files):
            models.append(folder.relative_to(root).as_posix() or ".")
            continue  # a model's own JSON files are not datasets
        datasets.extend((folder / name).relative_to(root).as_posix() for name in files
                        if name.lower().endswith(DATASET_SUFFIXES) and not name.startswith("."))
        if len(datasets) + len(models) >= MAX_LISTED:
            truncated = True
            break
    return {"datasets": datasets, "models": models, "truncated": truncated}


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > PREVIEW_STRING_CHARS:
        return value[:PREVIEW_STRING_CHARS] + "…"
    if isinstance(value, list):
        return [_shorten(v) for v in value[:20]]
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    return value


@dataclass
class Preview:
    path: str
    format: str
    rows: list[dict[str, Any]]
    columns: list[str]
    problems: list[dict[str, Any]]
    more: bool

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "rows": self.rows, "columns": self.columns,
                "problems": self.problems, "more": self.more}


def preview_dataset(root: Path, given: str, limit: int = 5) -> Preview:
    """The first ``limit`` rows of a dataset under ``root``, parsed; unparsable lines are
    reported by number (never by content)."""
    path = resolve_inside(root, given)
    if not path.is_file():
        raise FileProblem(404, "not_found", f"{given}: no such file under the data root")
    suffix = path.suffix.lower()
    if suffix not in DATASET_SUFFIXES:
        raise FileProblem(415, "not_a_dataset", f"{given} is not a dataset file: datasets are "
                          f"{', '.join(DATASET_SUFFIXES)} files")
    limit = max(1, min(limit, MAX_PREVIEW_ROWS))
    shown = path.relative_to(root).as_posix()
    rows: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    from ..safeio import describe_error, read_head

    try:
        head = read_head(path, PREVIEW_BYTES)
    except (OSError, ValueError) as exc:  # swapped for a FIFO or a device since the check above
        raise FileProblem(422, "unreadable", f"{given}: {describe_error(exc)}") from None
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the read limit
            raise FileProblem(422, "not_utf8", f"{given} is not UTF-8 text (byte {exc.start})") from None
        text = head[:exc.start].decode("utf-8-sig")
    if suffix == ".json" and text.lstrip().startswith("["):
        return _preview_array(path, shown, limit)
    more = False
    lines = text.split("\n")
    if len(head) == PREVIEW_BYTES:
        lines = lines[:-1]  # the last line may be cut
        more = True
    decoder = json.JSONDecoder()
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if len(rows) + len(problems) >= limit:
            more = True
            break
        try:
            value, end = decoder.raw_decode(line, len(line) - len(line.lstrip(" \t")))
            if line[end:].strip(" \t"):
                raise json.JSONDecodeError("Extra data after the row", line, end)
        except json.JSONDecodeError as exc:
            problems.append({"line": number, "message": f"invalid JSON: {exc.msg} (column {exc.colno})"})
            continue
        except RecursionError:
            problems.append({"line": number, "message": "invalid JSON: nested too deeply"})
            continue
        except ValueError:  # Python's int-string limit: a number of thousands of digits
            problems.append({"line": number, "message": "invalid JSON: a number with too many digits"})
            continue
        if not isinstance(value, dict):
            problems.append({"line": number, "message": f"a row must be a JSON object, got {type(value).__name__}"})
            continue
        from ..jsonpos import value_problem

        problem = value_problem(value)  # a lone surrogate cannot even be sent back as JSON
        if problem:
            problems.append({"line": number, "message": problem})
            continue
        rows.append(_shorten(value))
    return Preview(shown, "jsonl", rows, _columns(rows), problems, more)


def _preview_array(path: Path, shown: str, limit: int) -> Preview:
    if path.stat().st_size > JSON_ARRAY_LIMIT:
        raise FileProblem(413, "too_large", f"{shown} is a JSON array too large to preview; use JSONL")
    from ..safeio import read_file

    try:
        value = json.loads(read_file(path, limit=JSON_ARRAY_LIMIT).data.decode("utf-8-sig"))
    except OSError as exc:
        from ..safeio import describe_error

        raise FileProblem(422, "unreadable", f"{shown}: {describe_error(exc)}") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        line = getattr(exc, "lineno", None)
        where = f" at line {line}" if line else ""
        raise FileProblem(422, "invalid_json", f"{shown} is not valid JSON{where}") from None
    if not isinstance(value, list):
        raise FileProblem(422, "not_a_dataset", f"{shown} holds no JSON array of rows")
    rows, problems = [], []
    for index, item in enumerate(value[:limit]):
        if isinstance(item, dict):
            rows.append(_shorten(item))
        else:
            problems.append({"row": index, "message": f"a row must be a JSON object, got {type(item).__name__}"})
    return Preview(shown, "json", rows, _columns(rows), problems, len(value) > limit)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)
