"""Reading a dataset file and checking it row by row, before any model is loaded.

No heavy imports here: ``modelforge validate --data`` runs this on 10,000-row files in a
fraction of a second. Rows are JSON objects, one per line (JSONL); a ``.json`` file holding an
array of objects is accepted too. A UTF-8 byte-order mark and blank lines are fine.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Problem, ValidationFailed

if TYPE_CHECKING:
    from .plugins import Plugins

#: Problems kept in full; beyond this they are only counted.
MAX_PROBLEMS = 20


@dataclass
class Dataset:
    """Checked rows, the line each came from, and their shape."""

    file: str
    rows: list[dict[str, Any]]
    lines: list[int]
    shape: str
    shapes: Counter[str] = field(default_factory=Counter)
    #: ``sha256:...`` over the content read (one file: its bytes), for the manifest and resume.
    fingerprint: str = ""
    #: Each source: name, kind, fingerprint (and hub revision), rows read and used, formats, mapping.
    sources: list[dict[str, Any]] = field(default_factory=list)
    #: Rows by recognised row format (``alpaca``, ``sharegpt``, ...).
    formats: dict[str, int] = field(default_factory=dict)
    #: What the user should know (a location that could have been two things).
    notes: list[str] = field(default_factory=list)
    #: Where each row came from (``file:line`` or ``file row N``), in the order of :attr:`rows`.
    where: list[str] = field(default_factory=list)

    def describe(self) -> str:
        formats = ", ".join(f"{count} {name}" for name, count in sorted(self.formats.items()))
        return f"{len(self.rows)} rows OK ({self.shape}{': ' + formats if formats else ''})"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "rows": len(self.rows), "shape": self.shape, "fingerprint": self.fingerprint,
                "formats": self.formats, "sources": self.sources, "notes": self.notes}


class _Collector:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.omitted = 0

    def add(self, line: int | None, path: str, message: str, code: str, hint: str | None = None) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(path, message, hint=hint, code=code, file=self.file, line=line))
        else:
            self.omitted += 1

    def fail(self) -> ValidationFailed:
        return ValidationFailed(self.problems, subject=f"dataset {self.file}", omitted=self.omitted)


def iter_rows(path: Path, collector: _Collector) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, value)`` for every row; unreadable input is recorded in ``collector``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        collector.add(None, "dataset", "dataset file not found", "missing_file",
                      "dataset paths in a config file are relative to the config file's folder")
        return
    except IsADirectoryError:
        collector.add(None, "dataset", "is a folder, not a dataset file", "missing_file")
        return
    except OSError as exc:
        collector.add(None, "dataset", f"cannot read the dataset: {exc.strerror}", "unreadable")
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        collector.add(bad_line, "(row)", f"not UTF-8 text (byte {exc.start})", "encoding",
                      "save the file as UTF-8")
        return
    if not text.strip():
        collector.add(None, "dataset", "the dataset file is empty", "empty_file")
        return
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        from .jsonpos import loads_with_lines

        try:
            value, lines = loads_with_lines(text)
        except json.JSONDecodeError as exc:
            collector.add(exc.lineno, "(row)", f"invalid JSON: {exc.msg} (column {exc.colno})", "json")
            return
        for index, row in enumerate(value):
            yield lines.get((index,), 1), row
        return
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
            collector.add(number, "(row)", f"invalid JSON: {exc.msg} (column {exc.colno})", "json",
                          "each line must hold one complete JSON object")
            continue
        yield number, value


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
