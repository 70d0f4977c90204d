"""The dpo strategy: direct preference optimisation with TRL's ``DPOTrainer`` and LoRA.

The reference model is the base with the adapter disabled: no second copy in memory.
The reference's recommended learning rate for DPO is 5e-7 (with LoRA, 5e-6 to 5e-5 is common).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import Strategy, TrainingJob, TrainResult

#: Every loss TRL 1.16's DPOConfig accepts (one at a time).
LOSS_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
              "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft")


def _loss_rule(loss: str, description: str, label_smoothing: Mapping[str, Any], *, required: bool) -> dict[str, Any]:
    """A rule on ``dpo.label_smoothing`` that holds when ``dpo.loss_type`` is ``loss``; with
    ``required``, a config that leaves label_smoothing at its default breaks it too."""
    then: dict[str, Any] = {"type": "object",
                            "properties": {"label_smoothing": {"type": "number", **label_smoothing}}}
    if required:
        then["required"] = ["label_smoothing"]
    return {
        "description": description,
        "if": {"properties": {"strategy": {"const": "dpo"},
                              "dpo": {"type": "object", "properties": {"loss_type": {"const": loss}},
                                      "required": ["loss_type"]}},
               "required": ["strategy", "dpo"]},
        "then": {"properties": {"dpo": then}},
    }


class DPOStrategy(Strategy):
    name: ClassVar[str] = "dpo"
    description: ClassVar[str] = "Direct preference optimisation on prompt/chosen/rejected pairs (TRL DPOTrainer)."
    data_shape: ClassVar[str] = "preference"
    tasks: ClassVar[frozenset[str] | None] = frozenset({"text-generation"})
    recommended_learning_rate: ClassVar[float | None] = 5e-7
    #: Each pair runs its chosen and its rejected answer in the same step.
    sequences_per_example: ClassVar[int] = 2
    fused_loss: ClassVar[bool] = True
    #: What TRL's DPOTrainer reports at every evaluation (rewards: higher is better).
    training_metrics: ClassVar[Mapping[str, str]] = {"eval_loss": "min", "eval_rewards/accuracies": "max",
                                                     "eval_rewards/margins": "max"}
    options_schema: ClassVar[Mapping[str, Any]] = {
        "description": "Options of the dpo strategy.",
        "properties": {
            "beta": {"type": "number", "exclusiveMinimum": 0, "default": 0.1,
                     "description": "Strength of the KL constraint to the reference model (higher: stay closer).",
                     "examples": [0.1, 0.5]},
            "loss_type": {"type": "string", "enum": list(LOSS_TYPES), "default": "sigmoid",
                          "description": ("Preference loss (TRL's DPOTrainer): sigmoid (the DPO paper), "
                                          "sigmoid_norm (length-normalised), hinge (SLiC), ipo, exo_pair (needs "
                                          "label_smoothing above 0), nca_pair, robust (noisy labels; "
                                          "label_smoothing below 0.5), bco_pair, sppo_hard, aot, aot_unpaired, "
                                          "apo_zero, apo_down, discopop (see discopop_tau) or sft (chosen "
                                          "answers' likelihood only)."),
                          "examples": ["sigmoid", "ipo"]},
            "label_smoothing": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.0,
                                "description": ("Assumed fraction of flipped preference labels (sigmoid, robust, "
                                                "aot), or EXO's epsilon (exo_pair, which needs it above 0)."),
                                "examples": [0.0, 0.001]},
            "discopop_tau": {"type": "number", "exclusiveMinimum": 0, "default": 0.05,
                             "description": "Temperature of the discopop loss's mixing of its two terms.",
                             "examples": [0.05]},
        },
    }
    schema_rules: ClassVar[Sequence[Mapping[str, Any]]] = (
        _loss_rule("exo_pair", "The exo_pair loss of dpo needs dpo.label_smoothing above 0 (the EXO paper uses "
                               "0.001).", {"exclusiveMinimum": 0}, required=True),
        _loss_rule("robust", "The robust loss of dpo needs dpo.label_smoothing below 0.5.",
                   {"exclusiveMaximum": 0.5}, required=False),
    )

    def train(self, job: TrainingJob) -> TrainResult:
        from .training import train

        return train(job)


@hookimpl
def register_strategies(register: Callable[[Strategy], None]) -> None:
    register(DPOStrategy())
