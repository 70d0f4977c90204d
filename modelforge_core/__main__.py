"""``python -m modelforge_core``: the same as the ``modelforge`` command (for ``accelerate launch -m``)."""

from __future__ import annotations

from .cli import run

if __name__ == "__main__":
    run()
