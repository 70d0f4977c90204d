"""The grpo strategy: group relative policy optimisation (TRL's ``GRPOTrainer``) of a LoRA
adapter against reward functions named in the config.

Rows are prompts with whatever fields the rewards read (``{"prompt": ..., "answer": ...}``);
the rewards are components registered through ``register_rewards`` (the built-in ones come
from ``modelforge-rewards-basic``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import REWARDS_REF, Strategy, TrainingJob, TrainResult

#: The loss formulations of TRL 1.16's GRPOConfig.
LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")


def _loss_rule(loss: str, level: str) -> dict[str, Any]:
    return {
        "description": f"The {loss} loss of the grpo strategy needs grpo.importance_sampling_level {level!r}.",
        "if": {"properties": {"strategy": {"const": "grpo"},
                              "grpo": {"type": "object", "properties": {"loss_type": {"const": loss}},
                                       "required": ["loss_type"]}},
               "required": ["strategy", "grpo"]},
        "then": {"properties": {"grpo": {"type": "object",
                                         "properties": {"importance_sampling_level": {"const": level}},
                                         "required": ["importance_sampling_level"]}}},
    }


class GRPOStrategy(Strategy):
    name: ClassVar[str] = "grpo"
    description: ClassVar[str] = "Online GRPO of a LoRA adapter against reward functions (TRL GRPOTrainer)."
    data_shape: ClassVar[str] = "prompt"
    tasks: ClassVar[frozenset[str] | None] = frozenset({"text-generation"})
    recommended_learning_rate: ClassVar[float | None] = 1e-5
    options_schema: ClassVar[Mapping[str, Any]] = {
        "description": "Options of the grpo strategy.",
        "required": ["rewards"],
        "properties": {
            "rewards": {"$ref": REWARDS_REF,
                        "description": ("The reward functions and their weights: [{\"name\": \"regex\", "
                                        "\"weight\": "
                                        "1.0, \"options\": {...}}, ...]; see modelforge plugins."),
                        "examples": [[{"name": "regex", "weight": 1.0, "options": {"pattern": "<answer>.*</answer>"}},
                                      {"name": "exact_match", "weight": 2.0,
                                       "options": {"extract": "<answer>(.*)</answer>"}}]]},
            "num_generations": {"type": "integer", "minimum": 2, "maximum": 64, "default": 4,
                                "description": "Completions sampled per prompt (the group its advantages compare).",
                                "examples": [4, 8]},
            "max_completion_length": {"type": "integer", "minimum": 1, "maximum": 8192, "default": 128,
                                      "description": "Longest completion generated, in tokens.",
                                      "examples": [128, 512]},
            "temperature": {"type": "number", "exclusiveMinimum": 0, "maximum": 2, "default": 1.0,
                            "description": "Sampling temperature of the completions.", "examples": [1.0, 0.7]},
            "beta": {"type": "number", "minimum": 0, "default": 0.04,
                     "description": ("KL coefficient: weight of the KL penalty to the base model (the adapter "
                                     "disabled); 0 skips the reference pass and logs no KL."),
                     "examples": [0.04, 0.0]},
            "loss_type": {"type": "string", "enum": list(LOSS_TYPES), "default": "dapo",
                          "description": ("Loss formulation (TRL): dapo (tokens of the whole batch), grpo (per "
                                          "sequence), dr_grpo, bnpo, cispo, sapo, luspo (needs sequence-level "
                                          "importance sampling), vespo (token level)."),
                          "examples": ["dapo"]},
            "importance_sampling_level": {"type": "string", "enum": ["token", "sequence"], "default": "token",
                                          "description": "Importance ratios per token or per sequence (GSPO).",
                                          "examples": ["token"]},
            "scale_rewards": {"type": "string", "enum": ["group", "batch", "none"], "default": "group",
                              "description": ("Divide the advantages by the reward spread of the group, of the "
                                              "batch, or not at all (Dr. GRPO)."),
                              "examples": ["group"]},
            "num_iterations": {"type": "integer", "minimum": 1, "maximum": 16, "default": 1,
                               "description": "Optimisation passes over each generated batch (mu).",
                               "examples": [1]},
            "epsilon": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.2,
                        "description": "Clipping range of the importance ratio.", "examples": [0.2]},
        },
    }
    schema_rules: ClassVar[Sequence[Mapping[str, Any]]] = (_loss_rule("luspo", "sequence"),
                                                           _loss_rule("vespo", "token"))

    def train(self, job: TrainingJob) -> TrainResult:
        from .training import train

        return train(job)


@hookimpl
def register_strategies(register: Callable[[Strategy], None]) -> None:
    register(GRPOStrategy())
