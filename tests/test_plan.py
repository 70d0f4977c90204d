"""The memory plan (issue 8): parameter counts from config.json alone, each part of the estimate
reacting to the setting that drives it, the fit against given hardware figures with advice, and
`modelforge plan` / `modelforge train` refusing a config that cannot fit (`--force` goes on)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge_core.config import ResolvedConfig, resolve_config
from modelforge_core.errors import EnvironmentProblem, UsageError
from modelforge_core.hardware import ASSUME_MEMORY_ENV, MemoryTarget, memory_target, recommend_profile
from modelforge_core.plan import (
    Settings,
    architecture_from_config,
    check_fits,
    estimate,
    find_model_config,
    make_plan,
)
from modelforge_core.plugins import Plugins
from modelforge_core.profiles import known_model_shapes

QWEN_05B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True,
            "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}
LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False,
            "max_position_embeddings": 131072, "rope_theta": 500000.0, "torch_dtype": "bfloat16"}

GPU_7 = MemoryTarget("cuda", "7 GiB GPU", 7.0, "test", bf16=True, fp16=True)
GPU_12 = MemoryTarget("cuda", "12 GiB GPU", 12.0, "test", bf16=True, fp16=True)
H200 = MemoryTarget("cuda", "H200", 139.0, "test", bf16=True, fp16=True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model folders holding only the config.json of real models (no weights)."""
    root = tmp_path_factory.mktemp("shapes")
    folders = {}
    for name, config in (("qwen2.5-0.5b", QWEN_05B), ("llama-3.1-8b", LLAMA_8B)):
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config), "utf-8")
        folders[name] = folder
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"input": f"question {i}", "output": f"answer {i}"}) + "\n"
                            for i in range(6)), "utf-8")
    folders["data"] = data
    return folders


def _config(plugins: Plugins, model: Path | str, data: Path, **values: Any) -> ResolvedConfig:
    return resolve_config({"task": "text-generation", "model_name": str(model), "dataset": str(data),
                           "compute_specs": "high_end", **values}, plugins=plugins)


# --- parameters from config.json ----------------------------------------------------------

def test_parameter_counts_of_real_shapes_match_the_published_totals(shapes: dict[str, Path]) -> None:
    for name, published in (("qwen2.5-0.5b", 494e6), ("llama-3.1-8b", 8.03e9)):
        found = find_model_config(str(shapes[name]))
        assert found is not None
        assert found[1] == str(shapes[name] / "config.json")
        counted = architecture_from_config(found[0]).parameters()
        assert abs(counted - published) / published < 0.02, (name, counted)


def test_parameter_counts_of_the_tiny_models_match_the_loaded_models(
        tiny_causal_lm: Path, tiny_seq2seq_lm: Path, tiny_qa_encoder: Path) -> None:
    import transformers
    from peft import LoraConfig, get_peft_model

    for folder, auto, head, task_type in (
            (tiny_causal_lm, transformers.AutoModelForCausalLM, "causal-lm", "CAUSAL_LM"),
            (tiny_seq2seq_lm, transformers.AutoModelForSeq2SeqLM, "seq2seq-lm", "SEQ_2_SEQ_LM"),
            (tiny_qa_encoder, transformers.AutoModelForQuestionAnswering, "question-answering", None)):
        model = auto.from_pretrained(folder)
        arch = architecture_from_config(json.loads((folder / "config.json").read_text("utf-8")))
        assert arch.parameters(head) == sum(p.numel() for p in model.parameters()), folder.name
        lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type=task_type))
        # the plan counts the blocks' layers; a span head's own 2-output layer is negligible
        trainable = sum(p.numel() for n, p in lora.named_parameters()
                        if p.requires_grad and "lora_" in n and "qa_outputs" not in n)
        planned = estimate(arch, _settings(head=head, lora_r=8), "cpu").lora_parameters
        assert planned == trainable, folder.name


