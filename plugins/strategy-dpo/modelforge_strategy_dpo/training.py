"""DPO with TRL's ``DPOTrainer`` on a LoRA adapter, the base model (adapter disabled) as the
reference: the frozen reference costs no second copy of the weights.

Imported only when a dpo run starts: torch, transformers and trl are imported inside functions.
The trainer kit's :func:`~modelforge_core.trainer.run_preference` does the rest: the
preference datasets, max_length, evaluation before and after (reward accuracy and margins),
interruption and the saved adapter.
"""

from __future__ import annotations

from modelforge_core.api import TrainingJob, TrainResult
from modelforge_core.trainer import quiet_libraries, run_preference


def train(job: TrainingJob) -> TrainResult:
    """Train a LoRA adapter with DPO; metrics (reward accuracy and margins) on the eval split
    before and after; the adapter saved as ``adapter/`` in the run."""
    quiet_libraries()  # before TRL imports transformers
    from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]

    options = job.config["dpo"]
    return run_preference(job, DPOConfig, DPOTrainer, beta=float(options["beta"]), loss_type=options["loss_type"],
                          label_smoothing=float(options["label_smoothing"]),
                          discopop_tau=float(options["discopop_tau"]), precompute_ref_log_probs=False)
