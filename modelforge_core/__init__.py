"""ModelForge: fine-tune language models from one JSON training config.

The public API for plugin authors lives in :mod:`modelforge_core.api` (component base classes)
and :mod:`modelforge_core.hookspecs` (the hooks); :data:`hookimpl` marks implementations.
"""

from __future__ import annotations

from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