@pytest.mark.parametrize("model", sorted(known_model_shapes()))
def test_the_parser_agrees_with_transformers_on_every_known_shape(model: str) -> None:
    """Each shape built by transformers on the meta device (no memory): the same count, exactly."""
    import torch
    import transformers

    shape = known_model_shapes()[model]
    arch = architecture_from_config(shape)
    auto = {"decoder": transformers.AutoModelForCausalLM, "encoder-decoder": transformers.AutoModelForSeq2SeqLM,
            "encoder": transformers.AutoModelForQuestionAnswering}[arch.family]
    head = {"decoder": "causal-lm", "encoder-decoder": "seq2seq-lm", "encoder": "question-answering"}[arch.family]
    with torch.device("meta"):
        built = auto.from_config(transformers.AutoConfig.for_model(**shape))
    assert arch.parameters(head) == sum(p.numel() for p in built.parameters())


# --- each part follows its setting --------------------------------------------------------

def _settings(**values: Any) -> Settings:
    base = Settings(head="causal-lm", precision="bf16", quantization=None, nested_quant=False,
                    provider="huggingface", strategy="sft", batch=8, sequence=1024, gradient_checkpointing=False,
                    lora_r=16, lora_targets="all-linear", lora_dropout=0.0, optimizer="adamw_torch",
                    fused_loss=True)
    return replace(base, **values)


QWEN = architecture_from_config(QWEN_05B)
LLAMA = architecture_from_config(LLAMA_8B)
GIB = 2**30


def test_4bit_weights_are_much_smaller_than_bf16() -> None:
    bf16 = estimate(LLAMA, _settings(), "cuda")
    nf4 = estimate(LLAMA, _settings(quantization="4bit"), "cuda")
    nested = estimate(LLAMA, _settings(quantization="4bit", nested_quant=True), "cuda")
    int8 = estimate(LLAMA, _settings(quantization="8bit"), "cuda")
    assert 14.5 < bf16.weights / GIB < 15.5  # 8.03B x 2 bytes
    assert nf4.weights < 0.55 * bf16.weights
    assert nested.weights < nf4.weights < int8.weights < bf16.weights
    # The linear layers shrink to 0.5625 bytes a parameter; what stays is the embeddings and LM
    # head, which peft's k-bit preparation keeps in fp32: 1.05B parameters x 4 bytes.
    assert 3.8 < (nf4.weights - LLAMA.linear_parameters * 0.5625) / GIB < 4.0
    # The unsloth provider keeps them in 16 bits: there 4-bit is under 40% of bf16.
    assert estimate(LLAMA, _settings(quantization="4bit", kbit_upcast=False), "cuda").weights < 0.4 * bf16.weights


def test_gradient_checkpointing_reduces_activations() -> None:
    for arch in (QWEN, LLAMA):
        full = estimate(arch, _settings(), "cuda").activations
        checkpointed = estimate(arch, _settings(gradient_checkpointing=True), "cuda").activations
        assert checkpointed < 0.25 * full


def test_activations_grow_with_batch_sequence_and_dropout() -> None:
    base = estimate(QWEN, _settings(batch=2), "cuda").activations
    assert estimate(QWEN, _settings(batch=4), "cuda").activations == pytest.approx(2 * base, rel=0.01)
    assert estimate(QWEN, _settings(batch=2, sequence=2048), "cuda").activations == pytest.approx(2 * base, rel=0.01)
    assert estimate(QWEN, _settings(batch=2, lora_dropout=0.1), "cuda").activations > 1.3 * base
    assert estimate(QWEN, _settings(batch=2, precision="fp32"), "cuda").activations > 1.7 * base


def test_full_logits_dominate_for_a_big_vocabulary_unless_the_loss_is_fused() -> None:
    fused = estimate(QWEN, _settings(), "cuda")
    full = estimate(QWEN, _settings(fused_loss=False), "cuda")  # rlhf's policy stage materializes the logits
    assert full.logits / GIB == pytest.approx(8 * 1024 * 151936 * 12 / GIB, rel=0.001)
    assert full.logits > full.activations > 10 * fused.logits
    seq2seq = architecture_from_config(known_model_shapes()["google-t5/t5-small"])
    assert estimate(seq2seq, _settings(head="seq2seq-lm", batch=1, sequence=512), "cuda").logits > 0


