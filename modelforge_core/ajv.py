"""Plugin schema fragments compiled by Ajv in strict mode, as the web page compiles them.

Python's jsonschema accepts schemas that Ajv's strict mode refuses to compile (a ``required``
without ``"type": "object"``, an unknown keyword), and a fragment Ajv cannot compile would blank
the web form for every user. ``modelforge plugins --check`` and the server, when it starts, run
the page's own Ajv bundle (``web/static/vendor/ajv2020.js``) with Node.js on each component's
fragment and on the effective schema. Without Node.js the check cannot run: :func:`compile_errors`
returns ``None`` and the callers say so.

Importing this module is cheap.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Component
    from .plugins import Registry

SCRIPT = Path(__file__).parent / "web" / "ajv_check.mjs"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: The name under which the whole effective schema is checked.
EFFECTIVE = "effective schema"


def compile_errors(schemas: Mapping[str, Mapping[str, Any]], *, timeout: float = 60) -> dict[str, str | None] | None:
    """Ajv's (strict mode) compile error for each named schema, ``None`` where it compiles;
    ``None`` altogether when Node.js is not installed."""
    node = shutil.which("node")
    if node is None or not SCRIPT.is_file():
        return None
    try:
        result = subprocess.run([node, str(SCRIPT)], input=json.dumps(schemas), capture_output=True, text=True,
                                timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    verdicts: dict[str, str | None] = json.loads(result.stdout)
    return verdicts


def component_schema(component: Component, registry: Registry | None = None) -> dict[str, Any]:
    """The component's contribution alone, embedded as the effective schema embeds it: its
    options object under its name (a reward list it references inlined, from ``registry``'s
    rewards) and its rules in ``allOf``."""
    schema: dict[str, Any] = {"$schema": DRAFT, "type": "object", "properties": {}}
    if component.options_schema is not None:
        fragment = copy.deepcopy(dict(component.options_schema))
        if registry is not None:
            from .rewards import inline_reward_lists, reward_list_schema

            fragment = inline_reward_lists(fragment, reward_list_schema(registry))
        fragment.setdefault("type", "object")
        schema["properties"][component.name] = fragment
    if component.schema_rules:
        schema["allOf"] = copy.deepcopy(list(component.schema_rules))
    return schema


def plugin_schema_problems(registry: Registry) -> dict[str, str] | None:
    """``{"strategy dpo": "strict mode: ...", ...}`` for each component whose fragment Ajv
    cannot compile (and ``"effective schema"`` when the whole cannot); ``None`` without Node.js."""
    from .schema import effective_schema

    schemas: dict[str, Mapping[str, Any]] = {
        f"{component.kind} {component.name}": component_schema(component, registry)
        for component in registry.components() if component.options_schema is not None or component.schema_rules
    }
    schemas[EFFECTIVE] = effective_schema(registry)
    verdicts = compile_errors(schemas)
    if verdicts is None:
        return None
    return {name: error for name, error in verdicts.items() if error}
