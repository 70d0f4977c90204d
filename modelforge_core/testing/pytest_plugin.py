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

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .configs import tiny_config
from .datasets import sample_rows, write_jsonl

if TYPE_CHECKING:
    from ..api import Task

__all__ = ["tiny_config"]

#: The ini option (``[tool.pytest.ini_options]``) that opts into a data cache of the test
#: session's own, instead of ``~/.cache/modelforge``.
ISOLATE_OPTION = "modelforge_isolated_data_cache"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(ISOLATE_OPTION, type="bool", default=False,
                  help="modelforge: keep prepared datasets in a temporary cache of the test session "
                       "(sets MODELFORGE_CACHE_DIR unless it is set)")


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """With ``modelforge_isolated_data_cache = true`` in the project's pytest settings (opt-in),
    tests never write prepared datasets into the user's ``~/.cache/modelforge``. Without it
    nothing is changed: installing the core does not alter other projects' test sessions."""
    import os

    if request.config.getini(ISOLATE_OPTION):
        os.environ.setdefault("MODELFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("modelforge-cache")))


#: Set to 1 to run every test as on a CPU with AVX-512 BF16 (bitsandbytes' CPU repack switch on).
FORCE_REPACK_ENV = "MODELFORGE_FORCE_BNB_CPU_REPACK"


@pytest.fixture(scope="session", autouse=True)
def _bnb_cpu_repack_from_environment() -> Iterator[None]:
    """``MODELFORGE_FORCE_BNB_CPU_REPACK=1``: the whole session takes the branch of a CPU with
    AVX-512 BF16 (see :func:`force_bnb_cpu_repack`), whatever this CPU has."""
    import os

    if os.environ.get(FORCE_REPACK_ENV) != "1":
        yield
        return
    import importlib

    modules: Any = importlib.import_module("bitsandbytes.nn.modules")
    original = modules.has_avx512bf16
    modules.has_avx512bf16 = lambda: True
    try:
        yield
    finally:
        modules.has_avx512bf16 = original


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init Llama with a byte-level BPE tokenizer and a ChatML template (no pad token)."""
    from .tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-lm"))


@pytest.fixture(scope="session")
def tiny_qwen2_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init Qwen2 (biased q/k/v projections) with the same tokenizer as ``tiny_causal_lm``."""
    from .tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-qwen2-lm"), architecture="qwen2")


@pytest.fixture
def force_bnb_cpu_repack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn on bitsandbytes' AVX-512 BF16 CPU repack switch for every ``Linear4bit`` built during
    the test, as on a CPU with that flag (the repack is plain torch: it runs on any CPU)."""
    monkeypatch.setattr("bitsandbytes.nn.modules.has_avx512bf16", lambda: True)


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
    """``sample_dataset(task, shape="supervised", fmt="io")`` writes a learnable JSONL file.

    ``task`` is a task's name or a :class:`~modelforge_core.api.Task`: any task that declares
    :attr:`~modelforge_core.api.Task.sample_rows` gets them; the built-in tasks get the kit's
    synthetic datasets."""

    def make(task: str | Task = "text-generation", *, shape: str = "supervised", fmt: str = "io") -> Path:
        name = f"{task if isinstance(task, str) else task.name}-{shape}-{fmt}.jsonl"
        return write_jsonl(tmp_path / name, sample_rows(task, shape=shape, fmt=fmt))

    return make


@pytest.fixture
def run_training(tmp_path: Path) -> Callable[..., Any]:
    """``run_training(config_dict, plugins=None)`` validates, resolves and trains a config,
    with the run folder under the test's temporary directory; returns the outcome
    (``run_dir``, ``status``, ``metrics``)."""

    def run(config: Mapping[str, Any], *, plugins: Any = None) -> Any:
        from .runner import train_config

        return train_config(config, tmp_path, plugins=plugins)

    return run
