"""Reading every source of a config's ``dataset``, recognising each row's format, checking the
rows with the task, and mixing several sources: what ``modelforge_core.data.check_dataset`` does.

Every problem is collected (a screenful, then a count) and reported at once, each named by its
source and its line (text files) or row index (parquet, arrow, hub datasets), before any model
is loaded. No heavy imports unless a source needs them (pyarrow for parquet/arrow,
huggingface_hub for the hub).

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .api import SourceRows, SourceSpec, call_check_row
from .errors import Problem, ValidationFailed
from .rowformats import detect
from .sources import SourceProblem, choose_source, source_specs

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
    #: ``sha256:<hex>`` of exactly the bytes these rows were parsed from (one read of each file;
    #: several sources: over their fingerprints), for the manifest and resume.
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



class _Problems:
    """All problems of all sources, the first :data:`modelforge_core.data.MAX_PROBLEMS` in full."""

    def __init__(self) -> None:
        self.limit = MAX_PROBLEMS
        self.problems: list[Problem] = []
        self.omitted = 0

    def add(self, problem: Problem) -> None:
        if len(self.problems) < self.limit:
            self.problems.append(problem)
        else:
            self.omitted += 1


def _where(read: SourceRows, index: int, ref: int) -> dict[str, Any]:
    file = read.files[index] if read.files else read.name
    return {"file": file, "row": ref} if read.unit == "row" else {"file": file, "line": ref}


def _base_dir(config: Mapping[str, Any]) -> Path:
    base = getattr(config, "base_dir", None)
    return Path(base) if base else Path.cwd()


def _sample(count: int, keep: int, rng: random.Random) -> list[int]:
    """``keep`` indices out of ``count``: a seeded sample without repeats while it can, then
    whole passes again (upsampling), in source order within each pass."""
    chosen: list[int] = []
    while keep - len(chosen) >= count:
        chosen += range(count)
    rest = keep - len(chosen)
    return chosen + sorted(rng.sample(range(count), rest)) if rest else chosen


def mix(counts: list[int], specs: list[SourceSpec], seed: int) -> list[list[int]]:
    """Which rows of each source the run uses: ``fraction`` keeps that share of a source;
    when any source has a ``weight``, the mixture keeps the total row count and gives each
    source ``weight / sum(weights)`` of it (a source without one weighs 1), upsampling a small
    source by repeating it. Seeded by the config's ``seed``."""
    rng = random.Random(seed)
    kept = []
    for count, spec in zip(counts, specs, strict=True):
        fraction = spec.fraction if spec.fraction is not None else 1.0
        kept.append(max(1, round(count * fraction)) if count else 0)
    if any(spec.weight is not None for spec in specs):
        weights = [spec.weight if spec.weight is not None else 1.0 for spec in specs]
        total = sum(kept)
        kept = [max(1, round(total * w / sum(weights))) if c else 0 for w, c in zip(weights, counts, strict=True)]
    return [_sample(count, keep, rng) for count, keep in zip(counts, kept, strict=True)]


