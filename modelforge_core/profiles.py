"""``compute_specs`` profiles: the values each hardware profile fills in, read from data files.

A profile only fills fields the user left unset, and never a value that would contradict the
user's own choices (a 16-bit base under a strategy that needs 4-bit, 4-bit when the user asked for 8-bit).

Precision is the one setting a profile cannot know when the config is resolved (that may be on
another machine than the training): a profile says ``"precision": "auto"``, and the training
sets fp16/bf16 for the hardware it runs on (see :func:`modelforge_core.hardware.apply_auto_precision`),
unless the user set either.

``profiles/model_shapes.json`` holds the ``config.json`` fields of the models the profiles
recommend, so ``modelforge plan`` can size them without downloading anything.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
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


def profile_precision(name: str) -> str:
    """The profile's precision: ``"auto"`` (chosen for the hardware at training time) or a fixed one."""
    return str(load_profile(name).get("precision", "auto"))


@cache
def known_model_shapes() -> dict[str, dict[str, Any]]:
    """``config.json`` fields of well-known hub models (by model ID), for planning offline."""
    text = resources.files("modelforge_core").joinpath("profiles").joinpath("model_shapes.json").read_text("utf-8")
    shapes = json.loads(text)["models"]
    return {name: dict(shape) for name, shape in shapes.items()}


def profile_values(name: str, user: Mapping[str, Any], *, needs_4bit: bool = False) -> dict[str, Any]:
    """The settings profile ``name`` contributes to a config whose user values are ``user``.

    ``needs_4bit``: the config's strategy trains only on a 4-bit base (:attr:`Strategy.needs_4bit`).
    """
    settings = dict(load_profile(name)["settings"])
    wants_4bit = needs_4bit or any(key in user for key in FOUR_BIT_SETTINGS)
    if wants_4bit or user.get("use_8bit") is True:
        settings.pop("use_4bit", None)
    if user.get("use_4bit") is False or user.get("use_8bit") is True:
        for key in FOUR_BIT_SETTINGS:
            settings.pop(key, None)
    return {k: v for k, v in settings.items() if k not in user}
