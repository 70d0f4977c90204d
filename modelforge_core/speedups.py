"""The config's speed and memory options, from the config to the machine, the model and the
trainer: ``packing`` (padding-free), ``attention_implementation``, ``liger_kernel``,
``torch_compile`` and ``neftune_noise_alpha``.

Which combinations are allowed is the schema's business (rules in
``schema/training-config.schema.json``); what a machine can run is asked here, at training time
(:func:`machine_problems`: exit 3), because a config is often written on another machine than
the one that trains it.

The memory-lean loss has no option: TRL's SFT and DPO trainers (1.15 and 1.16) always compute
the loss through a fused LM head that never holds the full logits (their ``chunked_nll`` is a
deprecated alias of the default ``nll``). ``modelforge plan`` counts it (``plan.FUSED_LOSS_STRATEGIES``).

Importing this module is cheap: torch is imported inside functions.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Collection, Mapping
from typing import Any

from .errors import UsageError

#: Each option and who consumes it (merged into ``training.FIELDS_USED_ELSEWHERE``).
SPEED_FIELDS: Mapping[str, str] = {
    "attention_implementation": "provider: from_pretrained(attn_implementation=...)",
    "liger_kernel": "trainer: TrainingArguments.use_liger_kernel (speedups.trainer_options)",
    "torch_compile": "trainer: TrainingArguments.torch_compile (speedups.trainer_options)",
    "neftune_noise_alpha": "trainer: TrainingArguments.neftune_noise_alpha (speedups.trainer_options)",
}

#: Attention implementations that keep packed examples apart in a padding-free batch: flash
#: attention through the sequence boundaries (``cu_seq_lens``), sdpa and flex attention through
#: the block-diagonal mask transformers builds from the restarting position ids
#: (``masking_utils.find_packed_sequence_indices``; unsloth may choose flex attention itself).
#: Eager would get that mask too, but holds (batch x length)^2 scores per head: the schema refuses it.
PACKING_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def machine_problems(config: Mapping[str, Any], device: str) -> list[str]:
    """What this machine lacks for the config's options, one sentence each (empty: it can run them).

    :param device: ``"cuda"``, ``"mps"`` or ``"cpu"`` (``training.detect_hardware().device``).
    """
    problems = []
    if config.get("liger_kernel"):
        if device != "cuda":
            problems.append(f"liger_kernel needs an NVIDIA GPU (Liger's kernels are written in Triton); this machine "
                            f"trains on {device}: set liger_kernel to false")
        elif importlib.util.find_spec("liger_kernel") is None:
            problems.append("liger_kernel needs the liger-kernel package: pip install liger-kernel "
                            "(or set liger_kernel to false)")
    if config.get("attention_implementation") == "flash_attention_2":
        if device != "cuda":
            problems.append(f"attention_implementation flash_attention_2 needs an NVIDIA GPU; this machine trains on "
                            f"{device}: use sdpa")
        elif importlib.util.find_spec("flash_attn") is None:
            problems.append("attention_implementation flash_attention_2 needs the flash-attn package: "
                            "pip install flash-attn --no-build-isolation (or use sdpa)")
    if config.get("torch_compile") and device == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        problems.append("torch_compile on a CPU needs a C++ compiler (torch's inductor generates C++): "
                        "install g++ or set torch_compile to false")
    return problems


def trainer_options(config: Mapping[str, Any], fields: Collection[str]) -> dict[str, Any]:
    """Trainer arguments for the options, limited to those ``fields`` (of the arguments class) knows.

    Packing is TRL's best-fit packing, which makes the batches padding-free: the examples of a
    batch are laid end to end in one row, with position ids that restart at each example.
    """
    options: dict[str, Any] = {
        "torch_compile": bool(config.get("torch_compile")),
        "use_liger_kernel": bool(config.get("liger_kernel")),
        "neftune_noise_alpha": config.get("neftune_noise_alpha"),
    }
    if config.get("packing") and "packing_strategy" in fields:
        options.update(packing=True, packing_strategy="bfd", padding_free=True)
    return {k: v for k, v in options.items() if k in fields}


def check_loaded_model(model: Any, config: Mapping[str, Any]) -> None:
    """Refuse packing on a model loaded with an attention that would let packed examples see
    each other (a model whose default is eager, when ``attention_implementation`` is null)."""
    if not config.get("packing"):
        return
    reported = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if isinstance(reported, str) and reported not in PACKING_ATTENTION:
        raise UsageError(f"packing needs sdpa or flash_attention_2 attention, and {config.get('model_name')} loaded "
                          f"with {reported}: set attention_implementation to sdpa (or packing to false)")