def test_lora_parameters_follow_rank_targets_and_optimizer() -> None:
    all_linear = estimate(QWEN, _settings(), "cuda")
    assert all_linear.lora_parameters == 24 * 16 * (2 * (896 + 896) + 2 * (896 + 128) + 3 * (896 + 4864))
    attention = estimate(QWEN, _settings(lora_targets=["q_proj", "v_proj"]), "cuda")
    assert attention.lora_parameters == 24 * 16 * ((896 + 896) + (896 + 128))
    assert estimate(QWEN, _settings(lora_r=32), "cuda").lora_parameters == 2 * all_linear.lora_parameters
    assert all_linear.lora == all_linear.lora_parameters * 16  # fp32 weights, fp32 grads, AdamW's 8
    assert estimate(QWEN, _settings(optimizer="adamw_8bit"), "cuda").lora == all_linear.lora_parameters * 10
    assert estimate(QWEN, _settings(optimizer="sgd"), "cuda").lora == all_linear.lora_parameters * 8


def test_each_speed_option_is_counted_in_the_estimate() -> None:
    base = estimate(QWEN, _settings(), "cuda")
    # eager attention keeps every layer's scores: heads x sequence^2 x (bf16 scores, fp32 softmax, mask)
    eager = estimate(QWEN, _settings(attention="eager"), "cuda")
    # (24 layers, plus the largest block once more for its gradients during the backward pass)
    assert eager.activations - base.activations == pytest.approx(25 * 8 * 14 * 1024**2 * 7, rel=0.001)
    # packing with sdpa: one padding-free row of 8 x 1024 tokens and its (8192)^2 mask; flash needs no mask
    packed = estimate(QWEN, _settings(packing=True, attention="sdpa"), "cuda")
    assert packed.activations - base.activations == pytest.approx(8192**2 * 3, rel=0.001)
    assert estimate(QWEN, _settings(packing=True, attention="flash_attention_2"), "cuda") == base
    # Liger's fused SwiGLU and RMSNorm keep less; NEFTune a noisy copy of the embeddings
    liger = estimate(QWEN, _settings(liger_kernel=True), "cuda")
    assert liger.activations < 0.8 * base.activations and liger.weights == base.weights
    neftune = estimate(QWEN, _settings(neftune=True), "cuda")
    assert neftune.activations - base.activations == 8 * 1024 * 896 * 2
    assert estimate(QWEN, _settings(torch_compile=True), "cuda") == base


def test_the_plan_reads_the_speed_options_from_the_config(shapes: dict[str, Path],
                                                          builtin_plugins: Plugins) -> None:
    from modelforge_core.plan import make_plan

    config = {"task": "text-generation", "model_name": "Qwen/Qwen2.5-0.5B-Instruct", "dataset": "none.jsonl",
              "per_device_train_batch_size": 8, "max_seq_length": 1024, "use_4bit": False, "bf16": True,
              "gradient_checkpointing": False, "lora_dropout": 0.0, "optim": "adamw_torch"}
    plain = make_plan(config, None, plugins=builtin_plugins)
    options = make_plan({**config, "attention_implementation": "sdpa", "packing": True, "liger_kernel": True,
                         "neftune_noise_alpha": 5, "torch_compile": False}, None, plugins=builtin_plugins)
    assert options.settings["packing"] and options.settings["liger_kernel"] and options.settings["neftune"]
    assert options.parts_gb["activations"] != plain.parts_gb["activations"]
    assert any("packing with sdpa" in note for note in options.notes)


@pytest.mark.parametrize(("settings", "measured_gib"), [
    ({}, 12.6),  # TRL SFTTrainer, batch 8
    ({"batch": 16}, 24.1),  # TRL SFTTrainer, batch 16
    ({"fused_loss": False}, 26.2),  # plain transformers Trainer: full logits
    ({"fused_loss": False, "quantization": "4bit", "gradient_checkpointing": True}, 15.7),
])
def test_estimate_is_within_25_percent_of_the_anchor_measurements(settings: dict[str, Any],
                                                                 measured_gib: float) -> None:
    """Peaks measured on one H200 (shared/gpu/README.md): Qwen2.5-0.5B's shape, LoRA r16 on all
    linear layers, bf16, batch 8 x 1024 tokens, no dropout, AdamW."""
    planned = estimate(QWEN, _settings(**settings), "cuda").allocated / GIB
    assert abs(planned - measured_gib) / measured_gib < 0.25, planned


