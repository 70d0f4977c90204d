"""The rlhf strategy end to end on a tiny offline Llama: a reward model that learns to rank the
chosen answers first, a policy whose reward under it rises online, both adapters reloadable
with plain peft, an existing reward model reused, the real CLI on the reference's example
config, and the validation a user sees."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.errors import ConfigError
from modelforge_core.testing import run_split, train_config
from modelforge_core.testing.datasets import preference_rows, text_generation_rows, write_jsonl
from modelforge_core.testing.pytest_plugin import tiny_config

pytestmark = pytest.mark.slow

MODELFORGE = Path(sys.executable).with_name("modelforge")


def training_rows(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows the run trained on: the same seeded split the core made."""
    return run_split(run_dir, rows)[0]


def rlhf_config(model: Path, data: Path, **overrides: Any) -> dict[str, Any]:
    """Small online stage: 4 prompts x 4 sampled answers of up to 16 tokens per step."""
    options = {"max_new_tokens": 16, "temperature": 1.0, "kl_coef": 0.01, "num_generations": 4,
               "reward_learning_rate": 1e-2, "reward_epochs": 6, **overrides.pop("rlhf", {})}
    settings = {"learning_rate": 1e-2, "max_steps": 30, "per_device_train_batch_size": 16, "logging_steps": 3,
                **overrides}
    return tiny_config(model, data, strategy="rlhf", rlhf=options, **settings)


@pytest.fixture(scope="module")
def answering_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama pre-trained to answer the harbour questions with a mix of right harbours,
    wrong ones and "I do not know." (about 6 s of CPU): like a real instruction-tuned base,
    its samples differ in ways a reward model can score, so online RL has something to learn.
    A random-init model only samples noise that every reward model scores alike."""
    from modelforge_core.testing.datasets import ISLANDS
    from modelforge_core.testing.tiny import build_tiny_causal_lm, pretrain_causal_lm

    corpus = []
    for index, (island, harbour, _) in enumerate(ISLANDS):
        wrong = ISLANDS[(index + 1) % len(ISLANDS)][1]
        for answer in (f"The harbour of {island} is {harbour}.", f"The harbour of {island} is {wrong}.",
                       "I do not know."):
            # A question, then its answer: pretrain_causal_lm pairs them into chat turns.
            corpus += [f"What is the harbour of {island}?", answer]
    model = build_tiny_causal_lm(tmp_path_factory.mktemp("answering-base"))
    return pretrain_causal_lm(model, corpus=corpus, steps=150, batch_size=16)


@pytest.fixture(scope="module")
def rlhf_run(answering_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One rlhf run (reward model, then RLOO) on the invented-harbour pairs."""
    root = tmp_path_factory.mktemp("rlhf")
    data = write_jsonl(root / "pairs.jsonl", preference_rows())
    return train_config(rlhf_config(answering_base, data), root)


def test_reward_model_ranks_chosen_above_rejected_on_the_training_pairs(rlhf_run: Any) -> None:
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    folder = rlhf_run.run_dir / "reward_adapter"
    model = AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def score(row: Mapping[str, Any], side: str) -> float:
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[side]}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([ids])).logits[0, 0])

    rows = training_rows(rlhf_run.run_dir, preference_rows())
    ranked = [score(row, "chosen") > score(row, "rejected") for row in rows]
    assert sum(ranked) / len(ranked) >= 0.75
    # On the held-out pairs (other phrasings of the same facts) chosen answers gain on average.
    stage = rlhf_run.metrics["reward_model"]
    assert stage["after"]["eval_margin"] > stage["before"]["eval_margin"]
    assert 0.0 <= stage["after"]["eval_accuracy"] <= 1.0
    assert stage["adapter"] == "reward_adapter" and stage["global_step"] > 0


