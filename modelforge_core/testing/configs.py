"""Configs for tests and the demo (no pytest needed: ``modelforge demo`` uses them)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def tiny_config(model: str | Path, dataset: str | Path | Mapping[str, Any] | list[Any],
                **overrides: Any) -> dict[str, Any]:
    """A config that trains a tiny model in seconds on a CPU; ``overrides`` win. ``dataset`` is a
    path or a dataset object or list (sources, mixtures)."""
    config: dict[str, Any] = {
        "task": "text-generation",
        "model_name": str(model),
        "dataset": dataset if isinstance(dataset, (Mapping, list)) else str(dataset),
        "compute_specs": "low_end",
        "use_4bit": False,
        "gradient_checkpointing": False,
        "optim": "adamw_torch",
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "num_train_epochs": 3,
        "learning_rate": 3e-3,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "eval_steps": 1000,
        "logging_steps": 5,
        "warmup_ratio": 0.0,
        "group_by_length": False,
        "max_seq_length": 128,
    }
    config.update(overrides)
    return config
