"""Printing problems and resolved configs for people (and as JSON for programs)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from ..errors import Problem, ValidationFailed

#: At most this many problems are printed; the rest are counted.
SCREENFUL = 20


def problem_line(problem: Problem) -> str:
    where = problem.location()
    prefix = f"{where}: " if where else ""
    return f"{prefix}{problem.path}: {problem.message}"


def print_problems(failure: ValidationFailed, *, err: bool = False) -> None:
    problems = failure.problems
    count = len(problems) + failure.omitted
    click.secho(f"{failure.subject} is invalid ({count} problem{'s' if count != 1 else ''}):",
                fg="red", bold=True, err=err)
    for problem in problems[:SCREENFUL]:
        click.echo(f"  {problem_line(problem)}", err=err)
        if problem.hint:
            click.secho(f"      hint: {problem.hint}", dim=True, err=err)
    rest = count - min(len(problems), SCREENFUL)
    if rest > 0:
        click.echo(f"  ... and {rest} more", err=err)


def problems_json(failure: ValidationFailed) -> dict[str, Any]:
    return {"valid": False, "subject": failure.subject,
            "error_count": len(failure.problems) + failure.omitted,
            "errors": [p.to_json() for p in failure.problems]}


def dump_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def format_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def print_resolved(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    rows: list[tuple[str, str, str]] = []

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key in node:
            dotted = prefix + key
            value = node[key]
            if isinstance(value, Mapping) and value:
                walk(value, dotted + ".")
            else:
                rows.append((dotted, format_value(value), sources.get(dotted, "default")))

    walk(values, "")
    width = max(len(r[0]) for r in rows)
    vwidth = min(max(len(r[1]) for r in rows), 48)
    for key, value, source in rows:
        click.echo(f"{key:<{width}}  {value:<{vwidth}}  ({source})")
