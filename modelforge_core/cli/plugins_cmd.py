"""``modelforge plugins``: what is installed, what each plugin registers and can do."""

from __future__ import annotations

from typing import Any

import click

from .output import dump_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins(as_json: bool) -> None:
    """List the installed plugins: name, distribution, version, hooks, components and
    their capabilities."""
    from ..plugins import get_plugins

    loaded = get_plugins()
    rows: list[dict[str, Any]] = []
    for name, info in sorted(loaded.infos.items()):
        components = [
            {"kind": c.kind, "name": c.name, "description": c.description,
             "capabilities": c.capabilities(),
             "options": sorted((c.options_schema or {}).get("properties", {}))}
            for c in loaded.registry.components() if loaded.registry.owner_of(c).name == name
        ]
        rows.append({"name": name, "distribution": info.distribution, "version": info.version,
                     "hooks": loaded.hook_names(name), "components": components})
    skipped = [{"name": s.name, "distribution": s.distribution, "reason": s.reason}
               for s in loaded.skipped]
    if as_json:
        dump_json({"plugins": rows, "skipped": skipped})
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


def _short(value: Any) -> str:
    if value is None:
        return "any"
    if isinstance(value, list):
        return "|".join(str(v) for v in value) or "none"
    return str(value)
