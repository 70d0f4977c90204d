"""The plugin-author test kit. Public API (docs/plugins.md, "Testing a plugin").

- :func:`use_plugins`, :func:`resolved_config`, :func:`train_config`, :func:`run_split`
  (:mod:`.runner`): register a plugin for a block, validate and resolve a config, train it
  quietly in a test's folder, the rows a run trained and evaluated on;
- :mod:`.datasets`: sample rows (``sample_rows``, ``preference_rows``...) and ``write_jsonl``;
- :mod:`.tiny`: tiny offline models (``build_tiny_causal_lm``...);
- :mod:`.pytest_plugin`: the pytest fixtures (``tiny_causal_lm``, ``sample_dataset``,
  ``run_training``...) and ``tiny_config``.

Within a minor release series these names stay and their parameters are only added. Importing
this package is cheap and needs neither pytest nor torch.
"""

from __future__ import annotations

from .runner import resolved_config, run_split, train_config, use_plugins

__all__ = ["resolved_config", "run_split", "train_config", "use_plugins"]
