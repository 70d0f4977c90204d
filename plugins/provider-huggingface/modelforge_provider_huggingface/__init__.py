"""The huggingface provider: transformers Auto classes, peft LoRA, bitsandbytes 4/8-bit."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import LoadedModel, LoadRequest, Provider


class HuggingFaceProvider(Provider):
    name: ClassVar[str] = "huggingface"
    description: ClassVar[str] = "transformers Auto classes + peft LoRA + bitsandbytes quantization (CPU and GPU)."
    heads: ClassVar[frozenset[str]] = frozenset(
        {"causal-lm", "seq2seq-lm", "question-answering", "sequence-classification"}
    )

    def load(self, request: LoadRequest) -> LoadedModel:
        from .loading import load

        return load(request)


@hookimpl
def register_providers(register: Callable[[Provider], None]) -> None:
    register(HuggingFaceProvider())
