"""The light commands through the real ``modelforge`` console script: validate, schema, plugins,
--help. They answer without importing torch or transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from modelforge_core.plugins import BUILTIN_DISTRIBUTIONS
from modelforge_core.schema import canonical_schema

Run = Callable[..., subprocess.CompletedProcess[str]]

VALID = {"task": "text-generation", "model_name": "Qwen/Qwen2.5-0.5B-Instruct", "dataset": "data/train.jsonl",
         "compute_specs": "low_end"}

THREE_MISTAKES = """{
  "task": "text-generation",
  "model_name": "Qwen/Qwen2.5-0.5B-Instruct",
  "dataset": "data/train.jsonl",
  "compute_specs": "low_end",
  "lora_r": 0,
  "fp16": true,
  "bf16": true,
  "optimizer": "sgd"
}
"""


@pytest.fixture
def valid_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(VALID, indent=2), "utf-8")
    return path


@pytest.fixture
def invalid_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(THREE_MISTAKES, "utf-8")
    return path


# --- validate --------------------------------------------------------------------------------

def test_validate_valid_prints_a_short_ok(modelforge: Run, valid_config: Path) -> None:
    result = modelforge("validate", valid_config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{valid_config}: OK (text-generation / sft / huggingface, profile low_end)"]
    assert result.stderr == ""


def test_validate_invalid_names_every_problem_with_its_line(modelforge: Run, invalid_config: Path) -> None:
    result = modelforge("validate", invalid_config)
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert lines[0] == "config is invalid (3 problems):"
    problems = [line.strip() for line in lines[1:] if not line.strip().startswith("hint:")]
    assert problems == [
        f"{invalid_config}:6: lora_r: 0 is below the minimum of 1",
        f"{invalid_config}:8: bf16: fp16 and bf16 are mutually exclusive: pick one precision. (got true)",
        f"{invalid_config}:9: optimizer: unknown field 'optimizer'",
    ]
    assert "hint: did you mean 'optim'?" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_validate_json_valid(modelforge: Run, valid_config: Path) -> None:
    result = modelforge("validate", valid_config, "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"valid": True, "file": str(valid_config), "warnings": []}


def test_validate_json_errors_shape(modelforge: Run, invalid_config: Path) -> None:
    result = modelforge("validate", invalid_config, "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["error_count"] == len(report["errors"]) == 3
    for error in report["errors"]:
        assert {"path", "message", "code", "line", "file"} <= set(error)
        assert isinstance(error["line"], int)
    by_path = {e["path"]: e for e in report["errors"]}
    assert by_path["optimizer"]["hint"] == "did you mean 'optim'?"
    assert by_path["optimizer"]["code"] == "unknown_field"
    assert by_path["lora_r"]["hint"].startswith("LoRA rank")
    assert by_path["bf16"]["code"] == "conflict"


def test_validate_resolved_shows_each_source(modelforge: Run, valid_config: Path) -> None:
    result = modelforge("validate", valid_config, "--resolved", "--set", "lora_r=8")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows["lora_r"].endswith("(--set)")
    assert rows["gradient_accumulation_steps"].endswith("(profile:low_end)")
    assert rows["task"].endswith(f"(file:{valid_config})")
    assert rows["learning_rate"].endswith("(default)")
    assert set(rows) == set(canonical_schema()["properties"]) - {"$schema"}


def test_validate_resolved_json(modelforge: Run, valid_config: Path) -> None:
    result = modelforge("validate", valid_config, "--resolved", "--json", "--set", "strategy=dpo",
                        "--set", "dpo.beta=0.5")
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert report["config"]["dpo"] == {"beta": 0.5, "loss_type": "sigmoid", "label_smoothing": 0.0,
                                        "discopop_tau": 0.05}
    assert report["sources"]["dpo.beta"] == "--set"
    assert report["sources"]["dpo.loss_type"] == "default"
    assert report["config"]["dataset"] == str(valid_config.parent / "data" / "train.jsonl")


def test_validate_bad_set_value_is_named(modelforge: Run, valid_config: Path) -> None:
    result = modelforge("validate", valid_config, "--set", "lora_r=lots")
    assert result.returncode == 2
    assert '--set: lora_r: expected integer, got string "lots"' in result.stdout


def test_validate_malformed_json_without_traceback(modelforge: Run, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "task": "text-generation",\n  "lora_r": 8,,\n}\n', "utf-8")
    result = modelforge("validate", path)
    assert result.returncode == 2
    expected = f"error: {path}:3:15: invalid JSON: Expecting property name enclosed in double quotes"
    assert result.stderr.strip() == expected
    report = json.loads(modelforge("validate", path, "--json").stdout)
    assert (report["errors"][0]["line"], report["errors"][0]["column"], report["errors"][0]["code"]) == (3, 15, "parse")


def test_validate_malformed_yaml_without_traceback(modelforge: Run, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("task: text-generation\nlora_r: [8\n", "utf-8")
    result = modelforge("validate", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}:3:1: invalid YAML")
    assert "Traceback" not in result.stderr


def test_validate_missing_file(modelforge: Run, tmp_path: Path) -> None:
    result = modelforge("validate", tmp_path / "nope.json")
    assert result.returncode == 2
    assert "config file not found" in result.stderr


def test_validate_bad_set_syntax_is_a_usage_error(modelforge: Run, valid_config: Path) -> None:
    result = modelforge("validate", valid_config, "--set", "lora_r")
    assert result.returncode == 2
    assert "expected KEY=VALUE" in result.stderr
    report = json.loads(modelforge("validate", valid_config, "--set", "lora_r", "--json").stdout)
    assert report["errors"][0]["code"] == "usage"


def test_validate_yaml(modelforge: Run, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in VALID.items()) + "learning_rate: 2e-4\n", "utf-8")
    assert modelforge("validate", path).returncode == 0


# --- schema ----------------------------------------------------------------------------------

def test_schema_prints_the_effective_schema(modelforge: Run) -> None:
    result = modelforge("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$id"].endswith("/effective.schema.json")
    assert {"dpo", "rlhf", "summarization", "extractive-question-answering"} <= set(schema["properties"])


def test_schema_canonical_prints_the_file(modelforge: Run) -> None:
    result = modelforge("schema", "--canonical")
    assert result.returncode == 0
    assert json.loads(result.stdout) == canonical_schema()


# --- plugins ---------------------------------------------------------------------------------

def test_plugins_lists_the_nine_builtins(modelforge: Run) -> None:
    result = modelforge("plugins")
    assert result.returncode == 0
    for distribution in BUILTIN_DISTRIBUTIONS.values():
        assert distribution in result.stdout
    for kind, name in BUILTIN_DISTRIBUTIONS:
        assert f"{kind} {name!r}" in result.stdout
    assert "heads=causal-lm" in result.stdout
    assert "strategies=dpo|qlora|sft" in result.stdout  # unsloth's capability
    assert "options: beta, discopop_tau, label_smoothing, loss_type" in result.stdout


def test_plugins_json(modelforge: Run) -> None:
    result = modelforge("plugins", "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["skipped"] == []
    rows = {row["distribution"]: row for row in report["plugins"]}
    assert set(BUILTIN_DISTRIBUTIONS.values()) <= set(rows)
    for (kind, name), distribution in BUILTIN_DISTRIBUTIONS.items():
        row = rows[distribution]
        assert row["version"]
        registration = {"provider": "register_providers", "strategy": "register_strategies",
                        "task": "register_tasks", "reward": "register_rewards", "logger": "register_loggers"}[kind]
        assert registration in row["hooks"]  # a built-in may use lifecycle hooks too
        assert row["hooks"] == sorted(row["hooks"])
        [component] = [c for c in row["components"] if (c["kind"], c["name"]) == (kind, name)]
        assert "needs_gpu" in component["capabilities"]
    dpo = rows["modelforge-strategy-dpo"]["components"][0]
    assert dpo["capabilities"]["data_shape"] == "preference"
    assert dpo["options"] == ["beta", "discopop_tau", "label_smoothing", "loss_type"]
    unsloth = rows["modelforge-provider-unsloth"]["components"][0]
    assert unsloth["capabilities"]["tasks"] == ["text-generation"]


def test_plugins_shows_skipped(modelforge: Run) -> None:
    result = modelforge("plugins", "--json", extra_env={"MODELFORGE_DISABLE_PLUGINS": "strategy-rlhf"})
    report = json.loads(result.stdout)
    assert report["skipped"] == [{"name": "strategy-rlhf", "distribution": "modelforge-strategy-rlhf",
                                  "reason": "disabled by MODELFORGE_DISABLE_PLUGINS"}]


# --- --help and the import budget ------------------------------------------------------------

def test_help_lists_the_light_commands(modelforge: Run) -> None:
    result = modelforge("--help")
    assert result.returncode == 0
    for command in ("validate", "schema", "plugins"):
        assert f"  {command} " in result.stdout


def test_version(modelforge: Run) -> None:
    from modelforge_core import __version__

    assert modelforge("--version").stdout.strip() == f"modelforge, version {__version__}"


HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "unsloth")

IMPORT_PROBE = """
import json, sys
import click
from modelforge_core.cli import main

