"""End-to-end supervised training (issue 4): every data format, sft and qlora, run folder,
reload with peft, interruption and resume, data errors before any model loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from modelforge_core import hookimpl
from modelforge_core.testing.pytest_plugin import tiny_config

pytestmark = pytest.mark.slow

MODELFORGE = [sys.executable, "-m", "modelforge_core"]


def _logits(model: Any, tokenizer: Any, text: str) -> Any:
    import torch

    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


class EvaluationRecorder:
    """A plugin that records what the ``on_evaluate`` hook is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, float]]] = []

    @hookimpl
    def on_evaluate(self, stage: str, metrics: Mapping[str, float]) -> None:
        self.calls.append((stage, dict(metrics)))


@pytest.fixture(scope="module")
def evaluations() -> EvaluationRecorder:
    return EvaluationRecorder()


@pytest.fixture(scope="module")
def trained_io(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory,
               evaluations: EvaluationRecorder) -> Any:
    """One sft run on instruction rows, shared by the assertions below; its evaluations recorded."""
    from modelforge_core.testing import train_config, use_plugins
    from modelforge_core.testing.datasets import text_generation_rows, write_jsonl

    root = tmp_path_factory.mktemp("sft-io")
    data = write_jsonl(root / "io.jsonl", text_generation_rows("io"))
    config = tiny_config(tiny_causal_lm, data, num_train_epochs=4, eval_steps=20)
    with use_plugins(("evaluation-recorder", evaluations)) as plugins:
        return train_config(config, root, plugins=plugins)


