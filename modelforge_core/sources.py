"""Where dataset rows come from: local files and folders, ``datasets.save_to_disk`` folders and
hub datasets, registered through the ``register_data_sources`` hook like any plugin's source.

A config's ``dataset`` is a location string, a source object (``{"path": ..., "columns": ...}``)
or a list of source objects (a mixture). Locations:

- a local ``.jsonl``, ``.json``, ``.parquet``, ``.csv``, ``.tsv`` or ``.arrow`` file;
- a local folder: a ``datasets.save_to_disk`` folder, else every such file under it;
- ``hf://owner/name[/subset][@revision][:split]``, a dataset on the Hugging Face hub.

A relative ``owner/name`` without a file extension could be either a local folder or a hub
dataset: it is the local path when that exists, else the hub dataset, and the choice is
reported with how to force the other (``./owner/name`` or ``hf://owner/name``).

Local files are opened once, refused unless they are regular files, and fingerprinted over
exactly the bytes that were parsed. Hub datasets are resolved with
``huggingface_hub.snapshot_download`` (offline: from the local hub cache), then their files are
read like a local folder; the fingerprint is the content hash, and the manifest records the
commit.

Importing this module is cheap: pyarrow and huggingface_hub are imported when a source needs them.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from .api import DataSource, SourceRows, SourceSpec
from .errors import Problem
from .hookspecs import hookimpl

#: File suffixes read as data, and the reader for each.
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow")
HUB_PREFIX = "hf://"
HUB_PATTERN = re.compile(r"hf://(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<subset>[\w.-]+))?"
                         r"(?:@(?P<revision>[^:@]+))?(?::(?P<split>[\w.-]+))?")
#: A relative string that could also name a hub dataset.
HUB_LIKE = re.compile(r"[\w][\w.-]*/[\w][\w.-]*")
#: Files in a folder that are never data.
NOT_DATA = frozenset({"dataset_info.json", "state.json", "dataset_dict.json"})
#: The options of a source that decide which rows it gives and how they map (data cache key).
MAPPING_KEYS = ("format", "columns", "ignore_columns", "split", "subset", "revision", "weight", "fraction")
KNOWN_SPLITS = ("train", "validation", "valid", "dev", "eval", "test")


# --- reading local bytes safely ----------------------------------------------------------------

class SourceProblem(Exception):
    """A source that cannot be read at all (missing, not a regular file, not UTF-8, ...)."""

    def __init__(self, message: str, code: str, hint: str | None = None, *, file: str | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.code, self.hint, self.file, self.line = code, hint, file, line


def read_regular(path: Path) -> bytes:
    """The bytes of ``path``, read once, refusing anything but a regular file (FIFOs, devices,
    sockets: :func:`modelforge_core.safeio.read_file`)."""
    from .safeio import NotRegularFile, describe_error, read_file

    try:
        return read_file(path).data
    except FileNotFoundError:
        raise SourceProblem("dataset file not found", "missing_file",
                            "dataset paths in a config file are relative to the config file's folder") from None
    except NotRegularFile as exc:
        raise SourceProblem(str(exc), "not_regular",
                            "a dataset must be a regular file (not a pipe, a device or a socket)") from None
    except (OSError, ValueError) as exc:
        raise SourceProblem(f"cannot read the dataset: {describe_error(exc)}", "unreadable") from None


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceProblem(f"not UTF-8 text (byte {exc.start})", "encoding", "save the file as UTF-8",
                            line=line) from None


def parse_json_rows(raw: bytes, suffix: str, problems: list[Problem], name: str) -> list[tuple[int, Any]]:
    """``(line, value)`` for every row of a JSONL file (or a ``.json`` array)."""
    from .errors import shorten
    from .jsonpos import MAX_ROW_DEPTH, value_problem

    text = _decode(raw)
    if not text.strip():
        raise SourceProblem("the dataset file is empty", "empty_file")
    rows: list[tuple[int, Any]] = []
    if suffix == ".json" and text.lstrip().startswith("["):
        from .jsonpos import loads_with_lines

        try:
            value, lines = loads_with_lines(text)
        except json.JSONDecodeError as exc:
            problems.append(Problem("(row)", f"invalid JSON: {exc.msg} (column {exc.colno})", code="json",
                                    file=name, line=exc.lineno))
            return rows
        except (RecursionError, ValueError) as exc:  # nesting, Python's int-string limit
            problems.append(Problem("(row)", f"invalid JSON: {shorten(str(exc) or 'nested too deeply', 200)}",
                                    code="json", file=name, line=1))
            return rows
        if not isinstance(value, list):
            return [(1, value)]
        for index, row in enumerate(value):
            row_line = lines.get((index,), 1)
            problem = value_problem(row)
            if problem is not None:
                problems.append(Problem("(row)", problem, code="json", file=name, line=row_line))
                continue
            rows.append((row_line, row))
        return rows
    decoder = json.JSONDecoder()
    # Split on "\n" only: str.splitlines() also splits at U+2028 and friends, which JSON allows
    # unescaped inside strings, and would cut such a row in two.
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.rstrip("\r")
        if not line.strip():
            continue
        start = len(line) - len(line.lstrip(" \t"))
        try:
            value, end = decoder.raw_decode(line, start)
            if line[end:].strip(" \t"):
                raise json.JSONDecodeError("Extra data after the row", line, end)
        except json.JSONDecodeError as exc:
            problems.append(Problem("(row)", f"invalid JSON: {exc.msg} (column {exc.colno})", code="json",
                                    hint="each line must hold one complete JSON object", file=name, line=number))
            continue
        except RecursionError:
            problems.append(Problem("(row)", f"invalid JSON: nested too deeply (more than {MAX_ROW_DEPTH} levels)",
                                    code="json", file=name, line=number))
            continue
        except ValueError as exc:  # Python's int-string limit: a number of thousands of digits
            problems.append(Problem("(row)", f"invalid JSON: {exc}", code="json", file=name, line=number))
            continue
        problem = value_problem(value)
        if problem is not None:
            problems.append(Problem("(row)", problem, code="json", file=name, line=number))
            continue
        rows.append((number, value))
    return rows


def parse_delimited(raw: bytes, delimiter: str, problems: list[Problem], name: str) -> list[tuple[int, Any]]:
    """``(line, row)`` for every record of a CSV/TSV file with a header; every value is a string."""
    text = _decode(raw)
    if not text.strip():
        raise SourceProblem("the dataset file is empty", "empty_file")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise SourceProblem(f"unreadable header: {exc}", "csv") from None
    if len(set(header)) != len(header):
        raise SourceProblem(f"the header repeats a column name: {header}", "csv")
    rows: list[tuple[int, Any]] = []
    start = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(Problem("(row)", f"unreadable record: {exc}", code="csv", file=name, line=start))
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not record or record == [""]:
            continue
        if len(record) != len(header):
            problems.append(Problem("(row)", f"{len(record)} fields, the header has {len(header)}", code="csv",
                                    hint="quote values that contain the delimiter", file=name, line=line))
            continue
        rows.append((line, dict(zip(header, record, strict=True))))
    return rows


def arrow_table(raw: bytes, suffix: str) -> Any:
    import pyarrow as pa

    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(pa.BufferReader(raw))
        try:
            return pa.ipc.open_stream(pa.BufferReader(raw)).read_all()  # what save_to_disk writes
        except pa.ArrowInvalid:
            return pa.ipc.open_file(pa.BufferReader(raw)).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise SourceProblem(f"not a readable {suffix[1:]} file: {exc}", "unreadable") from None


def read_file(path: Path, name: str, problems: list[Problem]) -> tuple[list[tuple[int, Any]], str, bytes]:
    """Rows of one local file, their unit (``line``/``row``), and the bytes read."""
    try:
        return _read_file(path, name, problems)
    except SourceProblem as exc:
        exc.file = exc.file or name
        raise


def _read_file(path: Path, name: str, problems: list[Problem]) -> tuple[list[tuple[int, Any]], str, bytes]:
    suffix = path.suffix.lower()
    raw = read_regular(path)
    if suffix in (".jsonl", ".json") or suffix not in FILE_SUFFIXES:
        return parse_json_rows(raw, suffix, problems, name), "line", raw
    if suffix in (".csv", ".tsv"):
        return parse_delimited(raw, "\t" if suffix == ".tsv" else ",", problems, name), "line", raw
    table = arrow_table(raw, suffix)
    return list(enumerate(table.to_pylist())), "row", raw


# --- folders -------------------------------------------------------------------------------

def data_files(folder: Path) -> list[Path]:
    """Every data file under ``folder`` (hidden ones skipped), in path order."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.name in NOT_DATA:
            continue
        if path.suffix.lower() in FILE_SUFFIXES and path.is_file():
            found.append(path)
    return found


