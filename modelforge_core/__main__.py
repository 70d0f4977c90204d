"""``python -m modelforge_core``: the same as the ``modelforge`` command (for ``accelerate launch -m``).

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from .cli import run

if __name__ == "__main__":
    run()
