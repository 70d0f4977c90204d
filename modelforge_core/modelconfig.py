"""The one reader of a model's ``config.json``: the memory plan and the training both use it,
so they pick the same head for the same model.

Nothing is downloaded and nothing heavy is imported.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _hub_cache_dirs() -> list[Path]:
    dirs = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    dirs.append(Path(home) / "hub")
    return dirs


def find_model_config(model_name: str) -> tuple[dict[str, Any], str] | None:
    """The ``config.json`` of ``model_name`` and where it was found, without any download.

    Looks in a local model folder, then in the Hugging Face cache, then among the shapes of the
    models the profiles recommend (``profiles/model_shapes.json``). ``None`` when none has it.
    """
    folder = Path(model_name).expanduser()
    candidates = [folder / "config.json"]
    if "/" in model_name and not folder.exists():
        repo = "models--" + model_name.replace("/", "--")
        for root in _hub_cache_dirs():
            snapshots = root / repo / "snapshots"
            ref = root / repo / "refs" / "main"
            if ref.is_file():
                candidates.append(snapshots / ref.read_text("utf-8").strip() / "config.json")
            if snapshots.is_dir():
                candidates.extend(sorted(snapshots.glob("*/config.json")))
    for path in candidates:
        if path.is_file():
            try:
                data = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                return data, str(path)
    from .profiles import known_model_shapes

    for name, shape in known_model_shapes().items():
        if name.casefold() == model_name.casefold():
            return dict(shape), f"the known shape of {name} (modelforge_core/profiles/model_shapes.json)"
    return None


def read_model_config(model_name: str) -> dict[str, Any] | None:
    """The ``config.json`` of ``model_name`` as :func:`find_model_config` finds it, or ``None``."""
    found = find_model_config(model_name)
    return dict(found[0]) if found else None