def load_dataset_rows(config: Mapping[str, Any], *, plugins: Plugins, path: str | Path | None = None,
                      shape: str | None = None) -> Dataset:
    """Read, recognise, check and mix the rows of ``config["dataset"]`` (or of the file ``path``)."""
    task = plugins.registry.tasks[config["task"]]
    strategy = plugins.registry.strategies[config["strategy"]]
    expected = shape or strategy.data_shape
    specs = source_specs(config["dataset"])
    if path is not None:
        first = specs[0] if len(specs) == 1 else SourceSpec(str(path))
        specs = [SourceSpec(str(path), format=first.format, columns=first.columns,
                            ignore_columns=first.ignore_columns, raw=first.raw)]
    formats = tuple(task.formats)
    sources = dict(sorted(plugins.registry.sources.items(), key=lambda item: item[0] == "local"))
    base = _base_dir(config)
    collected = _Problems()
    notes: list[str] = []
    per_source: list[tuple[SourceSpec, SourceRows, list[dict[str, Any]], list[int], Counter[str], list[str]]] = []
    shapes: Counter[str] = Counter()
    for given in specs:
        before = len(collected.problems) + collected.omitted
        spec = given
        try:
            source, spec, chosen_notes = choose_source(given, sources, base)
            notes += chosen_notes
            read = source.read(spec)
        except SourceProblem as exc:
            collected.add(Problem("(row)" if exc.line else "dataset", str(exc), hint=exc.hint, code=exc.code,
                                  file=exc.file or spec.path, line=exc.line))
            continue
        notes += read.notes
        for problem in read.problems:
            collected.add(problem)
        rows: list[dict[str, Any]] = []
        refs: list[int] = []
        places: list[str] = []
        found: Counter[str] = Counter()
        for index, (ref, raw_row) in enumerate(read.rows):
            where = _where(read, index, ref)
            if not isinstance(raw_row, dict):
                collected.add(Problem("(row)", f"a row must be a JSON object, got {type(raw_row).__name__}",
                                      code="type", **where))
                continue
            row: dict[str, Any] = raw_row
            if spec.columns or spec.ignore_columns:
                from .rowformats import apply_columns

                row, mapping_problems = apply_columns(raw_row, spec.columns, spec.ignore_columns)
                for problem in mapping_problems:
                    collected.add(Problem(problem.path, problem.message, problem.hint, problem.code, **where))
                if mapping_problems:
                    continue
            fmt_name = None
            if formats:
                detected = detect(row, formats, forced=spec.format, task=task.name)
                if detected.row is None or detected.format is None:
                    for problem in detected.problems:
                        collected.add(Problem(problem.path, problem.message, problem.hint, problem.code, **where))
                    continue
                row, fmt_name = detected.row, detected.format.name
            row_shape = task.row_shape(row)
            if row_shape is None:
                described = task.row_formats.get(expected, ())
                collected.add(Problem("(row)", f"fields {sorted(row)} match no {task.name} row format", code="shape",
                                      hint=f"expected one of: {'; '.join(described)}" if described else None,
                                      **where))
                continue
            shapes[row_shape] += 1
            if row_shape != expected:
                described = task.row_formats.get(expected, ())
                collected.add(Problem("(row)", f"a {row_shape} row, but strategy {strategy.name!r} trains on "
                                      f"{expected} rows", code="wrong_shape",
                                      hint=f"expected one of: {'; '.join(described)}" if described else None,
                                      **where))
                continue
            problems = call_check_row(task, row, row_shape, config)
            for problem in problems:
                collected.add(Problem(problem.path, problem.message, problem.hint, problem.code, **where))
            if not problems:
                rows.append(row)
                refs.append(ref)
                places.append(f"{where['file']} row {ref}" if "row" in where else f"{where['file']}:{ref}")
                found[fmt_name or "task"] += 1
        if not rows and len(collected.problems) + collected.omitted == before:
            collected.add(Problem("dataset", "the dataset has no rows", code="empty_file", file=read.name))
        per_source.append((spec, read, rows, refs, found, places))
    if collected.problems or collected.omitted:
        subject = f"dataset {specs[0].path}" if len(specs) == 1 else f"dataset ({len(specs)} sources)"
        raise ValidationFailed(collected.problems, subject=subject, omitted=collected.omitted)
    chosen = mix([len(entry[2]) for entry in per_source], [entry[0] for entry in per_source],
                 int(config.get("seed", 42)))
    all_rows: list[dict[str, Any]] = []
    all_refs: list[int] = []
    all_places: list[str] = []
    described_sources = []
    formats_seen: Counter[str] = Counter()
    for (spec, read, rows, refs, found, places), indices in zip(per_source, chosen, strict=True):
        all_rows += [rows[i] for i in indices]
        all_refs += [refs[i] for i in indices]
        all_places += [places[i] for i in indices]
        formats_seen.update(found)
        described_sources.append({
            "name": read.name, **read.info, "fingerprint": read.fingerprint, "rows": len(rows),
            "used_rows": len(indices), "formats": dict(found),
            **{k: v for k, v in spec.mapping().items() if v not in (None, {}, [])}})
    if len(per_source) == 1 and len(chosen[0]) == len(per_source[0][2]):
        name, fingerprint = per_source[0][1].name, per_source[0][1].fingerprint
    else:
        name = " + ".join(read.name for _, read, *_ in per_source)
        fingerprint = "sha256:" + hashlib.sha256(json.dumps(
            [[s["fingerprint"], s["used_rows"], s.get("weight"), s.get("fraction")] for s in described_sources]
            + [config.get("seed")]).encode()).hexdigest()
    return Dataset(name, all_rows, all_refs, expected, shapes, fingerprint=fingerprint, sources=described_sources,
                   formats=dict(formats_seen), notes=notes, where=all_places)
