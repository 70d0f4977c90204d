"""The unsloth provider: ``FastLanguageModel`` with unsloth's own LoRA and checkpointing.

unsloth patches transformers and TRL for the whole process when it is imported, so it is
imported only when a run uses this provider: at the start of that run (``on_run_start``,
before the core imports transformers, as unsloth asks) or, outside a run, when a model loads.
Never when plugins are registered or a config is validated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import LoadedModel, LoadRequest, Provider, RunInfo


class UnslothProvider(Provider):
    name: ClassVar[str] = "unsloth"
    description: ClassVar[str] = "unsloth FastLanguageModel: faster LoRA/QLoRA in less memory (causal LMs)."
    heads: ClassVar[frozenset[str]] = frozenset({"causal-lm"})
    tasks: ClassVar[frozenset[str] | None] = frozenset({"text-generation"})
    strategies: ClassVar[frozenset[str] | None] = frozenset({"sft", "qlora", "dpo"})
    multi_process: ClassVar[bool] = False
    single_process_reason: ClassVar[str] = ("unsloth trains in a single process only (it does not support multi-GPU "
                                            "data parallel training under accelerate/torchrun)")
    devices: ClassVar[frozenset[str] | None] = frozenset({"cuda", "xpu", "cpu"})
    devices_description: ClassVar[str] = "NVIDIA and AMD GPUs, Intel XPUs and, slowly, the CPU"
    #: unsloth keeps the unquantized parameters in the compute dtype.
    kbit_upcasts_to_fp32: ClassVar[bool] = False
    memory_note: ClassVar[str | None] = ("unsloth's own kernels and checkpointing usually need less than this "
                                         "estimate, which follows the peft way of preparing a model")
    libraries: ClassVar[tuple[str, ...]] = ("unsloth",)

    def check_environment(self) -> str | None:
        # Package metadata only: validation must not pay for (or suffer) importing unsloth.
        from .environment import unsloth_problem

        return unsloth_problem()

    def load(self, request: LoadRequest) -> LoadedModel:
        from .loading import load

        return load(request)


@hookimpl
def register_providers(register: Callable[[Provider], None]) -> None:
    register(UnslothProvider())


@hookimpl
def on_run_start(run: RunInfo) -> None:
    """Import unsloth before the core imports transformers, peft and trl for this run.

    unsloth applies all its optimizations only when it comes first (it warns otherwise), and
    this hook is the earliest point of a run at which nothing is loaded yet. A failure is left
    to :meth:`UnslothProvider.load`, which reports it as the run's error.
    """
    if run.config.get("provider") != UnslothProvider.name:
        return
    from modelforge_core.errors import EnvironmentProblem

    from .environment import import_unsloth

    try:
        import_unsloth()
    except EnvironmentProblem:
        return
