"""The dpo strategy end to end on a tiny offline Llama: the model comes to prefer the chosen
answers of its training pairs, the adapter reloads with plain peft, quantized bases train,
the real CLI runs the reference's example config, and bad data or tasks are refused."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.testing import run_split, train_config
from modelforge_core.testing.datasets import preference_rows, write_jsonl
from modelforge_core.testing.pytest_plugin import tiny_config

pytestmark = pytest.mark.slow

MODELFORGE = Path(sys.executable).with_name("modelforge")


def training_rows(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows the run trained on: the same seeded split the core made."""
    return run_split(run_dir, rows)[0]


def answer_logps(model: Any, tokenizer: Any, row: Mapping[str, Any]) -> list[tuple[float, int]]:
    """Summed log-probability and token count of the chosen and of the rejected answer after
    the prompt, in the chat format the training used."""
    import torch

    prompt = [{"role": "user", "content": row["prompt"]}]
    prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    result = []
    for side in ("chosen", "rejected"):
        ids = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": row[side]}],
                                            tokenize=True, return_dict=True)["input_ids"]
        assert ids[: len(prefix)] == prefix
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        logps = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
        answer = logps[len(prefix) - 1:]
        result.append((float(answer.sum()), len(answer)))
    return result


@pytest.fixture(scope="module")
def dpo_run(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One dpo run on the invented-harbour pairs, shared by the assertions below."""
    root = tmp_path_factory.mktemp("dpo")
    data = write_jsonl(root / "pairs.jsonl", preference_rows())
    config = tiny_config(tiny_causal_lm, data, strategy="dpo", learning_rate=5e-3, max_steps=40,
                         logging_steps=10, dpo={"beta": 0.1})
    return train_config(config, root)


def test_dpo_reward_accuracy_and_margin_rise_on_the_eval_split(dpo_run: Any) -> None:
    metrics = json.loads((dpo_run.run_dir / "metrics.json").read_text())
    before, after = metrics["before"], metrics["after"]
    # A fresh adapter is the reference itself: every implicit reward is 0, no pair is won.
    assert before["eval_rewards/accuracies"] == 0.0 and before["eval_rewards/margins"] == 0.0
    # Held-out phrasings of the trained facts: chosen answers gain on rejected ones.
    assert after["eval_rewards/accuracies"] > 0.0
    assert after["eval_rewards/margins"] > 0.0
    assert after["eval_loss"] < before["eval_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert "eval_perplexity" not in after, "a DPO loss is no language-model loss"
    assert metrics["global_step"] == 40
    status = json.loads((dpo_run.run_dir / "status.json").read_text())
    assert status["status"] == "finished"
    log = [json.loads(line) for line in (dpo_run.run_dir / "log.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in record for record in log), "training logs the reward margins"


def test_dpo_adapter_reloads_with_peft_and_prefers_the_chosen_answers(dpo_run: Any) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    adapter = dpo_run.run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "ref").exists(), "only the trained adapter is saved, no reference copy"
    model = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    rows = training_rows(dpo_run.run_dir, preference_rows())
    tuned = [answer_logps(model, tokenizer, row) for row in rows]
    with model.disable_adapter():
        base = [answer_logps(model, tokenizer, row) for row in rows]
    # DPO's reward accuracy: chosen gained more log-probability over the base than rejected.
    won = [(tuned_c - base_c) > (tuned_r - base_r)
           for ((tuned_c, _), (tuned_r, _)), ((base_c, _), (base_r, _)) in zip(tuned, base, strict=True)]
    assert sum(won) / len(won) >= 0.8

    def preference_accuracy(scores: list[list[tuple[float, int]]]) -> float:
        """How often the chosen answer is the likelier one per token (a per-token measure:
        summed log-probabilities favour whichever answer is shorter)."""
        return sum(c / nc > r / nr for (c, nc), (r, nr) in scores) / len(scores)

    # The model itself comes to prefer the chosen answers, well above where it started.
    assert preference_accuracy(tuned) >= 0.75
    assert preference_accuracy(tuned) >= preference_accuracy(base) + 0.25


@pytest.mark.parametrize("quantization", ["use_4bit", "use_8bit"])
def test_dpo_trains_a_quantized_base(quantization: str, tiny_causal_lm: Path, tmp_path: Path) -> None:
    from peft import AutoPeftModelForCausalLM

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows())
    config = tiny_config(tiny_causal_lm, data, strategy="dpo", max_steps=2, bnb_4bit_compute_dtype="float32",
                         **{quantization: True})
    outcome = train_config(config, tmp_path)
    assert outcome.status == "finished" and outcome.metrics["global_step"] == 2
    assert math.isfinite(outcome.metrics["after"]["train_loss"])
    assert AutoPeftModelForCausalLM.from_pretrained(outcome.run_dir / "adapter") is not None


def reference_example(model: Path, dataset: Path) -> dict[str, Any]:
    """The first example config of the reference, with a local model and dataset."""
    return {
        "task": "text-generation", "model_name": str(model), "provider": "huggingface", "strategy": "qlora",
        "dataset": str(dataset), "compute_specs": "low_end", "lora_r": 16, "lora_alpha": 32,
        "lora_dropout": 0.1, "use_4bit": True, "bf16": False, "fp16": True, "num_train_epochs": 3,
        "per_device_train_batch_size": 1, "gradient_accumulation_steps": 16, "learning_rate": 2e-4,
        "max_seq_length": 512, "eval_split": 0.2, "eval_steps": 100,
    }


def test_cli_trains_the_reference_example_with_dpo(tiny_causal_lm: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows())
    config = {**reference_example(tiny_causal_lm, data), "strategy": "dpo"}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    # fp16 needs a GPU: the CPU trains the same config in float32.
    result = subprocess.run(
        [str(MODELFORGE), "train", "cfg.json", "--json", "--set", "max_steps=1", "--set", "fp16=false",
         "--set", f"output_dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "finished" and outcome["metrics"]["global_step"] == 1
    assert "eval_rewards/accuracies" in outcome["metrics"]["after"]
    run = Path(outcome["run_dir"])
    assert (run / "adapter" / "adapter_config.json").is_file()
    resolved = json.loads((run / "config.json").read_text())["config"]
    assert resolved["use_4bit"] is True and resolved["dpo"] == {"beta": 0.1, "loss_type": "sigmoid",
                                                                "label_smoothing": 0.0, "discopop_tau": 0.05}


# --- validation, before anything loads -----------------------------------------------------

def validate(tmp_path: Path, config: Mapping[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    return subprocess.run([str(MODELFORGE), "validate", "cfg.json", "--json", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("task", ["summarization", "extractive-question-answering"])
def test_dpo_is_refused_for_tasks_without_preference_data(task: str, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows())
    result = validate(tmp_path, {"task": task, "model_name": "m", "dataset": str(data),
                                 "compute_specs": "low_end", "strategy": "dpo"})
    assert result.returncode == 2
    errors = json.loads(result.stdout)["errors"]
    assert [error["path"] for error in errors] == ["strategy"]
    assert task in errors[0]["message"] and "dpo" in errors[0]["message"]


def test_bad_preference_rows_are_named_by_line(tmp_path: Path) -> None:
    good = {"prompt": "Which harbour?", "chosen": "Quenlow.", "rejected": "I do not know."}
    rows: list[Mapping[str, Any]] = [
        good,
        {"prompt": "Which harbour?", "chosen": "Quenlow."},
        {"prompt": "Which harbour?", "chosen": "Quenlow.", "rejected": "Quenlow."},
        {"prompt": "Which harbour?", "chosen": 7, "rejected": "I do not know."},
        {"prompt": ["not a message"], "chosen": "Quenlow.", "rejected": "I do not know."},
        good,
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = validate(tmp_path, {"task": "text-generation", "model_name": "m", "dataset": str(data),
                                 "compute_specs": "low_end", "strategy": "dpo"}, "--data")
    assert result.returncode == 2
    found = {(error["line"], error["path"]) for error in json.loads(result.stdout)["errors"]}
    assert found == {(2, "rejected"), (3, "rejected"), (4, "chosen"), (5, "prompt[0]")}