# --- fitting against hardware figures ------------------------------------------------------

def test_an_8b_in_bf16_does_not_fit_7_gib_but_in_4bit_it_fits_a_mid_range_card(
        shapes: dict[str, Path], builtin_plugins: Plugins) -> None:
    llama, data = shapes["llama-3.1-8b"], shapes["data"]
    full = make_plan(_config(builtin_plugins, llama, data, use_4bit=False, bf16=True), GPU_7, plugins=builtin_plugins)
    assert full.fits is False
    assert full.total_gb is not None and full.total_gb > 15
    assert full.advice[0].change == {"use_4bit": True}
    assert recommend_profile("cuda", GPU_12.memory_gb).profile == "mid_range"
    qlora = make_plan(_config(builtin_plugins, llama, data, compute_specs="mid_range", strategy="qlora",
                              per_device_train_batch_size=1, gradient_accumulation_steps=16),
                      GPU_12, plugins=builtin_plugins)
    assert qlora.fits is True, qlora.total_gb
    assert qlora.settings["precision"] == "bf16" and qlora.settings["quantization"] == "4bit"
    assert qlora.parts_gb["weights"] < 0.55 * full.parts_gb["weights"]


def test_advice_changes_settings_until_the_plan_fits(shapes: dict[str, Path], builtin_plugins: Plugins) -> None:
    config = _config(builtin_plugins, shapes["llama-3.1-8b"], shapes["data"], compute_specs="mid_range",
                     gradient_checkpointing=False)
    plan = make_plan(config, GPU_12, plugins=builtin_plugins)
    assert plan.fits is False
    changes = [a.change for a in plan.advice]
    assert changes[0] == {"gradient_checkpointing": True}
    assert {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 16} in changes
    assert plan.advice[-1].total_gb <= 12
    assert "--set gradient_checkpointing=true" in plan.refusal()
    hopeless = make_plan(config, MemoryTarget("cuda", "GPU", 2.0, "test", bf16=True, fp16=True),
                         plugins=builtin_plugins)
    assert hopeless.advice[-1].change == {}
    assert "choose a smaller model" in hopeless.refusal()


def test_check_fits_refuses_with_the_advice_and_allows_a_fitting_config(
        shapes: dict[str, Path], builtin_plugins: Plugins) -> None:
    config = _config(builtin_plugins, shapes["llama-3.1-8b"], shapes["data"], use_4bit=False, bf16=True)
    with pytest.raises(EnvironmentProblem, match=r"needs about \d+\.\d GiB .* has 12\.0 GiB") as refused:
        check_fits(config, GPU_12, plugins=builtin_plugins)
    assert "to fit, load the base model in 4-bit (QLoRA) (--set use_4bit=true)" in str(refused.value)
    assert "--force" in str(refused.value)
    with pytest.raises(EnvironmentProblem, match=r"even with a 4-bit base, batch 1, .* choose a smaller model"):
        check_fits(config, GPU_7, plugins=builtin_plugins)  # its 4-bit weights alone need 7.6 GiB
    assert check_fits(config, GPU_7, refuse=False, plugins=builtin_plugins).fits is False
    small = _config(builtin_plugins, shapes["qwen2.5-0.5b"], shapes["data"])
    assert check_fits(small, H200, plugins=builtin_plugins).verdict() == "fits"


def test_a_model_without_a_config_cannot_be_planned_and_is_not_refused(
        tmp_path: Path, builtin_plugins: Plugins) -> None:
    config = _config(builtin_plugins, "someone/unknown-model", tmp_path / "data.jsonl")
    plan = check_fits(config, GPU_7, plugins=builtin_plugins)
    assert plan.fits is None and plan.total_gb is None
    assert "no config.json for someone/unknown-model" in plan.headline()