def _split_of(relative: Path) -> str | None:
    """The split a hub-style file name or folder names (``data/train-0000.parquet``, ``test.csv``)."""
    for part in (*relative.parts[:-1], relative.stem):
        lowered = part.lower()
        for split in KNOWN_SPLITS:
            if re.fullmatch(rf"{split}(?:[-_.].*)?", lowered):
                return split
    return None


def select_split(folder: Path, files: list[Path], split: str | None, subset: str | None) -> list[Path]:
    """The files of ``subset`` (a first-level folder) and ``split`` (named in the file or folder
    names; files named after no split are all ``train``)."""
    if subset:
        files = [f for f in files if f.relative_to(folder).parts[0] == subset]
        if not files:
            raise SourceProblem(f"no subset {subset!r} (no data files under {subset}/)", "missing_split")
    splits = {f: _split_of(f.relative_to(folder)) for f in files}
    if not any(splits.values()):
        if split not in (None, "train"):
            raise SourceProblem(f"no split {split!r}: the data files name no split (they are all 'train')",
                                "missing_split")
        return files
    wanted = split or "train"
    chosen = [f for f in files if splits[f] == wanted or (splits[f] is None and wanted == "train")]
    if not chosen:
        names = sorted({s for s in splits.values() if s})
        raise SourceProblem(f"no split {wanted!r}; the data has {', '.join(names)}", "missing_split",
                            f'choose one with ":{names[0]}" or "split"')
    return chosen


