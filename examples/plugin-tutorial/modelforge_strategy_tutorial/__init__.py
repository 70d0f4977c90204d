"""A tutorial strategy for ModelForge: supervised fine-tuning with noisy embeddings (NEFTune).

NEFTune (Jain et al., 2023) adds uniform noise, scaled by ``alpha / sqrt(sequence_length *
hidden_size)``, to the input embeddings during training only; instruction-tuned models often
answer better for it. ``transformers.TrainingArguments`` implements it as
``neftune_noise_alpha``, so this strategy is the core's supervised loop with one extra argument.

Everything here is read when a config is validated, so the module imports nothing heavy: the
training code is imported inside :meth:`NoisyEmbeddingsSFT.train`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import Strategy, TrainingJob, TrainResult

#: NEFTune's paper reports alpha 5, 10 and 15; 5 is the mildest.
DEFAULT_NOISE_ALPHA = 5.0


class NoisyEmbeddingsSFT(Strategy):
    """LoRA supervised fine-tuning with NEFTune noise on the input embeddings."""

    name: ClassVar[str] = "sft-noisy-embeddings"
    description: ClassVar[str] = "Supervised fine-tuning with NEFTune noise on the input embeddings."
    data_shape: ClassVar[str] = "supervised"
    # Instruction data for causal LMs is what NEFTune was measured on.
    tasks: ClassVar[frozenset[str] | None] = frozenset({"text-generation"})
    recommended_learning_rate: ClassVar[float | None] = 2e-4
    options_schema: ClassVar[Mapping[str, Any] | None] = {
        "description": "NEFTune: uniform noise added to the input embeddings while training.",
        "properties": {
            "neftune_noise_alpha": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 100,
                "default": DEFAULT_NOISE_ALPHA,
                "description": "Noise scale alpha; the noise is uniform in +-alpha/sqrt(L*d) for sequence "
                               "length L and hidden size d. The paper uses 5, 10 or 15.",
                "examples": [5.0, 10.0, 15.0],
            },
        },
    }

    def check_environment(self) -> str | None:
        # find_spec, not import: validation must stay fast.
        if importlib.util.find_spec("transformers") is None:
            return ("the sft-noisy-embeddings strategy trains with transformers, which is not installed: "
                    "pip install 'modelforge-core[train]'")
        return None

    def train(self, job: TrainingJob) -> TrainResult:
        from modelforge_core.trainer import run_supervised

        options = job.config.get(self.name) or {}
        alpha = float(options.get("neftune_noise_alpha", DEFAULT_NOISE_ALPHA))
        return run_supervised(job, neftune_noise_alpha=alpha)


@hookimpl
def register_strategies(register: Callable[[Strategy], None]) -> None:
    """Hand the strategy to ModelForge; the core owns the registry."""
    register(NoisyEmbeddingsSFT())