def test_hooks_hear_each_evaluation_once_under_its_stage(trained_io: Any, evaluations: EvaluationRecorder) -> None:
    """The trainer kit evaluates before and after training inside explicit stages: the hook hears
    ``before`` first and ``after`` last (never as ``during``), and in between the trainer's own
    evaluations every ``eval_steps``, cleaned as the stages' metrics are (perplexity, no timings)."""
    stages = [stage for stage, _ in evaluations.calls]
    steps = json.loads((trained_io.run_dir / "metrics.json").read_text())["global_step"]
    assert stages == ["before", *["during"] * (steps // 20), "after"], stages
    for stage, metrics in evaluations.calls:
        assert "eval_loss" in metrics and "eval_perplexity" in metrics, stage
        assert not [key for key in metrics if key.endswith(("_runtime", "_per_second", "epoch"))], (stage, metrics)


def test_sft_eval_loss_falls_and_run_folder_is_complete(trained_io: Any) -> None:
    run = trained_io.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["after"]["eval_loss"] < metrics["before"]["eval_loss"] - 0.3
    assert metrics["after"]["eval_perplexity"] < metrics["before"]["eval_perplexity"]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["global_step"] == metrics["global_step"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["sources"]["lora_r"] == "api" and config["sources"]["optim"] == "api"
    assert config["sources"]["lora_target_modules"] == "default"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["fingerprint"].startswith("sha256:")
    assert manifest["libraries"]["transformers"] and manifest["head"] == "causal-lm"
    assert manifest["effective_batch_size"] == 4
    assert manifest["trust_remote_code"] is False and manifest["allow_pickle_weights"] is False
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("loss" in rec for rec in log) and any(rec.get("stage") == "after" for rec in log)
    assert list((run / "logs").rglob("events.out.tfevents.*")), "TensorBoard events are written"
    assert not list(run.glob(".*tmp*")), "no temporary files left behind"


def test_adapter_reloads_with_plain_peft_and_changes_the_output(trained_io: Any, tiny_causal_lm: Path) -> None:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = trained_io.run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    tuned = AutoPeftModelForCausalLM.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the harbour of Veloria?"}],
                                         tokenize=False, add_generation_prompt=True)
    difference = (_logits(tuned, tokenizer, text) - _logits(base, tokenizer, text)).abs().max().item()
    assert difference > 1e-2
    assert not torch.isnan(_logits(tuned, tokenizer, text)).any()


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion"])
def test_sft_trains_on_each_data_format(fmt: str, tiny_causal_lm: Path, sample_dataset: Any,
                                        run_training: Any) -> None:
    outcome = run_training(tiny_config(tiny_causal_lm, sample_dataset("text-generation", fmt=fmt),
                                       num_train_epochs=2))
    before, after = outcome.metrics["before"], outcome.metrics["after"]
    assert after["eval_loss"] < before["eval_loss"]
    assert (outcome.run_dir / "adapter" / "adapter_config.json").is_file()


def test_qlora_trains_on_a_4bit_base_and_reloads(tiny_causal_lm: Path, sample_dataset: Any,
                                                 run_training: Any) -> None:
    from peft import PeftConfig

    outcome = run_training(tiny_config(tiny_causal_lm, sample_dataset("text-generation"), strategy="qlora",
                                       use_4bit=True, bnb_4bit_quant_type="nf4", use_nested_quant=True,
                                       bnb_4bit_compute_dtype="float32", num_train_epochs=2))
    assert outcome.metrics["after"]["eval_loss"] < outcome.metrics["before"]["eval_loss"]
    manifest = json.loads((outcome.run_dir / "manifest.json").read_text())
    assert manifest["components"]["strategy"]["name"] == "qlora"
    peft_config = PeftConfig.from_pretrained(outcome.run_dir / "adapter")
    assert peft_config.r == 16 and peft_config.lora_alpha == 32


def test_every_config_field_reaches_the_trainer_or_its_owner(tiny_causal_lm: Path, tmp_path: Path) -> None:
    """Each field of the schema is either mapped to a trainer argument with its value, or
    documented as consumed by the provider/core; a field nobody uses fails this test."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    from modelforge_core.schema import canonical_schema
    from modelforge_core.training import FIELDS_USED_ELSEWHERE, TRAINER_FIELDS, trainer_arguments

    fields = set(canonical_schema()["properties"]) - {"$schema"}
    assert fields == set(TRAINER_FIELDS) | set(FIELDS_USED_ELSEWHERE)
    config = {
        "num_train_epochs": 7, "per_device_train_batch_size": 3, "per_device_eval_batch_size": 5,
        "gradient_accumulation_steps": 6, "gradient_checkpointing": True, "max_grad_norm": 0.7,
        "learning_rate": 1.5e-4, "weight_decay": 0.02, "optim": "adamw_torch", "lr_scheduler_type": "polynomial",
        "max_steps": 33, "warmup_ratio": 0.25, "group_by_length": True, "fp16": False, "bf16": True,
        "eval_steps": 11, "save_steps": 13, "logging_steps": 3, "seed": 1234, "run_name": "mapped",
    }
    for args_class in (TrainingArguments, SFTConfig):
        args = args_class(**trainer_arguments(config, output_dir=str(tmp_path), logging_dir=None,
                                              has_eval=True, args_class=args_class))
        for field, target in TRAINER_FIELDS.items():
            value = getattr(args, target)
            if field == "group_by_length":
                assert value == "group_by_length"
            elif field == "warmup_ratio":
                assert value == pytest.approx(0.25)
            elif field in ("optim", "lr_scheduler_type"):
                assert str(getattr(value, "value", value)) == config[field]
            else:
                assert value == config[field], field
        assert args.eval_strategy == "steps"


def test_provider_builds_lora_and_quantization_from_the_config() -> None:
    import torch
    from modelforge_provider_huggingface.loading import lora_config, quantization_config

    config = {"lora_r": 8, "lora_alpha": 24, "lora_dropout": 0.05, "lora_target_modules": ["q_proj", "v_proj"],
              "use_4bit": True, "use_8bit": False, "bnb_4bit_quant_type": "fp4",
              "bnb_4bit_compute_dtype": "bfloat16", "use_nested_quant": True}
    lora = lora_config(config, "causal-lm")
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 24, 0.05)
    assert set(lora.target_modules) == {"q_proj", "v_proj"}
    quant = quantization_config(config)
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "fp4"
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16 and quant.bnb_4bit_use_double_quant
    eight = quantization_config({**config, "use_4bit": False, "use_8bit": True})
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert quantization_config({**config, "use_4bit": False}) is None


def test_bad_row_is_reported_before_any_model_is_loaded(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"input": "a", "output": "b"}\n\n{"input": "c", "output": ""}\n{"input": 3, "output": "d"}\n')
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config("./no-such-model", "data.jsonl")))
    result = subprocess.run([*MODELFORGE, "train", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"{data}:3: output: must not be empty" in result.stderr
    assert f"{data}:4: input: expected a string" in result.stderr
    assert "no-such-model" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_existing_output_dir_is_never_overwritten(tiny_causal_lm: Path, sample_dataset: Any, tmp_path: Path) -> None:
    out = tmp_path / "finished-run"
    out.mkdir()
    (out / "adapter").mkdir()
    (out / "adapter" / "weights").write_text("precious")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(tiny_causal_lm, sample_dataset(), output_dir=str(out))))
    result = subprocess.run([*MODELFORGE, "train", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "nothing is overwritten" in result.stderr
    assert (out / "adapter" / "weights").read_text() == "precious"


def _wait_for_step(log: Path, step: int, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()}")
        if log.is_file():
            steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


@pytest.mark.parametrize(("sig", "resume"), [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_interrupt_leaves_a_checkpoint_and_resume_finishes(sig: signal.Signals, resume: bool, tiny_causal_lm: Path,
                                                            sample_dataset: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(tiny_causal_lm, sample_dataset(), output_dir=str(out),
                                             max_steps=40, logging_steps=1, eval_steps=1000, save_steps=1000)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*MODELFORGE, "train", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_step(out / "log.jsonl", 5, process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted"
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and (checkpoints[-1] / "trainer_state.json").is_file()
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert 5 <= stopped_at < 40
    assert not (out / "adapter").exists()
    if not resume:
        return
    resumed = subprocess.run([*MODELFORGE, "train", "--resume", str(out), "--json"], capture_output=True,
                             text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "finished" and result["metrics"]["global_step"] == 40
    assert f"resuming {out} from checkpoint-{stopped_at}" in resumed.stderr
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "status.json").read_text())["status"] == "finished"


def test_resume_refuses_a_finished_run(trained_io: Any) -> None:
    result = subprocess.run([*MODELFORGE, "train", "--resume", str(trained_io.run_dir)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "finished already" in result.stderr