def read_saved(folder: Path, split: str | None) -> tuple[list[Path], str]:
    """The arrow files of a ``save_to_disk`` folder (a Dataset, or one split of a DatasetDict)."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads(read_regular(folder / "dataset_dict.json")).get("splits", [])
        wanted = split or ("train" if "train" in splits or len(splits) != 1 else splits[0])
        if wanted not in splits:
            raise SourceProblem(f"no split {wanted!r}; the saved DatasetDict has {', '.join(splits)}",
                                "missing_split", 'choose one with "split"')
        folder = folder / wanted
    state = json.loads(read_regular(folder / "state.json"))
    return [folder / entry["filename"] for entry in state.get("_data_files", [])], folder.name


def read_folder(folder: Path, name: str, spec: SourceSpec, *, hub: bool = False) -> SourceRows:
    problems: list[Problem] = []
    saved = (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()
    if saved:
        files, _ = read_saved(folder, spec.split)
        kind = "save_to_disk"
    else:
        files = data_files(folder)
        if hub or spec.split or spec.subset:
            files = select_split(folder, files, spec.split, spec.subset)
        kind = "folder"
    if not files:
        raise SourceProblem(f"the folder holds no data files ({', '.join(FILE_SUFFIXES)})", "empty_file")
    digest = hashlib.sha256()
    rows: list[tuple[int, Any]] = []
    origin: list[str] = []
    units = set()
    offset = 0
    for path in files:
        relative = path.relative_to(folder).as_posix()
        file_rows, unit, raw = read_file(path, f"{name}/{relative}", problems)
        digest.update(relative.encode() + b"\0" + hashlib.sha256(raw).digest())
        units.add(unit)
        if unit == "row" and (saved or hub):  # one row index over the whole dataset, as ds[i]
            file_rows = [(offset + i, row) for i, row in file_rows]
            offset += len(file_rows)
        rows += file_rows
        origin += [f"{name}/{relative}"] * len(file_rows)
    if saved or (hub and units == {"row"}):
        origin = []  # the whole dataset is one table: the row index says where
    return SourceRows(name, rows, "row" if units == {"row"} else "line", origin,
                      "sha256:" + digest.hexdigest(), {"kind": kind, "files": len(files)}, problems=problems)


# --- the built-in sources ----------------------------------------------------------------------

class LocalSource(DataSource):
    name: ClassVar[str] = "local"
    description: ClassVar[str] = ("Local .jsonl/.json/.parquet/.csv/.tsv/.arrow files, folders of them, "
                                  "save_to_disk folders.")

    def claims(self, location: str) -> bool:
        return "://" not in location

    def read(self, spec: SourceSpec) -> SourceRows:
        path = Path(spec.path).expanduser()
        if path.is_dir():
            return read_folder(path, spec.path, spec)
        problems: list[Problem] = []
        rows, unit, raw = read_file(path, spec.path, problems)
        return SourceRows(spec.path, rows, unit, [], "sha256:" + hashlib.sha256(raw).hexdigest(),
                          {"kind": "file", "format": path.suffix.lower().lstrip(".")}, problems=problems)


class HubSource(DataSource):
    name: ClassVar[str] = "hub"
    description: ClassVar[str] = "A Hugging Face hub dataset: hf://owner/name[/subset][@revision][:split]."

    def claims(self, location: str) -> bool:
        return location.startswith(HUB_PREFIX)

    def read(self, spec: SourceSpec) -> SourceRows:
        match = HUB_PATTERN.fullmatch(spec.path)
        if match is None:
            raise SourceProblem("not a hub dataset location", "hub_location",
                                "write hf://owner/name[/subset][@revision][:split]")
        repo = match["repo"]
        revision = spec.revision or match["revision"]
        split = spec.split or match["split"]
        subset = spec.subset or match["subset"]
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        try:
            # The cache named now (huggingface_hub reads HF_HUB_CACHE once, when imported).
            folder = Path(snapshot_download(repo, repo_type="dataset", revision=revision,
                                            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                            local_files_only=offline))
        except LocalEntryNotFoundError:
            raise SourceProblem(f"hub dataset {repo} (revision {revision or 'main'}) is not in the local hub cache "
                                "and HF_HUB_OFFLINE is set", "hub_missing",
                                "download it once online (huggingface-cli download --repo-type dataset "
                                f"{repo}) or unset HF_HUB_OFFLINE") from None
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise SourceProblem(f"hub dataset {repo}: {exc}", "hub_missing") from None
        commit = folder.name
        shown = f"hf://{repo}{'/' + subset if subset else ''}@{commit[:12]}:{split or 'train'}"
        local = SourceSpec(str(folder), split=split or "train", subset=subset)
        rows = read_folder(folder, shown, local, hub=True)
        rows.info.update({"kind": "hub", "repo": repo, "revision": commit, "split": split or "train",
                          "subset": subset})
        return rows


@hookimpl
def register_data_sources(register: Callable[[DataSource], None]) -> None:
    register(LocalSource())
    register(HubSource())


# --- from a config value to sources ------------------------------------------------------------

def source_specs(value: Any) -> list[SourceSpec]:
    """The sources of a resolved config's ``dataset`` (a location, an object or a list)."""
    items = value if isinstance(value, list) else [value]
    specs = []
    for item in items:
        if isinstance(item, str):
            specs.append(SourceSpec(item))
            continue
        raw = dict(item)
        specs.append(SourceSpec(
            path=raw["path"], source=raw.get("source"), split=raw.get("split"), subset=raw.get("subset"),
            revision=raw.get("revision"), format=raw.get("format"), columns=dict(raw.get("columns") or {}),
            ignore_columns=list(raw.get("ignore_columns") or []), weight=raw.get("weight"),
            fraction=raw.get("fraction"), raw=raw))
    return specs


