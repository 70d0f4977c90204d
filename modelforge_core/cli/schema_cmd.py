"""``modelforge schema``: print the effective (or canonical) JSON Schema."""

from __future__ import annotations

import click

from .output import dump_json


@click.command()
@click.option("--canonical", is_flag=True,
              help="Print the canonical schema file instead of the effective one.")
def schema(canonical: bool) -> None:
    """Print the JSON Schema that configs are validated against.

    By default the effective schema: the canonical schema extended with what the installed
    plugins contribute (their names, options and rules). Any Draft 2020-12 validator gives
    the same verdicts as `modelforge validate` with it.
    """
    from ..schema import canonical_schema, effective_schema

    if canonical:
        dump_json(canonical_schema())
        return
    from ..plugins import get_plugins

    dump_json(effective_schema(get_plugins().registry))
