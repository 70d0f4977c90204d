"""The "done when" example of issue 17: a third-party text-classification task with three
named labels (``examples/plugin-text-classification``, public API only) trains, reloads,
evaluates and exports with its label names, and gives the same metric on every reload."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.plugins import Plugins, load_plugins
from modelforge_core.testing.configs import tiny_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin-text-classification"


@pytest.fixture(scope="module")
def classifier() -> Iterator[Any]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield importlib.import_module("modelforge_example_classifier")
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("modelforge_example_classifier", None)


@pytest.fixture(scope="module")
def plugins(classifier: Any) -> Plugins:
    return load_plugins(extra=[("text-classification", classifier)], environ={})


def test_a_label_outside_the_configured_ones_fails_the_data_check(
        tmp_path: Path, plugins: Plugins, classifier: Any) -> None:
    """``check_row`` gets the resolved config: the task's own label option decides."""
    from modelforge_core.config import resolve_config
    from modelforge_core.data import check_dataset
    from modelforge_core.errors import ValidationFailed

    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "a great day", "label": "positive"}\n{"text": "meh", "label": "mixed"}\n', "utf-8")
    config = tiny_config(tmp_path, data, task="text-classification", strategy="sft", provider="huggingface")
    resolved = resolve_config(config, plugins=plugins, base_dir=tmp_path)
    with pytest.raises(ValidationFailed) as failed:
        check_dataset(resolved.data, plugins=plugins)
    [problem] = failed.value.problems
    assert (problem.line, problem.path) == (2, "label")
    assert problem.message == "'mixed' is not one of the labels negative, neutral, positive"
    renamed = resolve_config({**config, "text-classification": {"labels": ["negative", "mixed", "positive"]}},
                             plugins=plugins, base_dir=tmp_path)
    assert len(check_dataset(renamed.data, plugins=plugins).rows) == 2  # "mixed" is a label now


@pytest.mark.slow
def test_three_labels_train_reload_evaluate_and_export_with_their_names(
        tiny_qa_encoder: Path, sample_dataset: Callable[..., Path], run_training: Callable[..., Any],
        plugins: Plugins, classifier: Any, tmp_path: Path) -> None:
    from modelforge_core.evaluation import evaluate_run
    from modelforge_core.export import export_merged
    from modelforge_core.inference import load_trained

    task = plugins.registry.tasks["text-classification"]
    data = sample_dataset(task)  # the rows the task declares (Task.sample_rows)
    config = tiny_config(tiny_qa_encoder, data, task="text-classification", strategy="sft", provider="huggingface",
                         num_train_epochs=40, learning_rate=2e-3, eval_split=0.25, max_seq_length=32)
    outcome = run_training(config, plugins=plugins)
    assert outcome.status == "finished", outcome
    before, after = outcome.metrics["before"], outcome.metrics["after"]
    # It learns: the training loss falls to half the untrained loss, and held-out accuracy rises
    # well above chance (1/3). The held-out loss itself swings with the random init of the tiny
    # model (peft's LoRA init order follows Python's hash seed), so it is not asserted.
    losses = [r["loss"] for r in map(json.loads, (outcome.run_dir / "log.jsonl").read_text("utf-8").splitlines())
              if "loss" in r]
    assert losses[-1] < 0.5 * before["eval_loss"], (before, losses)
    assert after["accuracy"] >= 0.5 > before["accuracy"], (before, after)  # held-out rows, three labels
    # Reload: three outputs with their names; the head and the pooler come back as trained.
    trained = load_trained(outcome.run_dir, plugins=plugins)
    assert trained.loaded.model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert trained.predict({"text": "the day was great"}) == "positive"
    # The same metric on every reload.
    first = evaluate_run(outcome.run_dir, plugins=plugins).metrics
    second = evaluate_run(outcome.run_dir, plugins=plugins).metrics
    assert first == second
    assert first["accuracy"] == pytest.approx(after["accuracy"])
    assert first["eval_loss"] == pytest.approx(after["eval_loss"], rel=1e-4)
    # Export: the merged model is a plain transformers classifier with the label names.
    result = export_merged(outcome.run_dir, plugins=plugins, say=lambda _line: None)
    saved = json.loads((result.out_dir / "config.json").read_text("utf-8"))
    assert saved["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged = AutoModelForSequenceClassification.from_pretrained(str(result.out_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(result.out_dir))
    label = merged(**tokenizer("so awful again", return_tensors="pt")).logits.argmax(-1).item()
    assert merged.config.id2label[label] == trained.predict({"text": "so awful again"})
