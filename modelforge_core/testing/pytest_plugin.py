"""The plugin-author kit: pytest fixtures that build tiny offline models, write sample
datasets and run whole trainings. Registered through the ``pytest11`` entry point, so any
project that installs ``modelforge-core`` can use them::

    def test_my_strategy(tiny_causal_lm, sample_dataset, run_training):
        outcome = run_training(tiny_config(tiny_causal_lm, sample_dataset("text-generation"),
                                           strategy="my-strategy"))
        assert outcome.metrics["after"]["eval_loss"] < outcome.metrics["before"]["eval_loss"]

Importing this module is cheap (no torch): fixtures import what they need when used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from .datasets import sample_rows, write_jsonl


def tiny_config(model: str | Path, dataset: str | Path, **overrides: Any) -> dict[str, Any]:
    """A config that trains a tiny model in seconds on a CPU; ``overrides`` win."""
    config: dict[str, Any] = {
        "task": "text-generation",
        "model_name": str(model),
        "dataset": str(dataset),
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


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never write prepared datasets into the user's ``~/.cache/modelforge``."""
    import os

    os.environ.setdefault("MODELFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("modelforge-cache")))


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init Llama with a byte-level BPE tokenizer and a ChatML template (no pad token)."""
    from .tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-lm"))


@pytest.fixture(scope="session")
def pretrained_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's tiny Llama (hidden size 128) given some language by ``pretrain_causal_lm``:
    built once per test session (about 30 s on two idle CPU cores), shared by every test that
    needs a base whose generations already look like sentences (after-training, grpo).
    Read-only: copy it before changing it."""
    from .tiny import build_tiny_causal_lm, pretrain_causal_lm

    base = tmp_path_factory.mktemp("pretrained-causal-lm") / "base-model"
    build_tiny_causal_lm(base, hidden_size=128)
    return pretrain_causal_lm(base)


@pytest.fixture(scope="session")
def tiny_seq2seq_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init T5 with a unigram tokenizer."""
    from .tiny import build_tiny_seq2seq_lm

    return build_tiny_seq2seq_lm(tmp_path_factory.mktemp("tiny-seq2seq-lm"))


@pytest.fixture(scope="session")
def tiny_qa_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init BERT encoder with a WordPiece tokenizer (span or classification heads)."""
    from .tiny import build_tiny_qa_encoder

    return build_tiny_qa_encoder(tmp_path_factory.mktemp("tiny-qa-encoder"))


@pytest.fixture
def sample_dataset(tmp_path: Path) -> Callable[..., Path]:
    """``sample_dataset(task, shape="supervised", fmt="io")`` writes a learnable JSONL file."""

    def make(task: str = "text-generation", *, shape: str = "supervised", fmt: str = "io") -> Path:
        name = f"{task}-{shape}-{fmt}.jsonl"
        return write_jsonl(tmp_path / name, sample_rows(task, shape=shape, fmt=fmt))

    return make


@pytest.fixture
def run_training(tmp_path: Path) -> Callable[..., Any]:
    """``run_training(config_dict, plugins=None)`` validates, resolves and trains a config,
    with the run folder under the test's temporary directory; returns the outcome
    (``run_dir``, ``status``, ``metrics``)."""

    def run(config: Mapping[str, Any], *, plugins: Any = None) -> Any:
        from ..config import resolve_config
        from ..orchestrate import train
        from ..training import Display

        resolved = resolve_config(dict(config), plugins=plugins, base_dir=tmp_path)
        return train(resolved, plugins=plugins, display=Display(enabled=False), runs_root=tmp_path / "runs")

    return run
