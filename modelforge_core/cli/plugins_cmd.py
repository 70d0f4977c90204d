"""``modelforge plugins``: what is installed, what each plugin registers and can do."""

from __future__ import annotations

from typing import Any

import click

from ..errors import EnvironmentProblem, PluginError
from .output import dump_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--check", is_flag=True,
              help="Also compile each plugin's schema fragment with Ajv in strict mode, as the web page and "
                   "other-language validators do (needs Node.js); exit 1 when one cannot be compiled.")
def plugins(as_json: bool, check: bool) -> None:
    """List the installed plugins: name, distribution, version, hooks, components and
    their capabilities."""
    from ..plugins import get_plugins, plugins_report

    loaded = get_plugins()
    report = plugins_report(loaded)
    rows, skipped = report["plugins"], report["skipped"]
    problems: dict[str, str] | None = None
    if check:
        from ..ajv import plugin_schema_problems

        problems = plugin_schema_problems(loaded.registry)
        if problems is None:
            raise EnvironmentProblem("plugins --check compiles the schema fragments with Ajv, which needs Node.js, "
                                     "and `node` is not on the PATH here: install Node.js, or check without --check")
        report["schema_problems"] = problems
    if as_json:
        dump_json(report)
        _fail_on(problems)
        return
    for row in rows:
        click.secho(f"{row['name']}  ", bold=True, nl=False)
        click.echo(f"{row['distribution']} {row['version']}")
        click.echo(f"    hooks: {', '.join(row['hooks'])}")
        for comp in row["components"]:
            caps = ", ".join(f"{k}={_short(v)}" for k, v in comp["capabilities"].items())
            click.echo(f"    {comp['kind']} {comp['name']!r}: {comp['description']}")
            click.secho(f"        {caps}", dim=True)
            if comp["options"]:
                click.secho(f"        options: {', '.join(comp['options'])}", dim=True)
    for s in skipped:
        click.secho(f"{s['name']}  {s['distribution']}: skipped, {s['reason']}", dim=True)
    if not rows:
        click.echo("no plugins loaded")
    if problems is not None and not problems:
        click.echo("schema fragments: every one compiles with Ajv (strict mode)")
    _fail_on(problems)


def _fail_on(problems: dict[str, str] | None) -> None:
    """One error naming each fragment that Ajv cannot compile (exit code 2)."""
    if problems:
        raise PluginError("Ajv (strict mode) cannot compile " + "; ".join(
            f"the {name}: {problem}" for name, problem in sorted(problems.items()))
            + ": the web form and other-language validators would refuse the schema; fix the fragment "
              "(for example give every object schema \"type\": \"object\")")


def _short(value: Any) -> str:
    if value is None:
        return "any"
    if isinstance(value, list):
        return "|".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return "|".join(f"{k}->{v}" for k, v in value.items()) or "none"
    return str(value)
