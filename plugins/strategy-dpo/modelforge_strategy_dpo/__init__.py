"""The dpo strategy: direct preference optimisation with TRL's ``DPOTrainer`` and LoRA.

The reference model is the base with the adapter disabled: no second copy in memory.
The reference's recommended learning rate for DPO is 5e-7 (with LoRA, 5e-6 to 5e-5 is common).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import Strategy, TrainingJob, TrainResult


class DPOStrategy(Strategy):
    name: ClassVar[str] = "dpo"
    description: ClassVar[str] = "Direct preference optimisation on prompt/chosen/rejected pairs (TRL DPOTrainer)."
    data_shape: ClassVar[str] = "preference"
    tasks: ClassVar[frozenset[str] | None] = frozenset({"text-generation"})
    recommended_learning_rate: ClassVar[float | None] = 5e-7
    #: What TRL's DPOTrainer reports at every evaluation (rewards: higher is better).
    training_metrics: ClassVar[Mapping[str, str]] = {"eval_loss": "min", "eval_rewards/accuracies": "max",
                                                     "eval_rewards/margins": "max"}
    options_schema: ClassVar[Mapping[str, Any]] = {
        "description": "Options of the dpo strategy.",
        "properties": {
            "beta": {"type": "number", "exclusiveMinimum": 0, "default": 0.1,
                     "description": "Strength of the KL constraint to the reference model (higher: stay closer).",
                     "examples": [0.1, 0.5]},
            "loss_type": {"type": "string", "enum": ["sigmoid", "hinge", "ipo", "robust"],
                          "default": "sigmoid",
                          "description": ("DPO loss: sigmoid (the DPO paper), hinge (SLiC), ipo or robust "
                                          "(noisy labels)."),
                          "examples": ["sigmoid"]},
            "label_smoothing": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.0,
                                "description": ("Assumed fraction of flipped preference labels (robust and "
                                                "sigmoid losses)."),
                                "examples": [0.0]},
        },
    }

    def train(self, job: TrainingJob) -> TrainResult:
        from .training import train

        return train(job)


@hookimpl
def register_strategies(register: Callable[[Strategy], None]) -> None:
    register(DPOStrategy())