heavy = json.loads(sys.argv[2])
report = {}
for args in json.loads(sys.argv[1]):
    try:
        main(args, prog_name="modelforge", obj={}, standalone_mode=False)
    except (SystemExit, click.exceptions.Exit):
        pass
    # Modules accumulate: the first command that imports a heavy library is the one named.
    report[" ".join(args)] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps(report))
"""

LIGHT_COMMANDS = [["--help"], ["validate", "--help"], ["validate", "{config}"],
                  ["validate", "{config}", "--resolved", "--json"], ["schema"], ["schema", "--canonical"],
                  ["plugins"], ["plugins", "--json"]]


def test_light_commands_import_no_heavy_library(valid_config: Path, clean_env: dict[str, str]) -> None:
    """One process runs every light command in turn (as the tests of a frontend would) and
    reports, after each, which heavy libraries are loaded: none, ever."""
    argv = [[a.format(config=valid_config) for a in args] for args in LIGHT_COMMANDS]
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, json.dumps(argv), json.dumps(HEAVY)],
                            capture_output=True, text=True, check=True, timeout=120, env=clean_env)
    report = json.loads(result.stdout.splitlines()[-1])
    assert len(report) == len(LIGHT_COMMANDS)
    assert report == {command: [] for command in report}


def test_the_probe_would_notice_a_heavy_import(clean_env: dict[str, str]) -> None:
    # "wave" stands in for torch: a module nothing on the light path imports.
    probe = IMPORT_PROBE.replace("from modelforge_core.cli import main",
                                 "from modelforge_core.cli import main\nimport wave")
    result = subprocess.run([sys.executable, "-c", probe, json.dumps([["--version"]]), json.dumps(["wave"])],
                            capture_output=True, text=True, check=True, timeout=120, env=clean_env)
    assert json.loads(result.stdout.splitlines()[-1]) == {"--version": ["wave"]}
    clean = subprocess.run([sys.executable, "-c", IMPORT_PROBE, json.dumps([["--version"]]), json.dumps(["wave"])],
                           capture_output=True, text=True, check=True, timeout=120, env=clean_env)
    assert json.loads(clean.stdout.splitlines()[-1]) == {"--version": []}
