"""Summarization: ROUGE checked against hand-computed cases, the training data of both heads,
what validation refuses, and real LoRA trainings: a tiny T5 through the seq2seq head (ROUGE-L
rises, the adapter reloads with peft and generates) and a tiny Llama through the
prompt/completion path (the eval loss falls)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from modelforge_task_summarization.processing import rouge_scores

from modelforge_core.testing.datasets import sample_rows, write_jsonl
from modelforge_core.testing.pytest_plugin import tiny_config

# --- ROUGE ---------------------------------------------------------------------------------


def test_rouge_on_known_strings() -> None:
    # reference "the cat is on the mat" vs prediction "the cat sat on the mat", 6 tokens each:
    # unigrams shared: the, the, cat, on, mat = 5 -> P = R = F = 5/6;
    # bigrams shared: "the cat", "on the", "the mat" = 3 of 5 -> 3/5;
    # longest common subsequence "the cat on the mat" = 5 -> 5/6.
    scores = rouge_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    assert scores == {"rouge1": pytest.approx(5 / 6), "rouge2": pytest.approx(3 / 5),
                      "rougeL": pytest.approx(5 / 6)}


def test_rouge_stems_and_averages() -> None:
    # Porter stemming: "cats" ~ "cat", "running" ~ "runs" ~ "run"; case and punctuation ignored.
    assert rouge_scores(["Cats running!"], ["the cat runs"])["rouge1"] == pytest.approx(2 * (1 * 2 / 3) / (1 + 2 / 3))
    # Order matters for ROUGE-2 and ROUGE-L, not for ROUGE-1: "b a" vs "a b": LCS 1 of 2.
    reversed_scores = rouge_scores(["b a"], ["a b"])
    assert reversed_scores == {"rouge1": 1.0, "rouge2": 0.0, "rougeL": 0.5}
    # The mean over summaries; an empty summary scores 0.
    assert rouge_scores(["a b", ""], ["a b", "a b"]) == {"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5}
    assert rouge_scores([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


# --- training data -------------------------------------------------------------------------

ROWS = [{"document": "On Monday, a fox on Veloria found a basket of figs.", "summary": "A fox ate figs."},
        {"document": "The owl slept all day.", "summary": "An owl slept."}]


def test_seq2seq_features_have_decoder_labels(tiny_seq2seq_lm: Path) -> None:
    from modelforge_task_summarization.processing import build_dataset, data_collator
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_seq2seq_lm)
    config = {"max_seq_length": 12, "summarization": {"source_prefix": "summarize: "}}
    dataset = build_dataset(ROWS, tokenizer=tokenizer, config=config, head="seq2seq-lm")
    assert set(dataset.column_names) == {"input_ids", "attention_mask", "labels"}
    first = dataset[0]
    # Inputs: the prefixed document, truncated at max_seq_length, ending with </s>.
    assert len(first["input_ids"]) == 12
    assert tokenizer.decode(first["input_ids"], skip_special_tokens=True).startswith("summarize: On Monday")
    assert first["input_ids"][-1] == tokenizer.eos_token_id
    # Labels: the summary itself.
    assert tokenizer.decode(first["labels"], skip_special_tokens=True) == "A fox ate figs."
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq_lm)
    batch = data_collator(tokenizer, model, "seq2seq-lm")([dataset[0], dataset[1]])
    # Label padding is -100 (no loss); the decoder inputs are the labels shifted right behind
    # the decoder start token (padding there is the pad token).
    for row in (0, 1):
        length = len(dataset[row]["labels"])
        assert batch["labels"][row, length:].tolist() == [-100] * (batch["labels"].shape[1] - length)
        shifted = batch["labels"][row, :-1].masked_fill(batch["labels"][row, :-1] == -100, tokenizer.pad_token_id)
        assert batch["decoder_input_ids"][row, 0].item() == model.config.decoder_start_token_id
        assert batch["decoder_input_ids"][row, 1:].tolist() == shifted.tolist()


def test_causal_rows_are_prompt_and_completion(tiny_causal_lm: Path) -> None:
    from modelforge_task_summarization.processing import build_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    chat = build_dataset(ROWS, tokenizer=tokenizer, config={}, head="causal-lm")
    assert chat[0]["prompt"] == [{"role": "user", "content": "Summarize:\n" + ROWS[0]["document"]}]
    assert chat[0]["completion"] == [{"role": "assistant", "content": "A fox ate figs."}]
    tokenizer.chat_template = None  # a base model without a chat template: plain text
    plain = build_dataset(ROWS, tokenizer=tokenizer, config={}, head="causal-lm")
    assert plain[1] == {"prompt": "Summarize:\nThe owl slept all day.\nSummary:", "completion": " An owl slept."}


# --- what `modelforge validate` says ----------------------------------------------------------

def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script in a subprocess, with the built-in plugins only."""
    script = Path(sys.executable).with_name("modelforge")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MODELFORGE_LOAD_PLUGINS", "MODELFORGE_DISABLE_PLUGINS", "MODELFORGE_DEBUG")}
    return subprocess.run([str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize(("field", "value"), [("strategy", "dpo"), ("strategy", "rlhf"), ("provider", "unsloth")])
def test_validate_rejects_unsupported_combinations(tmp_path: Path, field: str, value: str) -> None:
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    config = {"task": "summarization", "model_name": "some/model", "dataset": "data.jsonl",
              "compute_specs": "low_end", "max_seq_length": 64, field: value}
    (tmp_path / "config.json").write_text(json.dumps(config), "utf-8")
    result = run_cli("validate", "config.json", "--json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    named = [e for e in json.loads(result.stdout)["errors"] if e["path"] == field]
    assert named
    assert "summarization" in named[0]["message"]
    assert value in named[0]["message"]


# --- training ------------------------------------------------------------------------------

@pytest.fixture
def seeded_one_thread() -> Iterator[None]:
    """Seed the weights that loading creates (the LoRA matrices) and run on one torch thread:
    on two shared cores a model this small trains several times faster without OpenMP
    threads waiting on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("seeded_one_thread")
def test_t5_summarization_learns_and_reloads(tiny_seq2seq_lm: Path, sample_dataset: Callable[..., Path],
                                             run_training: Callable[..., Any]) -> None:
    from modelforge_task_summarization.processing import rouge_scores as score
    from peft import AutoPeftModelForSeq2SeqLM
    from transformers import AutoTokenizer

    from modelforge_core.errors import UsageError
    from modelforge_core.inference import load_trained

    config = tiny_config(tiny_seq2seq_lm, sample_dataset("summarization"), task="summarization",
                         num_train_epochs=4, learning_rate=5e-3, summarization={"max_new_tokens": 24})
    outcome = run_training(config)
    metrics = json.loads((outcome.run_dir / "metrics.json").read_text("utf-8"))
    before, after = metrics["before"], metrics["after"]
    assert after["rougeL"] > before["rougeL"], (before, after)
    assert after["rouge1"] > before["rouge1"]
    assert after["eval_loss"] < before["eval_loss"]
    assert json.loads((outcome.run_dir / "manifest.json").read_text("utf-8"))["head"] == "seq2seq-lm"

    # The adapter is peft's own format: it reloads on its base and generates.
    adapter = outcome.run_dir / "adapter"
    model = AutoPeftModelForSeq2SeqLM.from_pretrained(adapter)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    rows = sample_rows("summarization")[:8]
    encoded = tokenizer(["summarize: " + row["document"] for row in rows], return_tensors="pt", padding=True)
    generated = tokenizer.batch_decode(model.generate(**encoded, max_new_tokens=24), skip_special_tokens=True)
    assert all(text.strip() for text in generated)

    # The same through the run, as `modelforge generate` does it: the task's own prompt format.
    trained = load_trained(outcome.run_dir)
    predicted = [trained.predict({"document": row["document"]}, max_new_tokens=24) for row in rows]
    assert predicted == [text.strip() for text in generated]
    assert score(predicted, [row["summary"] for row in rows])["rougeL"] > 0
    # `modelforge generate` options: sampling settings apply only when sampling (no warning).
    document = {"document": rows[0]["document"]}
    assert isinstance(trained.predict(document, top_p=0.9, repetition_penalty=1.2, max_new_tokens=6), str)
    assert isinstance(trained.predict(document, temperature=0.8, top_p=0.9, max_new_tokens=6), str)
    with pytest.raises(UsageError, match="document"):
        trained.predict({"text": "no document here"})


@pytest.mark.slow
@pytest.mark.usefixtures("seeded_one_thread")
def test_causal_lm_summarization_trains_on_the_completion(tiny_causal_lm: Path,
                                                          sample_dataset: Callable[..., Path],
                                                          run_training: Callable[..., Any]) -> None:
    from modelforge_core.inference import load_trained

    config = tiny_config(tiny_causal_lm, sample_dataset("summarization"), task="summarization",
                         num_train_epochs=2, summarization={"max_new_tokens": 12, "max_eval_samples": 4})
    outcome = run_training(config)
    metrics = json.loads((outcome.run_dir / "metrics.json").read_text("utf-8"))
    before, after = metrics["before"], metrics["after"]
    assert after["eval_loss"] < before["eval_loss"], (before, after)
    assert {"rouge1", "rouge2", "rougeL"} <= set(after)
    assert json.loads((outcome.run_dir / "manifest.json").read_text("utf-8"))["head"] == "causal-lm"
    summary = load_trained(outcome.run_dir).predict({"document": sample_rows("summarization")[0]["document"]},
                                                    max_new_tokens=8)
    assert isinstance(summary, str)


@pytest.mark.slow
@pytest.mark.usefixtures("seeded_one_thread")
def test_qlora_trains_t5_on_a_4bit_base(tiny_seq2seq_lm: Path, sample_dataset: Callable[..., Path],
                                        run_training: Callable[..., Any]) -> None:
    config = tiny_config(tiny_seq2seq_lm, sample_dataset("summarization"), task="summarization",
                         strategy="qlora", use_4bit=True, num_train_epochs=2, learning_rate=5e-3,
                         summarization={"max_new_tokens": 8, "max_eval_samples": 4})
    outcome = run_training(config)
    metrics = json.loads((outcome.run_dir / "metrics.json").read_text("utf-8"))
    assert metrics["after"]["eval_loss"] < metrics["before"]["eval_loss"]
    assert (outcome.run_dir / "adapter" / "adapter_model.safetensors").is_file()
