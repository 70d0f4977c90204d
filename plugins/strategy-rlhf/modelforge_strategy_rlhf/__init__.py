"""The rlhf strategy: real RLHF in two stages in one run.

1. A reward model (sequence-classification head with LoRA) trained on the preference pairs
   with TRL's ``RewardTrainer``, scored by pairwise accuracy.
2. The policy (LoRA on the base) optimised online against that reward model on the pairs'
   prompts with TRL's ``RLOOTrainer`` or ``GRPOTrainer``, with a KL penalty to the base.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import Strategy, TrainingJob, TrainResult


class RLHFStrategy(Strategy):
    name: ClassVar[str] = "rlhf"
    description: ClassVar[str] = "Reward model (TRL RewardTrainer) then online RLOO/GRPO against it."
    data_shape: ClassVar[str] = "preference"
    tasks: ClassVar[frozenset[str] | None] = frozenset({"text-generation"})
    recommended_learning_rate: ClassVar[float | None] = 1.41e-5
    memory_note: ClassVar[str | None] = ("rlhf: the estimate covers a training step of the policy; generating its "
                                         "samples needs a little more")
    options_schema: ClassVar[Mapping[str, Any]] = {
        "description": "Options of the rlhf strategy.",
        "properties": {
            "algorithm": {"type": "string", "enum": ["rloo", "grpo"], "default": "rloo",
                          "description": "Online policy optimisation: RLOO (REINFORCE leave-one-out) or GRPO.",
                          "examples": ["rloo"]},
            "num_generations": {"type": "integer", "minimum": 2, "maximum": 64, "default": 4,
                                "description": "Completions sampled per prompt in the online stage.",
                                "examples": [4, 8]},
            "kl_coef": {"type": "number", "minimum": 0, "default": 0.05,
                        "description": "Weight of the KL penalty to the base model in the online stage.",
                        "examples": [0.05]},
            "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 64,
                               "description": "Longest completion generated in the online stage.",
                               "examples": [64]},
            "temperature": {"type": "number", "exclusiveMinimum": 0, "maximum": 2, "default": 1.0,
                            "description": "Sampling temperature of the online stage.",
                            "examples": [1.0]},
            "reward_model_path": {"type": ["string", "null"], "default": None,
                                  "description": ("An existing reward model (folder with a LoRA adapter or a full "
                                                  "sequence-classification model); null trains one in stage 1."),
                                  "examples": [None]},
            "reward_learning_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.0001,
                                     "description": "Learning rate of the reward model stage.",
                                     "examples": [0.0001]},
            "reward_epochs": {"type": "integer", "minimum": 1, "default": 1,
                              "description": "Epochs of the reward model stage.",
                              "examples": [1, 3]},
        },
    }

    def train(self, job: TrainingJob) -> TrainResult:
        from .training import train

        return train(job)


@hookimpl
def register_strategies(register: Callable[[Strategy], None]) -> None:
    register(RLHFStrategy())
