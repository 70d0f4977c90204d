"""Extractive question answering: SQuAD scoring, windowing and span decoding checked against
hand-computed cases, the validation a user sees, and a real LoRA training of a tiny BERT
whose exact match on held-out questions rises from about zero to at least one half."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modelforge_task_extractive_qa.metrics import exact_match, normalize_answer, squad_scores, token_f1
from modelforge_task_extractive_qa.spans import Window, candidate_spans, decode_answer

from modelforge_core.testing.datasets import write_jsonl
from modelforge_core.testing.pytest_plugin import tiny_config

# --- SQuAD metrics -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "normalized"), [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   apple,  a pear and THE plum. ", "apple pear and plum"),
    ("Theatre", "theatre"),  # an article only as a whole word
    ("a", ""),
    ("U.S.A.", "usa"),
    ("rock-'n'-roll", "rocknroll"),
])
def test_normalize_answer_follows_squad(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_by_hand() -> None:
    assert exact_match("the Louvre.", "Louvre") == 1.0
    assert exact_match("Louvre museum", "Louvre") == 0.0
    # prediction "louvre museum paris" vs gold "louvre paris": 2 shared tokens,
    # precision 2/3, recall 2/2, F1 = 2 * (2/3) * 1 / (2/3 + 1) = 0.8
    assert token_f1("the Louvre museum, Paris", "Louvre Paris") == pytest.approx(0.8)
    assert token_f1("Berlin", "Paris") == 0.0
    # repeated tokens count once per occurrence: "a a b" vs "a b b" -> tokens [b] vs [b, b]
    # after dropping the article "a": shared 1, precision 1/1, recall 1/2, F1 2/3
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)


def test_empty_answers() -> None:
    # No gold answer (an unanswerable question): only an empty prediction scores.
    assert squad_scores([""], [[]]) == {"exact_match": 1.0, "f1": 1.0}
    assert squad_scores(["Paris"], [[]]) == {"exact_match": 0.0, "f1": 0.0}
    # An empty prediction for an answerable question scores nothing (no 0/0).
    assert squad_scores([""], [["Paris"]]) == {"exact_match": 0.0, "f1": 0.0}
    # A gold answer that normalises to nothing counts as no answer.
    assert squad_scores(["", "x"], [["the"], ["x"]]) == {"exact_match": 1.0, "f1": 1.0}
    assert squad_scores([], []) == {"exact_match": 0.0, "f1": 0.0}


def test_multiple_gold_answers_take_the_best() -> None:
    golds = [["Denver Broncos", "The Broncos", "Broncos"], ["Santa Clara, California", "Levi's Stadium"]]
    scores = squad_scores(["broncos", "Levi's Stadium in Santa Clara"], golds)
    # question 1: exact match with "Broncos" (and "The Broncos"); F1 1.
    # question 2: best F1 is against "Levi's Stadium": tokens levis stadium in santa clara (5)
    # vs levis stadium (2): shared 2, precision 2/5, recall 1, F1 = 0.8/1.4 = 4/7; EM 0.
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx((1 + 4 / 7) / 2)


# --- span decoding -------------------------------------------------------------------------

def window(context_offsets: list[tuple[int, int] | None], starts: dict[int, float],
           ends: dict[int, float]) -> Window:
    """A window whose logits are -10 except where given."""
    size = len(context_offsets)
    return Window([starts.get(i, -10.0) for i in range(size)], [ends.get(i, -10.0) for i in range(size)],
                  context_offsets)


CONTEXT = "alpha beta gamma delta epsilon zeta eta theta"
#          0     6    11    17    23      31   36  40
WORDS = [(0, 5), (6, 10), (11, 16), (17, 22), (23, 30), (31, 35), (36, 39), (40, 45)]


def two_windows() -> tuple[list[tuple[int, int] | None], list[tuple[int, int] | None]]:
    """[CLS] q [SEP] + words 0-4, and [CLS] q [SEP] + words 3-7 (an overlap of two words)."""
    head: list[tuple[int, int] | None] = [None, None, None]
    return head + list(WORDS[0:5]), head + list(WORDS[3:8])


def test_answer_in_the_second_window_is_found() -> None:
    first, second = two_windows()
    windows = [window(first, {0: 2.0, 4: 1.0}, {0: 2.0, 5: 1.0}),  # weak guesses, best: "beta gamma"
               window(second, {0: 1.0, 4: 6.0}, {0: 1.0, 5: 5.0})]  # strong: tokens 4-5 = "epsilon zeta"
    assert decode_answer(windows, CONTEXT) == "epsilon zeta"
    spans = candidate_spans(windows, CONTEXT, n_best=3)
    assert spans[0].text == "epsilon zeta"
    assert spans[0].window == 1
    assert spans[0].score == pytest.approx(11.0)


def test_span_across_a_window_boundary_is_never_formed() -> None:
    first, second = two_windows()
    # The strongest start is the last context token of window 1 ("epsilon") and the strongest
    # end the last of window 2 ("theta"): together, 18, they would read "epsilon zeta eta
    # theta", which no window holds. Within window 1 the best span is "alpha beta" (1 + 1);
    # "epsilon" alone scores 9 - 10, and any span of window 2 at most -10 + 9.
    windows = [window(first, {7: 9.0, 3: 1.0}, {4: 1.0}),
               window(second, {}, {7: 9.0})]
    assert decode_answer(windows, CONTEXT) == "alpha beta"
    assert all(span.text in ("alpha beta", "epsilon") or span.score <= -1.0
               for span in candidate_spans(windows, CONTEXT))
    # The same text exists inside window 2, but only with window 2's own logits (-10 + 9).
    crossing = [span for span in candidate_spans(windows, CONTEXT, n_best=100) if span.text == "epsilon zeta eta theta"]
    assert [(span.window, span.score) for span in crossing] == [(1, -1.0)]


def test_max_answer_length_and_ordering() -> None:
    first, _ = two_windows()
    # A long span (words 0-4, 5 tokens) scores best but is longer than allowed.
    w = window(first, {3: 5.0, 5: 1.0}, {7: 5.0, 6: 1.0})
    assert decode_answer([w], CONTEXT, max_answer_length=5) == "alpha beta gamma delta epsilon"
    assert decode_answer([w], CONTEXT, max_answer_length=2) == "gamma delta"
    # An end before its start is never a span: only (5, 6) is valid with start 5.
    assert decode_answer([window(first, {5: 3.0}, {4: 3.0, 6: 1.0})], CONTEXT) == "gamma delta"
    # Question and special tokens (offsets None) are never part of an answer.
    spans = candidate_spans([window(first, {0: 50.0, 1: 50.0}, {0: 50.0, 1: 50.0})], CONTEXT)
    assert spans and all(span.score < 0 and span.start >= 0 for span in spans)


def test_n_best_limits_the_candidates() -> None:
    first, _ = two_windows()
    w = window(first, {3: 4.0, 4: 3.0, 5: 2.0}, {3: 4.0, 4: 3.0, 5: 2.0})
    assert len(candidate_spans([w], CONTEXT, n_best=2)) == 2
    # With one start and one end candidate only the top pair (3, 3) is considered.
    assert [s.text for s in candidate_spans([w], CONTEXT, n_best=1)] == ["alpha"]


def test_no_answer_only_when_allowed() -> None:
    first, _ = two_windows()
    w = window(first, {0: 8.0, 3: 1.0}, {0: 8.0, 3: 1.0})  # the [CLS] position says "no answer"
    assert decode_answer([w], CONTEXT) == "alpha"
    assert decode_answer([w], CONTEXT, allow_no_answer=True) == ""
    assert decode_answer([], CONTEXT) == ""


# --- windows and labels with the real tokenizer ---------------------------------------------

def test_long_context_is_split_and_labelled(tiny_qa_encoder: Path) -> None:
    from modelforge_task_extractive_qa.processing import encode_windows, label_windows
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qa_encoder)
    filler = "The farmers sold bread and cheese at the market. " * 3
    context = filler + "The harbour of Marrak is Ostyn. " + filler
    start = context.index("Ostyn")
    row = {"context": context, "question": "What is the harbour of Marrak?",
           "answers": {"text": ["Ostyn"], "answer_start": [start]}}
    config = {"max_seq_length": 40, "extractive-question-answering": {"doc_stride": 10}}
    encoded = encode_windows([row], tokenizer, config)
    assert len(encoded.features) >= 3 and set(encoded.row_of) == {0}
    assert all(len(f["input_ids"]) <= 40 for f in encoded.features)
    labelled = label_windows([row], encoded)
    holding = [i for i, f in enumerate(labelled) if f["start_positions"] != 0]
    assert holding and 0 not in holding  # the first window holds filler only: [CLS] labels
    for i in holding:
        s, e = labelled[i]["start_positions"], labelled[i]["end_positions"]
        first, last = encoded.offsets[i][s], encoded.offsets[i][e]
        assert first is not None and last is not None
        assert context[first[0]:last[1]] == "Ostyn"
    for i, feature in enumerate(labelled):
        if i not in holding:
            assert feature["start_positions"] == feature["end_positions"] == encoded.cls_index[i] == 0

    # Logits peaked at the labels of the answer's window decode back to the answer text,
    # even though every other window also proposes (weaker) spans.
    windows = []
    for i, feature in enumerate(labelled):
        size = len(feature["input_ids"])
        starts, ends = [0.0] * size, [0.0] * size
        if i in holding:
            starts[feature["start_positions"]] = ends[feature["end_positions"]] = 5.0
        windows.append(Window(starts, ends, encoded.offsets[i]))
    assert decode_answer(windows, context) == "Ostyn"


def test_question_longer_than_the_window_is_a_clear_error(tiny_qa_encoder: Path) -> None:
    from modelforge_task_extractive_qa.processing import encode_windows
    from transformers import AutoTokenizer

    from modelforge_core.errors import ValidationFailed

    tokenizer = AutoTokenizer.from_pretrained(tiny_qa_encoder)
    row = {"context": "The harbour of Marrak is Ostyn.", "question": "What is the harbour " * 10,
           "answers": {"text": ["Ostyn"], "answer_start": [25]}}
    with pytest.raises(ValidationFailed) as failure:
        encode_windows([row], tokenizer, {"max_seq_length": 16})
    assert failure.value.problems[0].path == "max_seq_length"
    assert "raise max_seq_length" in (failure.value.problems[0].hint or "")


# --- what `modelforge validate` says ----------------------------------------------------------

def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script in a subprocess, with the built-in plugins only."""
    script = Path(sys.executable).with_name("modelforge")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MODELFORGE_LOAD_PLUGINS", "MODELFORGE_DISABLE_PLUGINS", "MODELFORGE_DEBUG")}
    return subprocess.run([str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def qa_row(context: str, question: str, answer: str, start: int | None = None) -> dict[str, Any]:
    return {"context": context, "question": question,
            "answers": {"text": [answer], "answer_start": [context.index(answer) if start is None else start]}}


@pytest.mark.parametrize(("field", "value"), [("strategy", "dpo"), ("strategy", "rlhf"), ("provider", "unsloth")])
def test_validate_rejects_unsupported_combinations(tmp_path: Path, field: str, value: str) -> None:
    task = "extractive-question-answering"
    write_jsonl(tmp_path / "data.jsonl", [qa_row("The harbour of Marrak is Ostyn.", "Which harbour?", "Ostyn")])
    config = {"task": task, "model_name": "some/model", "dataset": "data.jsonl", "compute_specs": "low_end",
              "max_seq_length": 64, field: value}
    (tmp_path / "config.json").write_text(json.dumps(config), "utf-8")
    result = run_cli("validate", "config.json", "--json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = json.loads(result.stdout)["errors"]
    named = [e for e in errors if e["path"] == field]
    assert named, errors
    assert task in named[0]["message"] and value in named[0]["message"]


def test_validate_data_names_file_line_and_field_of_a_misplaced_answer(tmp_path: Path) -> None:
    rows = [qa_row("The harbour of Marrak is Ostyn.", "What is the harbour of Marrak?", "Ostyn"),
            qa_row("The harbour of Orrin is Castel.", "What is the harbour of Orrin?", "Castel"),
            qa_row("The harbour of Ithen is Gorse.", "What is the harbour of Ithen?", "Gorse", start=4)]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    config = {"task": "extractive-question-answering", "model_name": "some/model", "dataset": "qa.jsonl",
              "compute_specs": "low_end"}
    (tmp_path / "config.json").write_text(json.dumps(config), "utf-8")
    result = run_cli("validate", "config.json", "--data", cwd=tmp_path)
    assert result.returncode == 2
    assert "qa.jsonl:3: answers.answer_start[0]" in result.stdout + result.stderr
    assert "'Gorse' is not at offset 4" in result.stdout + result.stderr
    assert f"occurs at {rows[2]['context'].index('Gorse')}" in result.stdout + result.stderr


# --- training ------------------------------------------------------------------------------

NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "brown", "grey", "pink",
           "golden")
ANIMALS = ("cat", "dog", "horse", "rabbit", "fox", "wolf", "bear", "mouse", "eagle", "owl", "tiger", "lion",
           "zebra", "otter")
PLACES = ("river", "forest", "garden", "mountain", "village", "market", "bridge", "library", "kitchen",
          "meadow", "castle", "station")
FOODS = ("apples", "bread", "cheese", "carrots", "rice", "soup", "honey", "berries", "noodles", "pancakes",
         "tomatoes", "cookies")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def sighting_rows(n: int = 240, seed: int = 0) -> list[dict[str, Any]]:
    """Short reports of who saw which animal where, and five kinds of question about them.

    Learnable from a few hundred rows, unlike ``sample_dataset``'s 60 harbour questions (which
    a random-init encoder only memorises): the question's kind says which slot holds the
    answer, and every held-out row is a new combination of words, so exact match on it
    measures extraction, not recall.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, colour, animal = rng.choice(NAMES), rng.choice(COLOURS), rng.choice(ANIMALS)
        place, food, day = rng.choice(PLACES), rng.choice(FOODS), rng.choice(DAYS)
        context = f"On {day}, {name} saw a {colour} {animal} near the {place}. The {animal} was eating {food}."
        # (question, answer, the text just before the answer in the context)
        question, answer, before = rng.choice([
            (f"Who saw the {animal}?", name, f"{day}, "),
            (f"What colour was the {animal}?", colour, "saw a "),
            (f"Where did {name} see the {animal}?", place, "near the "),
            (f"What was the {animal} eating?", food, "eating "),
            (f"On which day did {name} see the {animal}?", day, "On "),
        ])
        start = context.index(before + answer) + len(before)
        rows.append(qa_row(context, question, answer, start))
    return rows


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for this module's training and inference: on two shared cores a model
    this small runs several times faster without OpenMP threads waiting on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_qa(tiny_qa_encoder: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Any:
    """One LoRA training of the tiny BERT on 192 sighting questions (144 steps), 48 held out.

    Seeded end to end: the split and the trainer by the config's seed, and the weights that
    loading creates (the fresh span head, the LoRA matrices) by seeding torch first.
    """
    import torch

    from modelforge_core.testing import train_config

    root = tmp_path_factory.mktemp("qa-run")
    dataset = write_jsonl(root / "sightings.jsonl", sighting_rows())
    config = tiny_config(
        tiny_qa_encoder, dataset, task="extractive-question-answering",
        per_device_train_batch_size=8, num_train_epochs=6, learning_rate=6e-3, max_seq_length=64,
        seed=42, logging_steps=20)  # lora_target_modules: the default all-linear
    torch.manual_seed(0)
    return train_config(config, root)


@pytest.mark.slow
def test_qa_training_raises_exact_match_on_held_out_questions(trained_qa: Any) -> None:
    metrics = json.loads((trained_qa.run_dir / "metrics.json").read_text("utf-8"))
    before, after = metrics["before"], metrics["after"]
    assert before["exact_match"] <= 0.15, before  # an untrained span head hits by chance at most
    assert after["exact_match"] >= 0.5, after
    assert after["f1"] >= after["exact_match"] and after["f1"] > before["f1"]
    assert after["eval_loss"] < before["eval_loss"]


@pytest.mark.slow
def test_qa_adapter_reloads_with_peft_and_answers(trained_qa: Any) -> None:
    import torch
    from modelforge_task_extractive_qa.processing import predict_answers
    from peft import AutoPeftModelForQuestionAnswering
    from transformers import AutoTokenizer

    from modelforge_core.api import LoadedModel
    from modelforge_core.inference import load_trained
    from modelforge_core.testing import run_split

    adapter = trained_qa.run_dir / "adapter"
    model = AutoPeftModelForQuestionAnswering.from_pretrained(adapter)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    run_config = json.loads((trained_qa.run_dir / "config.json").read_text("utf-8"))["config"]
    rows = sighting_rows()
    _, eval_rows = run_split(trained_qa.run_dir, rows)
    with torch.no_grad():
        answers = predict_answers(LoadedModel(model, tokenizer, "question-answering", "peft"), eval_rows, run_config)
    golds = [row["answers"]["text"] for row in eval_rows]
    assert squad_scores(answers, golds)["exact_match"] >= 0.5

    trained = load_trained(trained_qa.run_dir)
    row = qa_row("On Friday, Grace saw a teal whale near the harbour. The whale was eating soup.",
                 "Who saw the whale?", "Grace")
    predicted = [trained.predict({"context": r["context"], "question": r["question"]}) for r in eval_rows[:12]]
    assert squad_scores(predicted, golds[:12]) == squad_scores(answers[:12], golds[:12])
    assert isinstance(trained.predict({"context": row["context"], "question": row["question"]}), str)


@pytest.mark.slow
def test_predict_needs_context_and_question(trained_qa: Any) -> None:
    from modelforge_core.errors import UsageError
    from modelforge_core.inference import load_trained

    trained = load_trained(trained_qa.run_dir)
    with pytest.raises(UsageError, match="question"):
        trained.predict({"context": "The harbour of Marrak is Ostyn."})


def test_sighting_rows_pass_the_row_check() -> None:
    from modelforge_task_extractive_qa import ExtractiveQA

    assert all(ExtractiveQA().check_row(row, "supervised", {}) == [] for row in sighting_rows())


@pytest.mark.slow
def test_qlora_trains_the_span_head_on_a_4bit_encoder(tiny_qa_encoder: Path, tmp_path: Path,
                                                      one_thread: None, run_training: Any) -> None:
    """The span head stays unquantized and outside LoRA: QLoRA on QA trains and lowers the loss."""
    dataset = write_jsonl(tmp_path / "sightings.jsonl", sighting_rows()[:96])
    outcome = run_training(tiny_config(
        tiny_qa_encoder, dataset, task="extractive-question-answering", strategy="qlora", use_4bit=True,
        bnb_4bit_compute_dtype="float32", per_device_train_batch_size=8, num_train_epochs=2,
        learning_rate=6e-3, max_seq_length=64))
    before, after = outcome.metrics["before"], outcome.metrics["after"]
    assert after["eval_loss"] < before["eval_loss"]
    assert "eval_perplexity" not in after
