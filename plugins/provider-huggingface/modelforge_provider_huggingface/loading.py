"""Loading with transformers + peft + bitsandbytes: the same code on the CPU and on a GPU."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelforge_core.api import LoadedModel, LoadRequest
from modelforge_core.errors import EnvironmentProblem, ModelLoadError

AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "question-answering": "AutoModelForQuestionAnswering",
    "sequence-classification": "AutoModelForSequenceClassification",
}
PEFT_TASK_TYPES = {
    "causal-lm": "CAUSAL_LM",
    "seq2seq-lm": "SEQ_2_SEQ_LM",
    "question-answering": "QUESTION_ANS",
    "sequence-classification": "SEQ_CLS",
}


def torch_dtype(config: Mapping[str, Any]) -> Any:
    import torch

    if config.get("bf16"):
        return torch.bfloat16
    if config.get("fp16"):
        return torch.float16
    return torch.float32


#: Freshly initialised task heads: trained in full precision, never quantized or wrapped by LoRA.
HEAD_MODULES = {
    "question-answering": ["qa_outputs"],
    "sequence-classification": ["score", "classifier"],
}


def quantization_config(config: Mapping[str, Any], head: str = "causal-lm") -> Any:
    """A ``BitsAndBytesConfig`` for 4-bit or 8-bit, or ``None``. Task heads stay unquantized."""
    if not (config.get("use_4bit") or config.get("use_8bit")):
        return None
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise EnvironmentProblem("use_4bit/use_8bit need the bitsandbytes package, which is not installed: "
                                 "pip install bitsandbytes, or set use_4bit and use_8bit to false")
    import torch
    from transformers import BitsAndBytesConfig

    skip = HEAD_MODULES.get(head)
    if config.get("use_4bit"):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config["bnb_4bit_quant_type"],
            bnb_4bit_compute_dtype=getattr(torch, config["bnb_4bit_compute_dtype"]),
            bnb_4bit_use_double_quant=bool(config["use_nested_quant"]),
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def lora_config(config: Mapping[str, Any], head: str, modules_to_save: Sequence[str] = (),
                inside_saved: Sequence[str] = ()) -> Any:
    """peft's ``LoraConfig`` from the config; ``modules_to_save`` (the task's) are trained in
    full and saved, and LoRA does not wrap the layers ``inside_saved`` them."""
    from peft import LoraConfig

    targets = config.get("lora_target_modules", "all-linear")
    extra: dict[str, Any] = {}
    excluded: list[str] = []
    if head == "question-answering" and targets == "all-linear":
        # peft trains the span head in full (modules_to_save); LoRA must not wrap it too.
        excluded += HEAD_MODULES[head]
    if modules_to_save:
        extra["modules_to_save"] = list(modules_to_save)
        excluded += list(inside_saved)
    if excluded:
        extra["exclude_modules"] = excluded
    return LoraConfig(**extra,
        r=config["lora_r"],
        lora_alpha=config["lora_alpha"],
        lora_dropout=config["lora_dropout"],
        target_modules=targets if targets == "all-linear" else list(targets),
        task_type=PEFT_TASK_TYPES[head],
        bias="none",
    )


def _explain(exc: Exception, model_name: str, config: Mapping[str, Any]) -> ModelLoadError:
    text = str(exc)
    path = Path(model_name)
    if "trust_remote_code" in text or "custom code" in text:
        return ModelLoadError(
            f"{model_name} needs its own Python code to load, and trust_remote_code is false: read that code, "
            "then set trust_remote_code to true if you trust it")
    if path.exists() and not (path / "config.json").exists():
        return ModelLoadError(f"{model_name} is not a model folder (no config.json in it)")
    if "safetensors" in text.lower() and not config.get("allow_pickle_weights"):
        return ModelLoadError(
            f"{model_name} has no safetensors weights; its pickle weights (.bin/.pt) can run code when loaded. "
            "Convert them to safetensors, or set allow_pickle_weights to true if you trust the file")
    if not path.exists() and (model_name.startswith((".", "/", "~")) or "\\" in model_name):
        return ModelLoadError(f"model folder {model_name} does not exist")
    return ModelLoadError(f"cannot load {model_name}: {type(exc).__name__}: {text.splitlines()[0] if text else ''}")


def load_tokenizer(source: str, config: Mapping[str, Any]) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=bool(config.get("trust_remote_code")))
    if tokenizer.pad_token is None:
        # The collators mask padding by the attention mask, not by token id, so using EOS as
        # padding keeps EOS in the labels: the model still learns to stop.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def load(request: LoadRequest) -> LoadedModel:
    import torch
    import transformers

    config = request.config
    model_name = request.model_name
    quant = quantization_config(config, request.head)
    # A 4-bit base keeps its unquantized parts in the compute dtype.
    dtype = getattr(torch, config["bnb_4bit_compute_dtype"]) if config.get("use_4bit") else torch_dtype(config)
    kwargs: dict[str, Any] = {
        "trust_remote_code": bool(config.get("trust_remote_code")),
        "use_safetensors": None if config.get("allow_pickle_weights") else True,
        "dtype": dtype,
    }
    if quant is not None:
        kwargs["quantization_config"] = quant
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    if config.get("attention_implementation"):
        kwargs["attn_implementation"] = config["attention_implementation"]
    if request.head == "sequence-classification":
        kwargs["num_labels"] = request.num_labels or 1
        if request.label_names:
            # The names travel in the model config: the adapter's base, the merged export.
            kwargs["id2label"] = dict(enumerate(request.label_names))
            kwargs["label2id"] = {name: index for index, name in enumerate(request.label_names)}
    auto = getattr(transformers, AUTO_CLASSES[request.head])
    try:
        saved = request.adapter_path is not None and (Path(request.adapter_path) / "tokenizer_config.json").exists()
        tokenizer = load_tokenizer(str(request.adapter_path) if saved else model_name, config)
        model = auto.from_pretrained(model_name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _explain(exc, model_name, config) from exc
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if request.for_training and quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(config.get("gradient_checkpointing")),
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif request.for_training and config.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    from peft import PeftModel, get_peft_model

    if request.adapter_path is not None:
        model = PeftModel.from_pretrained(model, str(request.adapter_path), adapter_name=request.adapter_name,
                                          is_trainable=request.for_training)
    elif request.new_adapter:
        to_save = list(request.modules_to_save)
        inside = [key for key, _module in model.named_modules()
                  if any(key == name or key.endswith(f".{name}") or f".{name}." in f".{key}" for name in to_save)
                  and not any(key == name or key.endswith(f".{name}") for name in to_save)]
        model = get_peft_model(model, lora_config(config, request.head, to_save, inside),
                               adapter_name=request.adapter_name)
    if not request.for_training:
        model.eval()
    info: dict[str, Any] = {
        "dtype": str(kwargs["dtype"]).replace("torch.", ""),
        "quantization": "4bit-" + config["bnb_4bit_quant_type"] if config.get("use_4bit")
        else "8bit" if config.get("use_8bit") else None,
    }
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        info.update(trainable_parameters=int(trainable), total_parameters=int(total))
    return LoadedModel(model=model, tokenizer=tokenizer, head=request.head, provider="huggingface", info=info)
