"""The sft strategy: supervised fine-tuning with a LoRA adapter.

Causal LMs train with TRL's ``SFTTrainer`` (loss on the completion only); seq2seq and span
heads train with the transformers trainers on the task's tokenized features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import Strategy, TrainingJob, TrainResult


class SFTStrategy(Strategy):
    name: ClassVar[str] = "sft"
    description: ClassVar[str] = "Supervised fine-tuning with LoRA (TRL SFTTrainer for causal LMs)."
    data_shape: ClassVar[str] = "supervised"
    recommended_learning_rate: ClassVar[float | None] = 2e-4
    fused_loss: ClassVar[bool] = True
    #: The trainer reports the eval loss at every evaluation; the core adds its perplexity.
    training_metrics: ClassVar[Mapping[str, str]] = {"eval_loss": "min", "eval_perplexity": "min"}

    def train(self, job: TrainingJob) -> TrainResult:
        from modelforge_core.trainer import run_supervised

        return run_supervised(job)


@hookimpl
def register_strategies(register: Callable[[Strategy], None]) -> None:
    register(SFTStrategy())