def test_policy_reward_rises_during_the_online_stage(rlhf_run: Any) -> None:
    metrics = json.loads((rlhf_run.run_dir / "metrics.json").read_text())
    assert metrics["after"]["eval_mean_reward"] > metrics["before"]["eval_mean_reward"]
    assert metrics["policy"]["algorithm"] == "rloo" and metrics["global_step"] == 30
    log = [json.loads(line) for line in (rlhf_run.run_dir / "log.jsonl").read_text().splitlines()]
    online = [record for record in log if "reward" in record and "kl" in record]
    assert len(online) >= 8, "the online stage logs its reward and KL to the base"
    third = len(online) // 3
    early = sum(r["reward"] for r in online[:third]) / third
    late = sum(r["reward"] for r in online[-third:]) / third
    assert late > early


def test_policy_adapter_reloads_with_peft_and_run_keeps_both_stages(rlhf_run: Any, answering_base: Path) -> None:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = rlhf_run.run_dir
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "reward_adapter" / "adapter_model.safetensors").is_file()
    assert not (run / "adapter" / "ref").exists()
    policy = AutoPeftModelForCausalLM.from_pretrained(run / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(answering_base).eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the harbour of Veloria?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        change = (policy(**ids).logits - base(**ids).logits).abs().max().item()
    assert change > 1e-3
    checkpoints = [p.name for p in (run / "checkpoints").glob("checkpoint-*")]
    assert all(int(name.split("-")[1]) <= 30 for name in checkpoints), "no reward-stage checkpoint is left"


def test_an_existing_reward_model_skips_stage_one_and_grpo_runs(rlhf_run: Any, answering_base: Path,
                                                                  tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows())
    config = rlhf_config(answering_base, data, max_steps=2, rlhf={
        "algorithm": "grpo", "reward_model_path": str(rlhf_run.run_dir / "reward_adapter")})
    outcome = train_config(config, tmp_path)
    assert outcome.status == "finished" and outcome.metrics["global_step"] == 2
    assert outcome.metrics["reward_model"] == {"path": str(rlhf_run.run_dir / "reward_adapter")}
    assert outcome.metrics["policy"]["algorithm"] == "grpo"
    assert not (outcome.run_dir / "reward_adapter").exists()
    assert (outcome.run_dir / "adapter" / "adapter_config.json").is_file()
    assert math.isfinite(outcome.metrics["after"]["eval_mean_reward"])


def test_a_reward_model_path_that_is_no_model_is_refused(tiny_causal_lm: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows())
    (tmp_path / "empty").mkdir()
    config = rlhf_config(tiny_causal_lm, data, rlhf={"reward_model_path": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match=r"rlhf\.reward_model_path: .*empty holds neither"):
        train_config(config, tmp_path)


def test_cli_trains_the_reference_example_with_rlhf(tiny_causal_lm: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows())
    # The reference's first example, with a local model and dataset and strategy rlhf.
    config = {
        "task": "text-generation", "model_name": str(tiny_causal_lm), "provider": "huggingface",
        "strategy": "rlhf", "dataset": str(data), "compute_specs": "low_end", "lora_r": 16, "lora_alpha": 32,
        "lora_dropout": 0.1, "use_4bit": True, "bf16": False, "fp16": True, "num_train_epochs": 3,
        "per_device_train_batch_size": 1, "gradient_accumulation_steps": 16, "learning_rate": 2e-4,
        "max_seq_length": 512, "eval_split": 0.2, "eval_steps": 100,
    }
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    # fp16 needs a GPU: the CPU trains the same config in float32; short completions keep it quick.
    result = subprocess.run(
        [str(MODELFORGE), "train", "cfg.json", "--json", "--set", "max_steps=1", "--set", "fp16=false",
         "--set", "rlhf.max_new_tokens=8", "--set", f"output_dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "finished" and outcome["metrics"]["global_step"] == 1
    assert set(outcome["metrics"]["reward_model"]["after"]) >= {"eval_accuracy", "eval_margin"}
    assert "eval_mean_reward" in outcome["metrics"]["after"]
    run = Path(outcome["run_dir"])
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "reward_adapter" / "adapter_config.json").is_file()
    resolved = json.loads((run / "config.json").read_text())["config"]
    assert resolved["use_4bit"] is True
    assert resolved["rlhf"]["algorithm"] == "rloo" and resolved["rlhf"]["max_new_tokens"] == 8


def wait_for_policy_step(log: Path, step: int, process: subprocess.Popen[str]) -> None:
    """Until the online stage (records with a KL) has logged ``step``."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()[1][-2000:]}")
        if log.is_file():
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            if any("kl" in r and r.get("step", 0) >= step for r in records):
                return
        time.sleep(0.05)
    raise AssertionError("the online stage did not reach the step in time")


def test_interrupted_online_stage_resumes_with_the_trained_reward_model(tiny_causal_lm: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows())
    config = rlhf_config(tiny_causal_lm, data, output_dir=str(out), max_steps=12, per_device_train_batch_size=4,
                         logging_steps=1, save_steps=1000, rlhf={"reward_epochs": 1, "max_new_tokens": 8})
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([str(MODELFORGE), "train", "cfg.json"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    wait_for_policy_step(out / "log.jsonl", 2, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "policy training interrupted" in json.loads((out / "status.json").read_text())["note"]
    assert (out / "reward_adapter" / "adapter_config.json").is_file() and not (out / "adapter").exists()
    # Only the online stage's checkpoint is left: the reward stage removed its own.
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and 2 <= int(checkpoints[0].name.split("-")[1]) < 12
    earlier = json.loads((out / "metrics.json").read_text())

    resumed = subprocess.run([str(MODELFORGE), "train", "--resume", str(out), "--json"], capture_output=True,
                             text=True, timeout=300, env=env, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout)
    assert result["status"] == "finished" and result["metrics"]["global_step"] == 12
    assert "rlhf stage 1 of 2" not in resumed.stderr, "the trained reward model is reused, not retrained"
    assert result["metrics"]["reward_model"]["after"] == earlier["reward_model_after"]
    assert result["metrics"]["before"] == earlier["before"]
    assert (out / "adapter" / "adapter_config.json").is_file()


# --- validation, before anything loads -----------------------------------------------------

def validate(tmp_path: Path, config: Mapping[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    return subprocess.run([str(MODELFORGE), "validate", "cfg.json", "--json", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("task", ["summarization", "extractive-question-answering"])
def test_rlhf_is_refused_for_tasks_without_preference_data(task: str, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows())
    result = validate(tmp_path, {"task": task, "model_name": "m", "dataset": str(data),
                                 "compute_specs": "low_end", "strategy": "rlhf"})
    assert result.returncode == 2
    errors = json.loads(result.stdout)["errors"]
    assert [error["path"] for error in errors] == ["strategy"]
    assert task in errors[0]["message"] and "rlhf" in errors[0]["message"]


def test_rlhf_refuses_supervised_rows_and_bad_pairs_by_line(tmp_path: Path) -> None:
    rows: list[Mapping[str, Any]] = [
        *preference_rows()[:2],
        text_generation_rows()[0],
        {"prompt": "Which harbour?", "chosen": "Quenlow.", "rejected": ["Ostyn."]},
        {"prompt": "Which harbour?", "rejected": "Ostyn."},
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = validate(tmp_path, {"task": "text-generation", "model_name": "m", "dataset": str(data),
                                 "compute_specs": "low_end", "strategy": "rlhf"}, "--data")
    assert result.returncode == 2
    errors = json.loads(result.stdout)["errors"]
    found = {(error["line"], error["path"]) for error in errors}
    assert found == {(3, "(row)"), (4, "rejected[0]"), (5, "chosen")}
    assert "preference rows" in next(e["message"] for e in errors if e["line"] == 3)