def test_config_json_is_found_in_the_hugging_face_cache_and_among_known_shapes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(QWEN_05B), "utf-8")
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123", "utf-8")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    found = find_model_config("acme/tiny")
    assert found is not None and found[1] == str(snapshot / "config.json")
    known = find_model_config("qwen/qwen2.5-3b-instruct")  # hub IDs are case-insensitive
    assert known is not None and known[0]["hidden_size"] == 2048 and "model_shapes.json" in known[1]
    assert find_model_config("acme/missing") is None


def test_a_null_max_seq_length_is_estimated_from_the_dataset(shapes: dict[str, Path], tmp_path: Path,
                                                             builtin_plugins: Plugins) -> None:
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"input": "x " * 1500, "output": "y"}) + "\n", "utf-8")
    plan = make_plan(_config(builtin_plugins, shapes["qwen2.5-0.5b"], data, max_seq_length=None), H200,
                     plugins=builtin_plugins)
    assert 1000 <= plan.settings["sequence"] <= 1100
    assert any("estimated from the dataset" in note for note in plan.notes)


def test_the_assumed_memory_variable_replaces_the_detected_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ASSUME_MEMORY_ENV, "12")
    target = memory_target(device="cpu")
    assert (target.memory_gb, target.source) == (12.0, ASSUME_MEMORY_ENV)
    monkeypatch.setenv(ASSUME_MEMORY_ENV, "twelve")
    with pytest.raises(UsageError, match=ASSUME_MEMORY_ENV):
        memory_target(device="cpu")


# --- the commands --------------------------------------------------------------------------

def _write_config(folder: Path, model: Path, data: Path, **values: Any) -> Path:
    config = folder / "config.json"
    config.write_text(json.dumps({"task": "text-generation", "model_name": str(model), "dataset": str(data),
                                  "compute_specs": "high_end", **values}), "utf-8")
    return config


def test_plan_command_reports_and_exits_3_when_it_does_not_fit(
        shapes: dict[str, Path], tmp_path: Path, modelforge: Callable[..., Any]) -> None:
    config = _write_config(tmp_path, shapes["llama-3.1-8b"], shapes["data"], use_4bit=False, bf16=True)
    result = modelforge("plan", config, "--gpu", "7", "--json", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    plan = json.loads(result.stdout)
    assert plan["fits"] is False and plan["memory_gb"] == 7
    assert plan["architecture"]["parameters"] == 8030261248
    assert set(plan["parts_gb"]) == {"weights", "lora", "activations", "logits", "overhead"}
    text = modelforge("plan", config, "--gpu", "80", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "memory plan: about" in text.stdout and ": fits" in text.stdout
    assert "weights" in text.stdout and "activations" in text.stdout


def test_train_refuses_a_config_that_cannot_fit_and_force_goes_on(
        shapes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        use_plugins: Callable[[Plugins], Plugins], builtin_plugins: Plugins) -> None:
    """A folder with only Llama-3.1-8B's config.json: the check needs nothing more. Refused on a
    machine assumed to have 7 GiB; with --force the run starts and fails loading the (missing)
    weights, past the check."""
    from modelforge_core.cli import main

    use_plugins(builtin_plugins)
    monkeypatch.setenv(ASSUME_MEMORY_ENV, "7")
    monkeypatch.delenv("MODELFORGE_DEBUG", raising=False)
    output = tmp_path / "run"
    config = _write_config(tmp_path, shapes["llama-3.1-8b"], shapes["data"], use_4bit=False, bf16=True,
                           output_dir=str(output))
    refused = CliRunner().invoke(main, ["train", str(config), "--quiet"])
    assert refused.exit_code == 3, refused.output
    assert "needs about" in refused.output and "has 7.0 GiB (MODELFORGE_ASSUME_MEMORY_GB)" in refused.output
    assert "even with a 4-bit base" in refused.output
    assert not output.exists()  # refused before the run folder is made
    forced = CliRunner().invoke(main, ["train", str(config), "--quiet", "--force"])
    assert forced.exit_code == 2, forced.output
    assert "cannot load" in forced.output and "needs about" not in forced.output
    assert json.loads((output / "status.json").read_text("utf-8"))["status"] == "failed"
