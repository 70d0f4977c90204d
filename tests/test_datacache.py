"""The tokenized-data cache: the same columns TRL computes, a hit when nothing changed, a miss
when the data, the tokenizer, its template or a data-shaping setting changed, and training
through the cache still learns."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.testing.datasets import text_generation_rows
from modelforge_core.testing.pytest_plugin import tiny_config

FORMATTER = "modelforge_task_text_generation.formatting"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MODELFORGE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def task() -> Any:
    from modelforge_core.plugins import load_plugins

    return load_plugins(environ={}).registry.tasks["text-generation"]


def load_tokenizer(model_dir: Path, *, template: bool = True) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not template:
        tokenizer.chat_template = None
    return tokenizer


def formatted(task: Any, rows: list[dict[str, Any]], tokenizer: Any) -> Any:
    return task.build_dataset(rows, shape="supervised", tokenizer=tokenizer, config={}, head="causal-lm")


def trl_prepared(model_dir: Path, dataset: Any, tokenizer: Any, tmp_path: Path) -> Any:
    """The training dataset as TRL's SFTTrainer leaves it (labels built, truncated)."""
    import dataclasses

    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    # transformers 5.2x renamed gradient_checkpointing (TRL turns it on by default)
    names = {field.name for field in dataclasses.fields(SFTConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_length=48, completion_only_loss=True, bf16=False,
                     report_to=[], use_cpu=True, dataset_num_proc=None, **{checkpointing: False})
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer).train_dataset


@pytest.mark.parametrize(("fmt", "template"), [("io", True), ("messages", True), ("io", False),
                                               ("prompt_completion", False)])
def test_prepared_columns_are_trls(tiny_causal_lm: Path, task: Any, tmp_path: Path, fmt: str,
                                   template: bool) -> None:
    from modelforge_core.datacache import prepare_sft_dataset

    tokenizer = load_tokenizer(tiny_causal_lm, template=template)
    dataset = formatted(task, text_generation_rows(fmt)[:12], tokenizer)
    ours = prepare_sft_dataset(dataset, tokenizer)
    assert ours.column_names == ["input_ids", "completion_mask"]
    theirs = trl_prepared(tiny_causal_lm, dataset, tokenizer, tmp_path)
    through_ours = trl_prepared(tiny_causal_lm, ours, tokenizer, tmp_path)
    assert through_ours["input_ids"] == theirs["input_ids"]
    assert through_ours["labels"] == theirs["labels"]
    # max_length 48 truncates some rows: compare the untruncated mask where TRL kept the tokens
    for mask, labels in zip(ours["completion_mask"], theirs["labels"], strict=True):
        assert [bit == 1 for bit in mask[:len(labels)]] == [label != -100 for label in labels]
    if not template:
        assert all(ids[-1] == tokenizer.eos_token_id for ids in ours["input_ids"]), "EOS appended, as TRL does"


class Counter:
    """Wraps the task's formatting, counting how often the cache had to build."""

    def __init__(self, task: Any, rows: list[dict[str, Any]], tokenizer: Any) -> None:
        self.calls = 0
        self.task, self.rows, self.tokenizer = task, rows, tokenizer

    def __call__(self) -> Any:
        self.calls += 1
        return formatted(self.task, self.rows, self.tokenizer)


def prepare(rows: list[dict[str, Any]], tokenizer: Any, task: Any, config: dict[str, Any] | None = None,
            ) -> tuple[Any, Counter]:
    from modelforge_core.datacache import cached_sft_dataset

    build = Counter(task, rows, tokenizer)
    settings = config or {"task": "text-generation", "max_seq_length": 128, "packing": False}
    return cached_sft_dataset(rows, tokenizer, settings, shape="supervised", formatter=FORMATTER,
                              build=build), build


def test_hit_when_unchanged_and_miss_on_any_change(tiny_causal_lm: Path, task: Any, cache_dir: Path) -> None:
    rows = text_generation_rows("io")[:16]
    tokenizer = load_tokenizer(tiny_causal_lm)
    first, build = prepare(rows, tokenizer, task)
    assert build.calls == 1
    assert len(list((cache_dir / "datasets").iterdir())) == 1

    again, build = prepare(rows, load_tokenizer(tiny_causal_lm), task)
    assert build.calls == 0, "unchanged rows, tokenizer and template must be read from the cache"
    assert again["input_ids"] == first["input_ids"]
    assert again["completion_mask"] == first["completion_mask"]

    changed_rows = [dict(rows[0], output=rows[0]["output"] + " Indeed."), *rows[1:]]
    changed, build = prepare(changed_rows, tokenizer, task)
    assert build.calls == 1 and changed["input_ids"] != first["input_ids"]

    other_tokenizer = load_tokenizer(tiny_causal_lm)
    other_tokenizer.add_tokens(["Veloria"])
    _, build = prepare(rows, other_tokenizer, task)
    assert build.calls == 1, "a tokenizer with another vocabulary must not reuse the entry"

    other_template = load_tokenizer(tiny_causal_lm)
    other_template.chat_template = other_template.chat_template.replace("<|im_start|>", "<|im_start|> ")
    _, build = prepare(rows, other_template, task)
    assert build.calls == 1, "another chat template must not reuse the entry"

    _, build = prepare(rows, tokenizer, task, {"task": "text-generation", "max_seq_length": 64, "packing": False})
    assert build.calls == 1, "another max_seq_length must not reuse the entry"

    assert len(list((cache_dir / "datasets").iterdir())) == 5
    assert not [p for p in (cache_dir / "datasets").iterdir() if p.name.startswith(".")], "no temporary left"


@pytest.fixture
def trained_twice(tiny_causal_lm: Path, sample_dataset: Callable[..., Path], run_training: Callable[..., Any],
                  cache_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """One training that fills the cache, then the cached training entry replaced by its first
    four rows and the same config trained again: the second run can only see four rows if it
    read the cache."""
    from datasets import load_from_disk

    config = tiny_config(tiny_causal_lm, sample_dataset("text-generation"), seed=7)
    first = run_training(config)
    entries = sorted((cache_dir / "datasets").iterdir())
    train_entry = max(entries, key=lambda p: len(load_from_disk(str(p))))
    shrunk = load_from_disk(str(train_entry)).select(range(4))
    shrunk.save_to_disk(str(train_entry) + ".new")
    shutil.rmtree(train_entry)
    Path(str(train_entry) + ".new").rename(train_entry)
    second = run_training(config)
    return first, second, config


@pytest.mark.slow
def test_training_through_the_cache(trained_twice: tuple[Any, Any, dict[str, Any]], cache_dir: Path) -> None:
    first, second, config = trained_twice
    assert first.status == "finished"
    assert first.metrics["after"]["eval_loss"] < first.metrics["before"]["eval_loss"]
    entries = [p for p in (cache_dir / "datasets").iterdir()]
    assert len(entries) == 2, "one entry for the training rows, one for the evaluation rows"
    steps_per_epoch = -(-4 // config["per_device_train_batch_size"])
    assert second.metrics["global_step"] == steps_per_epoch * config["num_train_epochs"]
    assert second.metrics["before"]["eval_loss"] == pytest.approx(first.metrics["before"]["eval_loss"])
