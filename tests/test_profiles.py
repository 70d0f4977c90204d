"""compute_specs profiles (issue 8): the files as data, the hardware rule that picks one, user
values winning over a profile, precision resolved for the hardware, the hardware checks, and
recommended models that fit the profile's memory by the plan. Light: no model is loaded."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from modelforge_core.config import ResolvedConfig, resolve_config
from modelforge_core.errors import EnvironmentProblem
from modelforge_core.hardware import (
    LOW_END_BELOW_GB,
    MID_RANGE_BELOW_GB,
    BitsAndBytesStatus,
    MemoryTarget,
    apply_auto_precision,
    auto_precision,
    bitsandbytes_status,
    precision_problems,
    recommend_profile,
)
from modelforge_core.plan import make_plan
from modelforge_core.plugins import Plugins
from modelforge_core.profiles import PROFILE_NAMES, known_model_shapes, load_profile, profile_precision
from modelforge_core.schema import canonical_schema
from modelforge_core.training import Hardware, check_precision

PROFILES_DIR = Path(str(resources.files("modelforge_core").joinpath("profiles")))
BASE = {"task": "text-generation", "model_name": "Qwen/Qwen2.5-0.5B-Instruct", "dataset": "data.jsonl"}


# --- the files -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_profile_file_is_valid_against_its_schema(name: str) -> None:
    schema = json.loads((PROFILES_DIR / "profile.schema.json").read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    profile = json.loads((PROFILES_DIR / f"{name}.json").read_text("utf-8"))
    assert [e.message for e in Draft202012Validator(schema).iter_errors(profile)] == []
    assert profile["name"] == name
    props = canonical_schema()["properties"]
    for key, value in profile["settings"].items():
        assert not list(Draft202012Validator(props[key]).iter_errors(value)), key
    assert profile_precision(name) == "auto"


def test_the_files_floors_are_the_rule_in_the_code() -> None:
    floors = {name: load_profile(name)["hardware"]["min_accelerator_memory_gb"] for name in PROFILE_NAMES}
    assert floors == {"low_end": 0, "mid_range": LOW_END_BELOW_GB, "high_end": MID_RANGE_BELOW_GB}
    assert (LOW_END_BELOW_GB, MID_RANGE_BELOW_GB) == (7.2, 15.2)


def test_profiles_follow_the_references_ranges() -> None:
    settings = {name: load_profile(name)["settings"] for name in PROFILE_NAMES}
    assert [settings[n]["per_device_train_batch_size"] for n in PROFILE_NAMES] == [1, 2, 4]
    assert [settings[n]["max_seq_length"] for n in PROFILE_NAMES] == [512, 1024, 2048]
    assert [settings[n]["lora_r"] for n in PROFILE_NAMES] == [16, 32, 64]
    for values in settings.values():
        assert values["lora_alpha"] == 2 * values["lora_r"]
        # the same effective batch everywhere: the profiles change memory, not the optimization
        assert values["per_device_train_batch_size"] * values["gradient_accumulation_steps"] == 16
    assert settings["low_end"]["use_4bit"] and settings["mid_range"]["use_4bit"]
    assert settings["high_end"]["use_4bit"] is False


# --- the rule ------------------------------------------------------------------------------

@pytest.mark.parametrize(("device", "memory", "expected"), [
    ("cpu", None, "low_end"),
    ("cpu", 512.0, "low_end"),  # a big server without a GPU still trains on the CPU
    ("cuda", 5.8, "low_end"),  # a "6 GB" card
    ("cuda", 7.2, "mid_range"),
    ("cuda", 7.8, "mid_range"),  # an "8 GB" card
    ("cuda", 11.6, "mid_range"),  # a "12 GB" card
    ("cuda", 14.6, "mid_range"),  # a T4
    ("cuda", 15.2, "high_end"),
    ("cuda", 23.6, "high_end"),  # a "24 GB" card
    ("cuda", 79.2, "high_end"),  # an 80 GB H100
    ("mps", 12.0, "mid_range"),
    ("cuda", None, "low_end"),
])
def test_profile_selection_from_hardware_figures(device: str, memory: float | None, expected: str) -> None:
    recommendation = recommend_profile(device, memory)
    assert recommendation.profile == expected
    assert recommendation.reason


# --- filling -------------------------------------------------------------------------------

def test_profile_fills_unset_values_and_user_values_win(builtin_plugins: Plugins) -> None:
    resolved = resolve_config({**BASE, "compute_specs": "mid_range", "per_device_train_batch_size": 8},
                              overrides={"lora_r": 8}, plugins=builtin_plugins)
    assert resolved["per_device_train_batch_size"] == 8
    assert resolved.sources["per_device_train_batch_size"] == "api"
    assert (resolved["lora_r"], resolved.sources["lora_r"]) == (8, "--set")
    assert (resolved["max_seq_length"], resolved.sources["max_seq_length"]) == (1024, "profile:mid_range")
    assert (resolved["gradient_accumulation_steps"], resolved.sources["gradient_accumulation_steps"]) == (
        8, "profile:mid_range")
    assert resolved.sources["learning_rate"] == "default"


def test_validate_resolved_shows_which_values_the_profile_set(tmp_path: Path, modelforge: Any) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**BASE, "compute_specs": "high_end", "lora_r": 8}), "utf-8")
    result = modelforge("validate", config, "--resolved", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sources = json.loads(result.stdout)["sources"]
    assert sources["per_device_train_batch_size"] == "profile:high_end"
    assert sources["use_4bit"] == "profile:high_end"
    assert sources["lora_r"].startswith("file:")
    text = modelforge("validate", config, "--resolved", cwd=tmp_path).stdout
    assert any("max_seq_length" in line and "2048" in line and "(profile:high_end)" in line
               for line in text.splitlines())


# --- precision -----------------------------------------------------------------------------

@pytest.mark.parametrize(("device", "native", "expected"), [
    ("cuda", True, "bf16"), ("cuda", False, "fp16"), ("cpu", True, "fp32"), ("mps", True, "fp32")])
def test_auto_precision_per_hardware(device: str, native: bool, expected: str) -> None:
    assert auto_precision(device, native) == expected


def _resolved(plugins: Plugins, **values: Any) -> ResolvedConfig:
    return resolve_config({**BASE, "compute_specs": "mid_range", **values}, plugins=plugins)


def test_auto_precision_sets_bf16_on_ampere_and_records_the_profile(builtin_plugins: Plugins) -> None:
    config = _resolved(builtin_plugins)
    assert apply_auto_precision(config, "cuda", True) == "bf16"
    assert (config["bf16"], config["fp16"]) == (True, False)
    assert config.sources["bf16"] == "profile:mid_range"
    # a 4-bit base computes in the same dtype, unless the user chose one
    assert (config["bnb_4bit_compute_dtype"], config.sources["bnb_4bit_compute_dtype"]) == (
        "bfloat16", "profile:mid_range")
    older = _resolved(builtin_plugins)
    assert apply_auto_precision(older, "cuda", False) == "fp16"
    assert (older["bf16"], older["fp16"]) == (False, True)
    assert older["bnb_4bit_compute_dtype"] == "float16"


def test_auto_precision_leaves_a_cpu_run_in_fp32_and_user_choices_alone(builtin_plugins: Plugins) -> None:
    cpu = _resolved(builtin_plugins)
    assert apply_auto_precision(cpu, "cpu", True) == "fp32"
    assert (cpu["bf16"], cpu["fp16"]) == (False, False)
    chosen = _resolved(builtin_plugins, fp16=True, bnb_4bit_compute_dtype="float32")
    assert apply_auto_precision(chosen, "cuda", True) is None
    assert (chosen["fp16"], chosen["bf16"], chosen["bnb_4bit_compute_dtype"]) == (True, False, "float32")
    resumed = _resolved(builtin_plugins)
    resumed.sources.update({k: "run" for k in resumed.sources})  # as `train --resume` marks them
    assert apply_auto_precision(resumed, "cuda", True) is None
    plain = {**BASE, "compute_specs": "mid_range", "fp16": False, "bf16": False}
    assert apply_auto_precision(plain, "cuda", True) is None


def test_check_precision_keeps_a_profile_from_breaking_a_cpu_run(builtin_plugins: Plugins) -> None:
    cpu = Hardware("cpu", "CPU", bf16=True, fp16=False)
    for name in PROFILE_NAMES:
        config = resolve_config({**BASE, "compute_specs": name}, plugins=builtin_plugins)
        check_precision(config, cpu)  # a profile alone never asks for what the CPU lacks
        assert (config["fp16"], config["bf16"]) == (False, False)
    with pytest.raises(EnvironmentProblem, match="fp16 mixed precision needs a GPU"):
        check_precision(_resolved(builtin_plugins, fp16=True), cpu)


# --- checks against the hardware -----------------------------------------------------------

RUNS = BitsAndBytesStatus(True, "0.50.2", "cuda", True, "4-bit quantization runs on cuda")
BROKEN = BitsAndBytesStatus(True, "0.50.2", "cuda", False, "RuntimeError: no kernel image for this GPU")


def _problems(config: dict[str, Any], device: str = "cuda", *, bf16: bool = True, fp16: bool = True,
              bnb: BitsAndBytesStatus = RUNS) -> list[str]:
    return precision_problems(config, device=device, device_name="Tesla T4" if device == "cuda" else device,
                              fp16=fp16, bf16=bf16, bitsandbytes=bnb)


def test_bf16_on_a_gpu_without_it_gets_one_message() -> None:
    [message] = _problems({"bf16": True, "use_4bit": False}, bf16=False)
    assert "bf16 is not supported by Tesla T4" in message and "fp16 to true" in message


def test_4bit_where_bitsandbytes_cannot_run_gets_one_message() -> None:
    [message] = _problems({"use_4bit": True, "strategy": "qlora"}, bnb=BROKEN)
    assert "use_4bit needs bitsandbytes, which cannot run on the Tesla T4" in message
    assert "no kernel image" in message and "strategy to sft" in message
    [message] = _problems({"use_4bit": False, "use_8bit": True, "strategy": "sft"}, bnb=BROKEN)
    assert "use_8bit needs bitsandbytes" in message and "set use_8bit to false" in message
    assert _problems({"use_4bit": False}, bnb=BROKEN) == []


def test_unsloth_without_a_supported_device_gets_one_message() -> None:
    [message] = _problems({"provider": "unsloth", "use_4bit": False}, "mps")
    assert "unsloth provider cannot train on Apple MPS" in message and "provider to huggingface" in message
    assert _problems({"provider": "unsloth", "use_4bit": False}, "cuda") == []


def test_the_bitsandbytes_probe_runs_here_and_fails_where_torch_has_no_device() -> None:
    here = bitsandbytes_status("cpu")
    assert here.installed and here.runs, here.reason
    nowhere = bitsandbytes_status("xla")  # a device type this torch build has no kernels for
    assert nowhere.installed and not nowhere.runs
    assert nowhere.reason


# --- recommended models fit ----------------------------------------------------------------

def _recommended() -> list[tuple[str, str, str]]:
    return [(name, task, model) for name in PROFILE_NAMES
            for task, models in load_profile(name)["recommended_models"].items() for model in models]


@pytest.mark.parametrize(("profile", "task", "model"), _recommended())
def test_recommended_models_fit_their_profiles_memory(profile: str, task: str, model: str,
                                                      builtin_plugins: Plugins) -> None:
    """Planned with the profile's own settings and precision "auto" on an Ampere GPU with the
    memory the profile is planned for (and, for low_end, also on an 8 GiB machine without GPU)."""
    assert model in known_model_shapes(), f"{model}: add its shape to model_shapes.json"
    memory = load_profile(profile)["hardware"]["planned_for_gb"]
    targets = [MemoryTarget("cuda", "GPU", memory, "test", bf16=True, fp16=True)]
    if profile == "low_end":
        targets.append(MemoryTarget("cpu", "CPU", 8.0, "test", bf16=True, fp16=False))
    for target in targets:
        config = resolve_config({"task": task, "model_name": model, "dataset": "data.jsonl",
                                 "compute_specs": profile}, plugins=builtin_plugins)
        plan = make_plan(config, target, plugins=builtin_plugins)
        assert plan.total_gb is not None, plan.notes
        assert plan.fits, f"{model} on {profile}: {plan.total_gb} GiB > {memory} GiB ({target.device})"
        if target.device == "cuda":
            assert plan.settings["precision"] == "bf16"


#: Published parameter counts of the recommended models (with the head the task loads).
PUBLISHED_PARAMETERS = {
    "Qwen/Qwen2.5-0.5B-Instruct": 494e6, "Qwen/Qwen2.5-1.5B-Instruct": 1.54e9, "Qwen/Qwen2.5-3B-Instruct": 3.09e9,
    "Qwen/Qwen2.5-7B-Instruct": 7.61e9, "meta-llama/Llama-3.2-1B-Instruct": 1.24e9,
    "meta-llama/Llama-3.2-3B-Instruct": 3.21e9, "meta-llama/Llama-3.1-8B-Instruct": 8.03e9,
    "microsoft/Phi-3.5-mini-instruct": 3.82e9, "google-t5/t5-small": 60.5e6, "google-t5/t5-base": 223e6,
    "google-t5/t5-large": 738e6, "facebook/bart-base": 139e6, "facebook/bart-large-cnn": 406e6,
    "distilbert/distilbert-base-uncased": 66.4e6, "google-bert/bert-base-uncased": 109e6,
    "FacebookAI/roberta-base": 124e6, "FacebookAI/roberta-large": 355e6, "microsoft/deberta-v3-base": 184e6,
}


def test_known_shapes_give_the_published_sizes() -> None:
    from modelforge_core.plan import architecture_from_config

    for model, published in PUBLISHED_PARAMETERS.items():
        counted = architecture_from_config(known_model_shapes()[model]).parameters()
        assert abs(counted - published) / published < 0.02, (model, counted)
