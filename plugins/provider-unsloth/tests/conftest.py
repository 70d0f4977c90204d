"""The unsloth tests run only in ``.venv-unsloth`` (``make test-unsloth``), in a pytest process
of their own: importing unsloth patches transformers and TRL for the whole process, and it caps
transformers, trl and datasets below the versions the main suite runs with (DESIGN.md,
environment facts).

Where unsloth is not installed (the main ``.venv``), this folder holds nothing to collect, so
the main suite neither collects nor skips these tests. Where it is, unsloth is imported here,
before any fixture imports transformers, as unsloth asks of every program that uses it.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("unsloth") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    from modelforge_provider_unsloth.environment import import_unsloth

    import_unsloth()
