"""The qlora strategy: supervised fine-tuning of a LoRA adapter on a 4-bit quantized base.

The schema makes ``use_4bit`` true for it; the provider quantizes (nf4/fp4, compute dtype,
nested quantization) and prepares the base for k-bit training.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import Strategy, TrainingJob, TrainResult


class QLoRAStrategy(Strategy):
    name: ClassVar[str] = "qlora"
    description: ClassVar[str] = "LoRA on a 4-bit (nf4/fp4) quantized base, k-bit preparation."
    data_shape: ClassVar[str] = "supervised"
    recommended_learning_rate: ClassVar[float | None] = 2e-4
    fused_loss: ClassVar[bool] = True
    needs_4bit: ClassVar[bool] = True
    #: The trainer reports the eval loss at every evaluation; the core adds its perplexity.
    training_metrics: ClassVar[Mapping[str, str]] = {"eval_loss": "min", "eval_perplexity": "min"}

    def check_environment(self) -> str | None:
        if importlib.util.find_spec("bitsandbytes") is None:
            return ("the qlora strategy quantizes the base with bitsandbytes, which is not installed: "
                    "pip install bitsandbytes, or use strategy sft without use_4bit")
        return None

    def train(self, job: TrainingJob) -> TrainResult:
        from modelforge_core.trainer import run_supervised

        return run_supervised(job)


@hookimpl
def register_strategies(register: Callable[[Strategy], None]) -> None:
    register(QLoRAStrategy())
