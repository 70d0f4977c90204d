"""Reading a dataset file and checking it row by row, before any model is loaded.

No heavy imports here: ``modelforge validate --data`` runs this on 10,000-row files in a
fraction of a second. Rows are JSON objects, one per line (JSONL); a ``.json`` file holding an
array of objects is accepted too. A UTF-8 byte-order mark and blank lines are fine.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .api import call_check_row
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
    #: ``sha256:<hex>`` of exactly the bytes these rows were parsed from (one read of the file).
    fingerprint: str = ""

    def describe(self) -> str:
        return f"{len(self.rows)} rows OK ({self.shape})"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "rows": len(self.rows), "shape": self.shape}


class _Collector:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.omitted = 0
        #: The fingerprint of the bytes read, set by :func:`iter_rows`.
        self.fingerprint = ""

    def add(self, line: int | None, path: str, message: str, code: str, hint: str | None = None) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(path, message, hint=hint, code=code, file=self.file, line=line))
        else:
            self.omitted += 1

    def fail(self) -> ValidationFailed:
        return ValidationFailed(self.problems, subject=f"dataset {self.file}", omitted=self.omitted)


def iter_rows(path: Path, collector: _Collector) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, value)`` for every row; unreadable input is recorded in ``collector``."""
    from .safeio import describe_error, read_file

    try:
        read = read_file(path)
    except FileNotFoundError:
        collector.add(None, "dataset", "dataset file not found", "missing_file",
                      "dataset paths in a config file are relative to the config file's folder")
        return
    except IsADirectoryError:
        collector.add(None, "dataset", "is a folder, not a dataset file", "missing_file")
        return
    except (OSError, ValueError) as exc:
        collector.add(None, "dataset", f"cannot read the dataset: {describe_error(exc)}", "unreadable",
                      "a dataset must be a regular file (not a pipe, a device or a socket)")
        return
    raw, collector.fingerprint = read.data, read.fingerprint
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
        except RecursionError:
            collector.add(number, "(row)", f"invalid JSON: nested too deeply (more than {MAX_ROW_DEPTH} levels)",
                          "json")
            continue
        except ValueError as exc:  # Python's int-string limit: a number of thousands of digits
            collector.add(number, "(row)", f"invalid JSON: {exc}", "json")
            continue
        problem = value_problem(value)
        if problem is not None:
            collector.add(number, "(row)", problem, "json")
            continue
        yield number, value


#: Rows nested deeper than this are refused (no task reads below a few levels).
MAX_ROW_DEPTH = 100


def value_problem(value: Any) -> str | None:
    """Why a parsed row cannot be trained on though it is valid JSON: nesting deeper than
    :data:`MAX_ROW_DEPTH` or a lone surrogate (``"\\ud800"``, not encodable as UTF-8) in a string."""
    from .jsonpos import lone_surrogate

    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if lone_surrogate(item) is not None:
                return "a lone surrogate escape (\\ud800-\\udfff) is not a Unicode character; fix the text"
        elif isinstance(item, (dict, list)):
            if depth >= MAX_ROW_DEPTH:
                return f"nested too deeply (more than {MAX_ROW_DEPTH} levels)"
            children = list(item.items()) if isinstance(item, dict) else [(None, v) for v in item]
            for key, child in children:
                if key is not None:
                    stack.append((key, depth + 1))
                stack.append((child, depth + 1))
    return None


def check_dataset(config: Mapping[str, Any], *, plugins: Plugins | None = None,
                  path: str | Path | None = None, shape: str | None = None) -> Dataset:
    """Read and check the dataset of a resolved config; raise :class:`ValidationFailed`
    naming file, line and field for every bad row (a screenful, then a count).

    :param path: check this file instead of ``config["dataset"]``.
    :param shape: the data shape expected; default: the configured strategy's.
    """
    from .plugins import get_plugins

    plugins = plugins or get_plugins()
    task = plugins.registry.tasks[config["task"]]
    strategy = plugins.registry.strategies[config["strategy"]]
    expected = shape or strategy.data_shape
    file = Path(path or config["dataset"])
    collector = _Collector(str(path or config["dataset"]))
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    shapes: Counter[str] = Counter()
    formats = task.row_formats.get(expected, ())
    for line, row in iter_rows(file, collector):
        if not isinstance(row, dict):
            collector.add(line, "(row)", f"a row must be a JSON object, got {type(row).__name__}", "type")
            continue
        row_shape = task.row_shape(row)
        if row_shape is None:
            collector.add(line, "(row)", f"fields {sorted(row)} match no {task.name} row format",
                          "shape", f"expected one of: {'; '.join(formats)}" if formats else None)
            continue
        shapes[row_shape] += 1
        if row_shape != expected:
            collector.add(line, "(row)",
                          f"a {row_shape} row, but strategy {strategy.name!r} trains on {expected} rows",
                          "wrong_shape", f"expected one of: {'; '.join(formats)}" if formats else None)
            continue
        problems = call_check_row(task, row, row_shape, config)
        for problem in problems:
            collector.add(line, problem.path, problem.message, problem.code, problem.hint)
        if not problems:
            rows.append(row)
            lines.append(line)
    if not collector.problems and not collector.omitted and not rows:
        collector.add(None, "dataset", "the dataset has no rows", "empty_file")
    if collector.problems or collector.omitted:
        raise collector.fail()
    return Dataset(str(file), rows, lines, expected, shapes, fingerprint=collector.fingerprint)
