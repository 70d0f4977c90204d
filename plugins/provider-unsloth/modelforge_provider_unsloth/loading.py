"""Loading with unsloth: ``FastLanguageModel.from_pretrained`` and unsloth's own ``get_peft_model``.

The result is a peft ``PeftModel`` (unsloth builds it with peft), so the strategies train it
through the same trainers as a huggingface-provider model, and the default
:meth:`~modelforge_core.api.Provider.save_adapter` writes a plain peft adapter that loads
without unsloth.

unsloth is imported here (or earlier, by the provider's ``on_run_start`` hook), never when the
plugin registers: importing it patches transformers and TRL for the whole process.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelforge_core.api import LoadedModel, LoadRequest
from modelforge_core.errors import EnvironmentProblem, ModelLoadError

from .environment import import_unsloth

#: What ``lora_target_modules: "all-linear"`` means for unsloth: the attention and MLP
#: projections of Llama-style decoders, the layers unsloth's fused LoRA kernels cover.
#: (unsloth needs the names; peft's "all-linear" shortcut bypasses its kernels.)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def model_dtype(config: Mapping[str, Any]) -> Any:
    """The dtype for ``from_pretrained``: bf16 or fp16 as the config asks, else ``None``, which lets
    unsloth choose (bfloat16 where the hardware has it, float16 or float32 otherwise)."""
    import torch

    if config.get("bf16"):
        return torch.bfloat16
    if config.get("fp16"):
        return torch.float16
    return None


def quantization_config(config: Mapping[str, Any]) -> Any:
    """The config's 4-bit settings as a ``BitsAndBytesConfig``, or ``None`` without ``use_4bit``.

    On a GPU unsloth takes a caller's config as given (quant type, nested quantization, compute
    dtype); its CPU backend always quantizes nf4 with nested quantization. The layers unsloth
    keeps unquantized (the output head, routers) stay so.
    """
    if not config.get("use_4bit"):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    try:
        from unsloth_zoo.peft_utils import SKIP_QUANTIZATION_MODULES
        skip = list(SKIP_QUANTIZATION_MODULES)
    except ImportError:  # the list moved: the output head is the one that matters
        skip = ["lm_head"]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config["bnb_4bit_quant_type"],
        bnb_4bit_compute_dtype=getattr(torch, config["bnb_4bit_compute_dtype"]),
        bnb_4bit_use_double_quant=bool(config["use_nested_quant"]),
        llm_int8_skip_modules=skip,
    )


def target_modules(config: Mapping[str, Any]) -> list[str]:
    targets = config.get("lora_target_modules", "all-linear")
    return list(ALL_LINEAR) if targets == "all-linear" else list(targets)


def gradient_checkpointing(config: Mapping[str, Any], for_training: bool) -> str | bool:
    """unsloth's own checkpointing (it offloads activations to host memory on a GPU) when the
    config turns checkpointing on."""
    return "unsloth" if for_training and config.get("gradient_checkpointing") else False


def check_request(request: LoadRequest, cuda: bool) -> None:
    """Refuse, before unsloth loads anything, what it would silently do differently."""
    if request.head != "causal-lm":
        raise ModelLoadError(f"the unsloth provider loads causal language models only, not a {request.head} "
                             "model: set provider to huggingface")
    if request.new_adapter and request.adapter_path is None and request.adapter_name != "default":
        raise ModelLoadError(f"unsloth's get_peft_model names its adapter 'default', not {request.adapter_name!r}: "
                             "this strategy needs provider huggingface")
    if request.config.get("use_8bit") and not cuda:
        raise EnvironmentProblem(
            "unsloth loads 8-bit weights only on a GPU (on this CPU it would train 16-bit weights instead): "
            "set use_8bit to false, or set provider to huggingface, whose bitsandbytes 8-bit runs on the CPU")


def _explain(exc: Exception, name: str) -> ModelLoadError:
    text = (str(exc).strip().splitlines() or [""])[0]
    path = Path(name)
    if not path.exists() and name.startswith((".", "/", "~")):
        return ModelLoadError(f"model folder {name} does not exist")
    if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        return ModelLoadError(f"{name} is not a model folder (no config.json in it)")
    return ModelLoadError(f"unsloth cannot load {name}: {type(exc).__name__}: {text}")


def _count_4bit_layers(model: Any) -> int:
    return sum(1 for module in model.modules() if type(module).__name__ == "Linear4bit")


def load(request: LoadRequest) -> LoadedModel:
    import torch

    config = request.config
    check_request(request, torch.cuda.is_available())
    # Inference needs none of the training patches that importing unsloth first would guarantee.
    import_unsloth(quiet_order_warning=not request.for_training)
    from unsloth import FastLanguageModel

    checkpointing = gradient_checkpointing(config, request.for_training)
    kwargs: dict[str, Any] = {
        "max_seq_length": int(config["max_seq_length"]),
        "dtype": model_dtype(config),
        "load_in_4bit": bool(config.get("use_4bit")),
        "load_in_8bit": bool(config.get("use_8bit")),
        "trust_remote_code": bool(config.get("trust_remote_code")),
        "use_gradient_checkpointing": checkpointing,
        "random_state": config["seed"],
        # A local folder is loaded as it is: unsloth would otherwise swap a hub name for its own
        # pre-quantized copy, a different checkpoint from the one the config names.
        "use_exact_model_name": True,
    }
    quant = quantization_config(config)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if not config.get("allow_pickle_weights"):
        kwargs["use_safetensors"] = True
    if request.adapter_path is not None and (Path(request.adapter_path) / "tokenizer_config.json").exists():
        # The tokenizer saved beside the adapter is the one it was trained with.
        kwargs["tokenizer_name"] = str(request.adapter_path)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # unsloth reports what it loaded on stdout
            model, tokenizer = FastLanguageModel.from_pretrained(request.model_name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _explain(exc, request.model_name) from exc
    if quant is not None and _count_4bit_layers(model) == 0:
        raise EnvironmentProblem(
            f"unsloth loaded {request.model_name} with 16-bit weights, not 4-bit: bitsandbytes' 4-bit kernels "
            "do not run on this machine; set use_4bit to false (strategy sft), or set provider to huggingface")
    if tokenizer.pad_token is None:
        # As the huggingface provider: the collators mask padding by the attention mask, so EOS
        # as padding stays in the labels and the model still learns to stop.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id

    if request.adapter_path is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(request.adapter_path), adapter_name=request.adapter_name,
                                              is_trainable=request.for_training)
        except (OSError, ValueError) as exc:
            raise _explain(exc, str(request.adapter_path)) from exc
    elif request.new_adapter:
        with contextlib.redirect_stdout(sys.stderr):
            model = FastLanguageModel.get_peft_model(
                model,
                r=config["lora_r"],
                lora_alpha=config["lora_alpha"],
                lora_dropout=config["lora_dropout"],
                target_modules=target_modules(config),
                bias="none",
                use_gradient_checkpointing=checkpointing,
                random_state=config["seed"],
                max_seq_length=int(config["max_seq_length"]),
            )
    if not request.for_training:
        FastLanguageModel.for_inference(model)
    return LoadedModel(model=model, tokenizer=tokenizer, head=request.head, provider="unsloth",
                       info=describe(model, config))


def describe(model: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """Facts for the manifest and the log, read from the loaded model (unsloth may choose the
    dtype, and its CPU backend quantizes nf4 whatever the config asks)."""
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    if isinstance(quant, Mapping):
        quant_type = quant.get("bnb_4bit_quant_type")
    else:
        quant_type = getattr(quant, "bnb_4bit_quant_type", None)
    info: dict[str, Any] = {
        "dtype": str(getattr(model, "dtype", "")).replace("torch.", ""),
        "quantization": f"4bit-{quant_type or config.get('bnb_4bit_quant_type')}" if _count_4bit_layers(model)
        else "8bit" if config.get("use_8bit") else None,
        "max_seq_length": int(config["max_seq_length"]),
        "gradient_checkpointing": gradient_checkpointing(config, True),
    }
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        info.update(trainable_parameters=int(trainable), total_parameters=int(total))
    return info

