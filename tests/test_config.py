"""The config engine: loading JSON and YAML, every rule with its path, `--set`, precedence and
provenance, relative paths, and compute_specs profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from modelforge_core.config import Document, load_document, parse_overrides, resolve_config
from modelforge_core.data import check_dataset
from modelforge_core.errors import ConfigError, Problem, UsageError, ValidationFailed
from modelforge_core.plugins import Plugins
from modelforge_core.profiles import PROFILE_NAMES, load_profile, profile_values
from modelforge_core.schema import canonical_schema, effective_schema

BASE: dict[str, Any] = {"task": "text-generation", "model_name": "Qwen/Qwen2.5-0.5B-Instruct",
                        "dataset": "data/train.jsonl", "compute_specs": "low_end"}
PROFILES_DIR = Path(__file__).resolve().parents[1] / "modelforge_core" / "profiles"


def _problems(config: dict[str, Any], plugins: Plugins, **kwargs: Any) -> list[Problem]:
    with pytest.raises(ValidationFailed) as failure:
        resolve_config(config, plugins=plugins, **kwargs)
    return failure.value.problems


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
    return path


# --- every rule of the reference and of the design, with its path --------------------------

RULES = [
    # (rule, change to a valid config, path named, message text)
    ("task enum", {"task": "translation"}, "task", "translation"),
    ("strategy enum", {"strategy": "ppo"}, "strategy", "ppo"),
    ("provider enum", {"provider": "vllm"}, "provider", "vllm"),
    ("compute_specs enum", {"compute_specs": "ultra"}, "compute_specs", "is not one of"),
    ("optim enum", {"optim": "adam"}, "optim", "is not one of"),
    ("lr_scheduler_type enum", {"lr_scheduler_type": "step"}, "lr_scheduler_type", "is not one of"),
    ("bnb_4bit_compute_dtype enum", {"bnb_4bit_compute_dtype": "int8"}, "bnb_4bit_compute_dtype", "is not one of"),
    ("bnb_4bit_quant_type enum", {"bnb_4bit_quant_type": "int4"}, "bnb_4bit_quant_type", "is not one of"),
    ("model_name not empty", {"model_name": ""}, "model_name", "must not be empty"),
    ("dataset not empty", {"dataset": ""}, "dataset", "must not be empty"),
    ("num_train_epochs >= 1", {"num_train_epochs": 0}, "num_train_epochs", "minimum of 1"),
    ("per_device_train_batch_size >= 1", {"per_device_train_batch_size": 0}, "per_device_train_batch_size",
     "minimum of 1"),
    ("per_device_eval_batch_size >= 1", {"per_device_eval_batch_size": 0}, "per_device_eval_batch_size",
     "minimum of 1"),
    ("learning_rate > 0", {"learning_rate": 0}, "learning_rate", "greater than 0"),
    ("learning_rate <= 1", {"learning_rate": 1.01}, "learning_rate", "maximum of 1"),
    ("lora_r >= 1", {"lora_r": 0}, "lora_r", "minimum of 1"),
    ("lora_r <= 256", {"lora_r": 257}, "lora_r", "maximum of 256"),
    ("eval_split >= 0", {"eval_split": -0.2}, "eval_split", "minimum of 0"),
    ("eval_split < 1", {"eval_split": 1.0}, "eval_split", "less than 1"),
    ("lora_dropout <= 1", {"lora_dropout": 1.5}, "lora_dropout", "maximum of 1"),
    ("lora_dropout >= 0", {"lora_dropout": -0.5}, "lora_dropout", "minimum of 0"),
    ("warmup_ratio <= 1", {"warmup_ratio": 2}, "warmup_ratio", "maximum of 1"),
    ("warmup_ratio >= 0", {"warmup_ratio": -1}, "warmup_ratio", "minimum of 0"),
    ("max_steps is not 0", {"max_steps": 0}, "max_steps", "not allowed"),
    ("max_steps >= -1", {"max_steps": -5}, "max_steps", "minimum of -1"),
    ("gradient_accumulation_steps >= 1", {"gradient_accumulation_steps": 0}, "gradient_accumulation_steps",
     "minimum of 1"),
    ("lora_alpha >= 1", {"lora_alpha": 0}, "lora_alpha", "minimum of 1"),
    ("eval_steps >= 1", {"eval_steps": 0}, "eval_steps", "minimum of 1"),
    ("use_4bit and use_8bit exclusive", {"use_4bit": True, "use_8bit": True}, "use_4bit", "mutually exclusive"),
    ("use_8bit needs use_4bit false", {"use_8bit": True}, "use_4bit", "mutually exclusive"),
    ("fp16 and bf16 exclusive", {"fp16": True, "bf16": True}, "bf16", "mutually exclusive"),
    ("qlora needs 4-bit", {"strategy": "qlora", "use_4bit": False}, "use_4bit", "qlora"),
    ("unsloth needs max_seq_length", {"provider": "unsloth"}, "max_seq_length", "unsloth"),
    ("unsloth needs an integer max_seq_length", {"provider": "unsloth", "max_seq_length": None},
     "max_seq_length", "unsloth"),
    ("unsloth only for text-generation (summarization)",
     {"provider": "unsloth", "max_seq_length": 512, "task": "summarization"}, "task", "unsloth"),
    ("unsloth only for text-generation (QA)",
     {"provider": "unsloth", "max_seq_length": 512, "task": "extractive-question-answering"}, "task", "unsloth"),
    ("unsloth does not run rlhf", {"provider": "unsloth", "max_seq_length": 512, "strategy": "rlhf"},
     "strategy", "unsloth"),
    ("dpo not for summarization", {"task": "summarization", "strategy": "dpo"}, "strategy", "summarization"),
    ("rlhf not for summarization", {"task": "summarization", "strategy": "rlhf"}, "strategy", "summarization"),
    ("dpo not for QA", {"task": "extractive-question-answering", "strategy": "dpo"}, "strategy",
     "extractive-question-answering"),
    ("rlhf not for QA", {"task": "extractive-question-answering", "strategy": "rlhf"}, "strategy",
     "extractive-question-answering"),
    ("unknown key", {"lora_rnak": 8}, "lora_rnak", "unknown field"),
    ("wrong type: integer", {"lora_r": "16"}, "lora_r", "expected integer"),
    ("wrong type: boolean", {"packing": "true"}, "packing", "expected boolean"),
    ("wrong type: number", {"warmup_ratio": [0.1]}, "warmup_ratio", "expected number"),
    ("wrong type: string", {"dataset": 7}, "dataset", "expected string"),
]


@pytest.mark.parametrize(("change", "path", "text"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule_rejects_with_its_path(change: dict[str, Any], path: str, text: str,
                                         builtin_plugins: Plugins) -> None:
    problems = _problems({**BASE, **change}, builtin_plugins)
    assert any(p.path == path and text in p.message for p in problems), problems


@pytest.mark.parametrize("field", ["task", "model_name", "dataset", "compute_specs"])
def test_missing_required_field_is_named(field: str, builtin_plugins: Plugins) -> None:
    config = {k: v for k, v in BASE.items() if k != field}
    problems = _problems(config, builtin_plugins)
    assert [(p.path, p.code) for p in problems] == [(field, "required")]
    assert problems[0].hint  # the field's description


def test_three_mistakes_are_all_named_with_their_lines(tmp_path: Path, builtin_plugins: Plugins) -> None:
    config = _write(tmp_path / "three.json", """{
  "task": "text-generation",
  "model_name": "Qwen/Qwen2.5-0.5B-Instruct",
  "dataset": "data/train.jsonl",
  "compute_specs": "low_end",
  "lora_r": 512,
  "learning_rate": 0,
  "optimiser": "adamw_torch"
}
""")
    problems = _problems_of_file(config, builtin_plugins)
    assert [(p.path, p.line) for p in problems] == [("lora_r", 6), ("learning_rate", 7), ("optimiser", 8)]
    assert all(p.file == str(config) for p in problems)
    assert problems[2].hint == "did you mean 'optim'?"


def _problems_of_file(path: Path, plugins: Plugins, overrides: dict[str, Any] | None = None) -> list[Problem]:
    with pytest.raises(ValidationFailed) as failure:
        resolve_config(load_document(path), overrides=overrides, plugins=plugins)
    return failure.value.problems


@pytest.mark.parametrize(("typo", "nearest"), [("lora_alpah", "lora_alpha"), ("learnig_rate", "learning_rate"),
                                               ("eval_split_ratio", "eval_split"), ("use4bit", "use_4bit")])
def test_unknown_key_suggests_the_nearest_key(typo: str, nearest: str, builtin_plugins: Plugins) -> None:
    (problem,) = _problems({**BASE, typo: 1}, builtin_plugins)
    assert (problem.path, problem.code) == (typo, "unknown_field")
    assert problem.hint == f"did you mean {nearest!r}?"


def test_unknown_option_key_suggests_inside_the_options_object(builtin_plugins: Plugins) -> None:
    (problem,) = _problems({**BASE, "strategy": "dpo", "dpo": {"bta": 0.2}}, builtin_plugins)
    assert problem.path == "dpo.bta"
    assert problem.hint == "did you mean 'beta'?"


def test_every_problem_has_a_hint_where_the_field_has_a_description(builtin_plugins: Plugins) -> None:
    problems = _problems({**BASE, "lora_r": 0, "optim": "adam", "seed": "x"}, builtin_plugins)
    assert {p.path for p in problems} == {"lora_r", "optim", "seed"}
    assert all(p.hint for p in problems)


def test_not_an_object(builtin_plugins: Plugins) -> None:
    with pytest.raises(ValidationFailed) as failure:
        resolve_config(["task"], plugins=builtin_plugins)  # type: ignore[arg-type]
    assert failure.value.problems[0].path == "(root)"


# --- loading files -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "text", "where", "message"), [
    ("trailing-comma.json", '{\n  "task": "text-generation",\n}\n', (3, 1), "property name"),
    ("missing-comma.json", '{\n  "task": "text-generation"\n  "lora_r": 8\n}\n', (3, 3), "',' delimiter"),
    ("nan.json", '{\n  "learning_rate": NaN\n}\n', (2, 20), "NaN is not valid JSON"),
    ("duplicate.json", '{\n  "lora_r": 8,\n  "lora_r": 16\n}\n', (3, 3), "duplicate key 'lora_r'"),
    ("bad.yaml", "task: text-generation\nlora_r: [8\n", (3, 1), "invalid YAML"),
    ("tab.yml", "task: text-generation\n\tlora_r: 8\n", (2, 1), "invalid YAML"),
    ("duplicate.yaml", "task: text-generation\nlora_r: 8\nlora_r: 16\n", (3, 1), "duplicate key 'lora_r'"),
    ("number-key.yaml", "task: text-generation\n8: lora_r\n", (2, 1), "keys must be strings"),
    ("infinity.yaml", "task: text-generation\nmax_grad_norm: !!float .inf\n", (2, 16), "not a finite number"),
])
def test_malformed_files_give_line_and_column(tmp_path: Path, name: str, text: str,
                                              where: tuple[int, int | None], message: str) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(ConfigError) as failure:
        load_document(path)
    error = failure.value
    line = where[0]
    assert (error.line, error.column) == where
    assert message in str(error)
    assert str(error).startswith(f"{path}:{line}")


@pytest.mark.parametrize(("text", "message"), [("", "empty"), ("   \n", "empty"), ("\xff\xfe", "not UTF-8")])
def test_empty_or_binary_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=message):
        load_document(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_document(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="folder"):
        load_document(tmp_path)


def test_yaml_content_in_a_json_file_gets_a_hint(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.json", "task: text-generation\n")
    with pytest.raises(ConfigError, match=r"\.yaml or \.yml"):
        load_document(path)


def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = _write(tmp_path / "deep.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_document(path)


YAML_CONFIG = """\
# The same config as JSON_CONFIG.
task: text-generation
model_name: Qwen/Qwen2.5-0.5B-Instruct
dataset: data/train.jsonl
compute_specs: mid_range
strategy: dpo
learning_rate: 5e-7
lora_target_modules: [q_proj, v_proj]
max_seq_length: null
bf16: true
run_name: 2024-01-01
lora_r: 016
dpo:
  beta: 0.25
