"""``compute_specs`` profiles: the values each hardware profile fills in, read from data files.

A profile only fills fields the user left unset, and never a value that would contradict the
user's own choices (a 16-bit base under ``strategy: qlora``, 4-bit when the user asked for 8-bit).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

PROFILE_NAMES = ("low_end", "mid_range", "high_end")


#: Settings that only mean something for a 4-bit base: a user who sets one asked for 4-bit.
FOUR_BIT_SETTINGS = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "use_nested_quant")


@cache
def load_profile(name: str) -> dict[str, Any]:
    """The profile document ``profiles/<name>.json`` shipped with the core.

    Cached: do not modify the returned dict (:func:`profile_values` copies what it changes).
    """
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown compute_specs profile {name!r}; known: {', '.join(PROFILE_NAMES)}")
    text = resources.files("modelforge_core").joinpath("profiles").joinpath(f"{name}.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def profile_values(name: str, user: Mapping[str, Any]) -> dict[str, Any]:
    """The settings profile ``name`` contributes to a config whose user values are ``user``."""
    settings = dict(load_profile(name)["settings"])
    wants_4bit = user.get("strategy") == "qlora" or any(key in user for key in FOUR_BIT_SETTINGS)
    if wants_4bit or user.get("use_8bit") is True:
        settings.pop("use_4bit", None)
    if user.get("use_4bit") is False or user.get("use_8bit") is True:
        for key in FOUR_BIT_SETTINGS:
            settings.pop(key, None)
    return {k: v for k, v in settings.items() if k not in user}
