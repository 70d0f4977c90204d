"""The web page served by ``modelforge serve`` at ``/``: plain ES modules, a stylesheet and a
vendored Ajv bundle in ``static/``, shipped inside the Python package so that installing it
needs no Node.js. ``build_ajv.mjs`` regenerates ``static/vendor/ajv2020.js`` from the Ajv in
``schema/node_modules`` (a test checks that the checked-in bundle is what it builds).

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
