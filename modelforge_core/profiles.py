"""``compute_specs`` profiles: the values each hardware profile fills in, read from data files.

A profile only fills fields the user left unset, and never a value that would contradict the
user's own choices (a 16-bit base under ``strategy: qlora``, 4-bit when the user asked for 8-bit).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

PROFILE_NAMES = ("low_end", "mid_range", "high_end")


@lru_cache(maxsize=None)
def load_profile(name: str) -> dict[str, Any]:
    """The profile document ``profiles/<name>.json`` shipped with the core."""
    text = resources.files("modelforge_core").joinpath("profiles", f"{name}.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def profile_values(name: str, user: Mapping[str, Any]) -> dict[str, Any]:
    """The settings profile ``name`` contributes to a config whose user values are ``user``."""
    settings = dict(load_profile(name)["settings"])
    if user.get("strategy") == "qlora" or user.get("use_8bit") is True:
        settings.pop("use_4bit", None)
    if user.get("use_4bit") is False or user.get("use_8bit") is True:
        settings.pop("use_nested_quant", None)
        settings.pop("bnb_4bit_compute_dtype", None)
    return {k: v for k, v in settings.items() if k not in user}
