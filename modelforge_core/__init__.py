"""ModelForge: fine-tune language models from one JSON training config.

The public API for plugin authors (docs/plugins.md, "The public API") is this package's
:data:`hookimpl` and five modules: :mod:`modelforge_core.api` (component base classes and what
they exchange), :mod:`modelforge_core.hookspecs` (the hooks), :mod:`modelforge_core.errors`,
:mod:`modelforge_core.trainer` (the trainer kit) and :mod:`modelforge_core.testing` (the test
kit). Every other module is internal and may change in any release.
"""

from __future__ import annotations

from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