"""

JSON_CONFIG = {
    "task": "text-generation", "model_name": "Qwen/Qwen2.5-0.5B-Instruct", "dataset": "data/train.jsonl",
    "compute_specs": "mid_range", "strategy": "dpo", "learning_rate": 5e-7,
    "lora_target_modules": ["q_proj", "v_proj"], "max_seq_length": None, "bf16": True,
    "run_name": "2024-01-01", "lora_r": 16, "dpo": {"beta": 0.25},
}


def test_yaml_and_json_load_the_same(tmp_path: Path, builtin_plugins: Plugins) -> None:
    """YAML means what the same JSON means: 5e-7 is a number, 2024-01-01 a string, 016 is 16."""
    yaml_doc = load_document(_write(tmp_path / "config.yaml", YAML_CONFIG))
    json_doc = load_document(_write(tmp_path / "config.json", json.dumps(JSON_CONFIG, indent=2)))
    assert yaml_doc.data == json_doc.data == JSON_CONFIG
    from_yaml = resolve_config(yaml_doc, plugins=builtin_plugins)
    from_json = resolve_config(json_doc, plugins=builtin_plugins)
    assert from_yaml.data == from_json.data
    assert yaml_doc.line_of(["dpo", "beta"]) == 14


@pytest.mark.parametrize(("text", "value"), [("use_4bit: no", "no"), ("use_4bit: off", "off"),
                                             ("use_4bit: False", False), ("lora_r: 0x10", "0x10"),
                                             ("max_grad_norm: .inf", ".inf")])
def test_yaml_scalars_follow_yaml_1_2(tmp_path: Path, text: str, value: Any) -> None:
    document = load_document(_write(tmp_path / "config.yml", text + "\n"))
    assert document.data == {text.partition(":")[0]: value}


def test_yaml_boolean_words_are_named_as_type_errors(tmp_path: Path, builtin_plugins: Plugins) -> None:
    path = _write(tmp_path / "config.yaml", "\n".join(f"{k}: {v}" for k, v in BASE.items()) + "\nuse_4bit: no\n")
    (problem,) = _problems_of_file(path, builtin_plugins)
    assert (problem.path, problem.line) == ("use_4bit", 5)
    assert 'expected boolean, got string "no"' in problem.message


# --- --set -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("item", "expected"), [
    ("lora_r=32", {"lora_r": 32}),
    ("lora_r=1e2", {"lora_r": 100}),
    ("learning_rate=1e-4", {"learning_rate": 1e-4}),
    ("learning_rate=1", {"learning_rate": 1}),
    ("use_4bit=false", {"use_4bit": False}),
    ("packing=yes", {"packing": True}),
    ("max_seq_length=null", {"max_seq_length": None}),
    ("max_seq_length=2048", {"max_seq_length": 2048}),
    ("output_dir=none", {"output_dir": None}),
    ("run_name=my-run", {"run_name": "my-run"}),
    ("lora_target_modules=q_proj,v_proj", {"lora_target_modules": ["q_proj", "v_proj"]}),
    ('lora_target_modules=["q_proj"]', {"lora_target_modules": ["q_proj"]}),
    ("lora_target_modules=all-linear", {"lora_target_modules": "all-linear"}),
    ("dpo.beta=0.2", {"dpo": {"beta": 0.2}}),
    ('dpo={"beta": 0.3}', {"dpo": {"beta": 0.3}}),
    ("rlhf.reward_model_path=null", {"rlhf": {"reward_model_path": None}}),
    ("model_name=a=b", {"model_name": "a=b"}),
    # Text that fits no type stays text, so validation names the field and the type.
    ("lora_r=many", {"lora_r": "many"}),
    ("lora_r=2.5", {"lora_r": "2.5"}),
    ("learning_rate=nan", {"learning_rate": "nan"}),
    ("max_grad_norm=inf", {"max_grad_norm": "inf"}),
    ("use_4bit=maybe", {"use_4bit": "maybe"}),
    # Unknown keys: JSON if it parses, else text; validation then suggests the nearest key.
    ("lora_rank=8", {"lora_rank": 8}),
])
def test_set_coerces_through_the_schema(item: str, expected: dict[str, Any], builtin_plugins: Plugins) -> None:
    parsed = parse_overrides([item], effective_schema(builtin_plugins.registry))
    assert parsed == expected
    assert [type(v) for v in parsed.values()] == [type(v) for v in expected.values()]


def test_set_merges_nested_items(builtin_plugins: Plugins) -> None:
    schema = effective_schema(builtin_plugins.registry)
    assert parse_overrides(["dpo.beta=0.2", "dpo.loss_type=ipo"], schema) == {"dpo": {"beta": 0.2, "loss_type": "ipo"}}


@pytest.mark.parametrize("item", ["lora_r", "=3", " =3"])
def test_set_without_key_or_value_is_a_usage_error(item: str) -> None:
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_overrides([item], canonical_schema())


def test_set_shape_clash_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="set twice"):
        parse_overrides(["dpo=1", "dpo.beta=0.2"], canonical_schema())


def test_set_problems_say_they_came_from_set(tmp_path: Path, builtin_plugins: Plugins) -> None:
    path = _write(tmp_path / "config.json", json.dumps({**BASE, "lora_r": 8}, indent=2))
    overrides = parse_overrides(["lora_r=0", "learning_rate=nan"], canonical_schema())
    problems = _problems_of_file(path, builtin_plugins, overrides)
    assert {(p.path, p.file, p.line) for p in problems} == {("lora_r", "--set", None),
                                                             ("learning_rate", "--set", None)}


# --- precedence and provenance -------------------------------------------------------------

def test_precedence_default_profile_file_set(tmp_path: Path, builtin_plugins: Plugins) -> None:
    path = _write(tmp_path / "config.json", json.dumps({**BASE, "lora_r": 8, "lora_alpha": 8}))
    resolved = resolve_config(load_document(path), overrides={"lora_r": 4}, plugins=builtin_plugins)
    expected = {
        "learning_rate": (2e-4, "default"),                          # the schema only
        "gradient_accumulation_steps": (16, "profile:low_end"),      # profile beats default (4)
        "lora_alpha": (8, f"file:{path}"),                           # file beats profile (32)
        "lora_r": (4, "--set"),                                      # --set beats file (8) and profile (16)
    }
    for key, (value, source) in expected.items():
        assert (resolved[key], resolved.sources[key]) == (value, source), key
    assert set(resolved.sources) == set(resolved.data)
    assert resolved.to_json()["sources"]["compute_specs"] == f"file:{path}"


def test_resolved_config_is_complete_ordered_and_typed(builtin_plugins: Plugins) -> None:
    resolved = resolve_config({**BASE, "strategy": "dpo", "lora_r": 16.0}, plugins=builtin_plugins)
    schema = effective_schema(builtin_plugins.registry)
    canonical_fields = [k for k in schema["properties"] if k in resolved.data and k != "dpo"]
    assert list(resolved.data)[: len(canonical_fields)] == canonical_fields
    assert resolved["lora_r"] == 16
    assert type(resolved["lora_r"]) is int  # peft needs an int rank, JSON Schema accepted 16.0
    assert resolved.options("dpo") == {"beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.0,
                                         "discopop_tau": 0.05}
    assert resolved.sources["dpo.beta"] == "default"
    assert resolved.options("rlhf") == {}
    assert "rlhf" not in resolved  # options of components not selected are not filled in


def test_option_defaults_merge_with_user_options(builtin_plugins: Plugins) -> None:
    resolved = resolve_config({**BASE, "strategy": "dpo", "dpo": {"beta": 0.3}}, plugins=builtin_plugins,
                              overrides={"dpo": {"loss_type": "ipo"}})
    assert resolved.options("dpo") == {"beta": 0.3, "loss_type": "ipo", "label_smoothing": 0.0,
                                         "discopop_tau": 0.05}
    assert (resolved.sources["dpo.beta"], resolved.sources["dpo.loss_type"],
            resolved.sources["dpo.label_smoothing"]) == ("api", "--set", "default")


# --- relative paths --------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          builtin_plugins: Plugins) -> None:
    folder = tmp_path / "project"
    (folder / "models" / "tiny").mkdir(parents=True)
    path = _write(folder / "configs" / "config.json", json.dumps({
        **BASE, "dataset": "../data/train.jsonl", "output_dir": "runs/one", "model_name": "../models/tiny"}))
    monkeypatch.chdir(tmp_path)
    resolved = resolve_config(load_document(path.relative_to(tmp_path)), plugins=builtin_plugins)
    assert resolved["dataset"] == str(folder / "data" / "train.jsonl")
    assert resolved["output_dir"] == str(folder / "configs" / "runs" / "one")
    assert resolved["model_name"] == str(folder / "models" / "tiny")


def test_existing_local_model_folder_without_dot_is_a_path(tmp_path: Path, builtin_plugins: Plugins) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    path = _write(tmp_path / "config.json", json.dumps({**BASE, "model_name": "models/tiny"}))
    assert resolve_config(load_document(path), plugins=builtin_plugins)["model_name"] == str(tmp_path / "models/tiny")


@pytest.mark.parametrize("hub_id", ["Qwen/Qwen2.5-0.5B-Instruct", "gpt2", "meta-llama/Llama-3.1-8B-Instruct"])
def test_hub_ids_are_left_alone(tmp_path: Path, hub_id: str, builtin_plugins: Plugins) -> None:
    path = _write(tmp_path / "config.json", json.dumps({**BASE, "model_name": hub_id}))
    assert resolve_config(load_document(path), plugins=builtin_plugins)["model_name"] == hub_id


def test_absolute_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builtin_plugins: Plugins) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = _write(tmp_path / "config.json", json.dumps({**BASE, "dataset": "~/data.jsonl",
                                                        "output_dir": "/srv/runs/x"}))
    resolved = resolve_config(load_document(path), plugins=builtin_plugins)
    assert resolved["dataset"] == str(tmp_path / "home" / "data.jsonl")
    assert resolved["output_dir"] == "/srv/runs/x"


def test_set_paths_resolve_against_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      builtin_plugins: Plugins) -> None:
    path = _write(tmp_path / "configs" / "config.json", json.dumps(BASE))
    monkeypatch.chdir(tmp_path)
    resolved = resolve_config(load_document(path), overrides={"dataset": "other.jsonl"}, plugins=builtin_plugins)
    assert resolved["dataset"] == str(tmp_path / "other.jsonl")


# --- compute_specs profiles ------------------------------------------------------------------

def test_qlora_on_high_end_keeps_4bit(builtin_plugins: Plugins) -> None:
    resolved = resolve_config({**BASE, "compute_specs": "high_end", "strategy": "qlora"}, plugins=builtin_plugins)
    assert resolved["use_4bit"] is True
    assert resolved.sources["use_4bit"] == "default"
    assert resolved.sources["per_device_train_batch_size"] == "profile:high_end"


def test_8bit_choice_is_respected_by_a_4bit_profile(builtin_plugins: Plugins) -> None:
    resolved = resolve_config({**BASE, "use_8bit": True, "use_4bit": False}, plugins=builtin_plugins)
    assert (resolved["use_4bit"], resolved["use_8bit"]) == (False, True)
    assert resolved.sources["use_4bit"] == "api"


def test_4bit_settings_keep_4bit_on_high_end(builtin_plugins: Plugins) -> None:
    resolved = resolve_config({**BASE, "compute_specs": "high_end", "bnb_4bit_quant_type": "fp4"},
                              plugins=builtin_plugins)
    assert resolved["use_4bit"] is True


def test_user_values_beat_every_profile_setting(builtin_plugins: Plugins) -> None:
    for name in PROFILE_NAMES:
        settings = load_profile(name)["settings"]
        user = {**BASE, "compute_specs": name, **{k: _other_value(k, v) for k, v in settings.items()}}
        user["use_4bit"] = False
        assert profile_values(name, user) == {}
        resolved = resolve_config(user, plugins=builtin_plugins)
        assert all(resolved.sources[k] == "api" for k in settings)


def _other_value(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return {"optim": "sgd", "bnb_4bit_compute_dtype": "float32"}.get(key, value)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profile_files_are_valid(name: str) -> None:
    schema = json.loads((PROFILES_DIR / "profile.schema.json").read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    profile = load_profile(name)
    assert not list(Draft202012Validator(schema).iter_errors(profile))
    assert profile["name"] == name
    props = canonical_schema()["properties"]
    for key, value in profile["settings"].items():
        assert not list(Draft202012Validator(props[key]).iter_errors(value)), key


def test_profiles_scale_up() -> None:
    batch = [load_profile(n)["settings"]["per_device_train_batch_size"] for n in PROFILE_NAMES]
    length = [load_profile(n)["settings"]["max_seq_length"] for n in PROFILE_NAMES]
    assert batch == sorted(batch)
    assert length == sorted(length)


# --- the dataset check (light: no model is loaded) ------------------------------------------

def test_dataset_rows_with_unicode_line_separators_stay_whole(tmp_path: Path, builtin_plugins: Plugins) -> None:
    rows = [{"input": "first\u2028line", "output": "ok\u2029"}, {"input": "b", "output": "c"}]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    resolved = resolve_config({**BASE, "dataset": str(data)}, plugins=builtin_plugins)
    dataset = check_dataset(resolved, plugins=builtin_plugins)
    assert dataset.rows == rows
    assert dataset.lines == [1, 2]


def test_dataset_problems_name_line_and_column(tmp_path: Path, builtin_plugins: Plugins) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"input": "a", "output": "b"}\r\n\n  {"input": "a" "output": "b"}\n{"input": "x"}\n', "utf-8")
    resolved = resolve_config({**BASE, "dataset": str(data)}, plugins=builtin_plugins)
    with pytest.raises(ValidationFailed) as failure:
        check_dataset(resolved, plugins=builtin_plugins)
    problems = failure.value.problems
    assert [(p.line, p.path) for p in problems] == [(3, "(row)"), (4, "output")]
    assert "column 17" in problems[0].message


def test_document_lines_point_at_keys(tmp_path: Path) -> None:
    document = load_document(_write(tmp_path / "c.json", '{\n  "dpo":\n    {"beta":\n      0.2}\n}'))
    assert isinstance(document, Document)
    assert document.line_of(["dpo"]) == 2
    assert document.line_of(["dpo", "beta"]) == 3
    assert document.line_of(["dpo", "missing"]) == 2
    assert document.line_of(["missing"]) == 1
