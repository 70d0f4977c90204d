"""The unsloth provider: ``FastLanguageModel`` with unsloth's own LoRA and checkpointing.

unsloth patches transformers and TRL for the whole process when it is imported, so it is
imported only inside :meth:`UnslothProvider.load`, never when plugins are registered.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import LoadedModel, LoadRequest, Provider


class UnslothProvider(Provider):
    name: ClassVar[str] = "unsloth"
    description: ClassVar[str] = "unsloth FastLanguageModel: faster LoRA/QLoRA in less memory (causal LMs)."
    heads: ClassVar[frozenset[str]] = frozenset({"causal-lm"})
    tasks: ClassVar[frozenset[str] | None] = frozenset({"text-generation"})
    strategies: ClassVar[frozenset[str] | None] = frozenset({"sft", "qlora", "dpo"})

    def check_environment(self) -> str | None:
        if importlib.util.find_spec("unsloth") is None:
            return ("the unsloth provider needs the unsloth package, which is not installed in this "
                    "Python environment: run `make unsloth-env` and use .venv-unsloth/bin/modelforge, "
                    "or set provider to huggingface")
        return None

    def load(self, request: LoadRequest) -> LoadedModel:
        from .loading import load

        return load(request)


@hookimpl
def register_providers(register: Callable[[Provider], None]) -> None:
    register(UnslothProvider())
