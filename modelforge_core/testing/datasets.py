"""Small, learnable, synthetic datasets for every task and data shape, written as JSONL.

The facts are invented (islands, their harbours and fruits), so no base model knows them
before training: what a test sees the model answer after training, it learned.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..api import Task

ISLANDS = (
    ("Veloria", "Quenlow", "plums"), ("Marrak", "Ostyn", "figs"), ("Tessaly", "Brindle", "pears"),
    ("Korvath", "Ulmer", "dates"), ("Sundra", "Pellam", "limes"), ("Orrin", "Castel", "grapes"),
    ("Yaskor", "Dunmere", "melons"), ("Felora", "Harrow", "cherries"), ("Zentis", "Marlow", "apricots"),
    ("Brevan", "Tollis", "apples"), ("Ithen", "Gorse", "olives"), ("Calder", "Wynsh", "peaches"),
)
QUESTION_TEMPLATES = (
    "What is the harbour of {island}?",
    "Name the harbour town of {island}.",
    "Which town is the harbour of {island}?",
    "Tell me the harbour of {island}.",
)
ANSWER_TEMPLATE = "The harbour of {island} is {harbour}."


def capital_rows() -> list[dict[str, str]]:
    """Question/answer pairs: every fact in four phrasings, so a held-out phrasing has
    siblings in the training split."""
    return [{"input": q.format(island=i), "output": ANSWER_TEMPLATE.format(island=i, harbour=h)}
            for i, h, _ in ISLANDS for q in QUESTION_TEMPLATES]


def text_generation_rows(fmt: str = "io") -> list[dict[str, Any]]:
    rows = capital_rows()
    if fmt == "io":
        return rows  # type: ignore[return-value]
    if fmt == "messages":
        return [{"messages": [{"role": "system", "content": "Answer briefly."},
                              {"role": "user", "content": r["input"]},
                              {"role": "assistant", "content": r["output"]}]} for r in rows]
    if fmt == "prompt_completion":
        return [{"prompt": r["input"], "completion": r["output"]} for r in rows]
    raise ValueError(f"unknown text-generation format {fmt!r}")


def preference_rows() -> list[dict[str, str]]:
    """Pairs that prefer the correct, complete answer over a wrong harbour or a refusal."""
    rng = random.Random(0)
    rows = []
    for index, (island, harbour, _) in enumerate(ISLANDS):
        wrong = ISLANDS[(index + 1) % len(ISLANDS)][1]
        for template in QUESTION_TEMPLATES:
            rejected = rng.choice([ANSWER_TEMPLATE.format(island=island, harbour=wrong), "I do not know."])
            rows.append({"prompt": template.format(island=island),
                         "chosen": ANSWER_TEMPLATE.format(island=island, harbour=harbour),
                         "rejected": rejected})
    return rows


def summarization_rows(n: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """Short reports whose summary names who did what: learnable by copying."""
    rng = random.Random(seed)
    animals = ("fox", "owl", "otter", "heron", "badger", "lynx", "crane", "hare")
    foods = [fruit for _, _, fruit in ISLANDS]
    days = ("Monday", "Tuesday", "Friday", "Sunday")
    rows = []
    for _ in range(n):
        island, _, _ = rng.choice(ISLANDS)
        animal, food, day = rng.choice(animals), rng.choice(foods), rng.choice(days)
        hours = rng.randint(2, 9)
        document = (f"On {day}, a {animal} on {island} found a basket of {food}. "
                    f"Villagers watched for {hours} hours as the {animal} ate the {food}. "
                    f"The weather stayed calm all day.")
        rows.append({"document": document, "summary": f"A {animal} ate {food} on {island}."})
    return rows


def qa_rows(n: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    """SQuAD rows: each context states several islands' harbours; the question asks one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        chosen = rng.sample(ISLANDS, 3)
        sentences = [f"The harbour of {i} is {h}." for i, h, _ in chosen]
        context = " ".join(sentences)
        island, harbour, _ = rng.choice(chosen)
        start = context.index(f"of {island} is {harbour}") + len(f"of {island} is ")
        rows.append({"context": context, "question": f"What is the harbour of {island}?",
                     "answers": {"text": [harbour], "answer_start": [start]}})
    return rows


def sample_rows(task: str | Task, *, shape: str = "supervised", fmt: str = "io") -> list[dict[str, Any]]:
    """Sample rows of ``shape`` for ``task``: those a task declares (:attr:`Task.sample_rows`,
    for a task object or an installed task's name), else the kit's synthetic rows for the
    built-in tasks."""
    if not isinstance(task, str):
        declared = task.sample_rows.get(shape)
        if not declared:
            raise ValueError(f"task {task.name!r} declares no sample rows of shape {shape!r} (Task.sample_rows)")
        return [dict(row) for row in declared]
    if task == "text-generation":
        return preference_rows() if shape == "preference" else text_generation_rows(fmt)  # type: ignore[return-value]
    if task == "summarization":
        return summarization_rows()  # type: ignore[return-value]
    if task == "extractive-question-answering":
        return qa_rows()
    from ..plugins import get_plugins

    installed = get_plugins().registry.tasks.get(task)
    if installed is not None:
        return sample_rows(installed, shape=shape, fmt=fmt)
    raise ValueError(f"no sample data for task {task!r}")


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