def _hub_like(location: str) -> bool:
    return (not Path(location).is_absolute() and HUB_LIKE.fullmatch(location) is not None
            and Path(location).suffix.lower() not in FILE_SUFFIXES)


def _resolve_location(location: str, base: Path) -> str:
    if "://" in location or _hub_like(location):
        return location  # a hub ID, a plugin's URL, or owner/name decided when read
    try:
        path = Path(location).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())
    except (OSError, RuntimeError, ValueError):  # a NUL byte, a symlink loop: the path check says why
        return location


def locations(value: Any) -> list[str]:
    """Every location string in a (possibly not yet valid) ``dataset`` value."""
    items = value if isinstance(value, list) else [value]
    found = [item if isinstance(item, str) else item.get("path") for item in items
             if isinstance(item, (str, Mapping))]
    return [location for location in found if isinstance(location, str)]


def resolve_locations(value: Any, base: Path) -> Any:
    """``dataset`` with relative local paths made absolute against ``base`` (the config's folder).
    URLs and ``owner/name`` strings stay as written: they are decided when read."""
    if isinstance(value, str) and value.strip():
        return _resolve_location(value, base)
    if isinstance(value, Mapping) and isinstance(value.get("path"), str) and value["path"].strip():
        return {**value, "path": _resolve_location(value["path"], base)}
    if isinstance(value, list):
        return [resolve_locations(item, base) for item in value]
    return value


def choose_source(spec: SourceSpec, sources: Mapping[str, DataSource], base: Path) -> tuple[DataSource,
                                                                                         SourceSpec, list[str]]:
    """The source that reads ``spec``, the spec it reads, and a note when the choice had two
    candidates."""
    if spec.source:
        if spec.source not in sources:
            raise SourceProblem(f"no data source {spec.source!r} is installed", "enum",
                                f"installed: {', '.join(sorted(sources))}")
        chosen = sources[spec.source]
        if chosen.name == "local" and not Path(spec.path).is_absolute():
            spec.path = str((base / spec.path).resolve())
        if chosen.name == "hub" and not spec.path.startswith(HUB_PREFIX):
            spec.path = HUB_PREFIX + spec.path
        return chosen, spec, []
    if _hub_like(spec.path):
        original = spec.path
        local = (base / original).resolve()
        if local.exists():
            spec.path = str(local)
            return sources["local"], spec, [
                f"dataset {original!r}: read the local path {local}; write hf://{original} for the hub "
                "dataset of that name"]
        spec.path = HUB_PREFIX + original
        return sources["hub"], spec, [
            f"dataset {original!r}: no such local file or folder ({local}), so it is read as the hub dataset "
            f"hf://{original}; write hf://{original} to say so, or ./{original} for a local path"]
    for source in sources.values():
        if source.claims(spec.path):
            return source, spec, []
    raise SourceProblem(f"no installed data source reads {spec.path!r}", "unknown_source",
                        f"installed: {', '.join(sorted(sources))}")


def builtin_sources() -> dict[str, DataSource]:
    return {"local": LocalSource(), "hub": HubSource()}
