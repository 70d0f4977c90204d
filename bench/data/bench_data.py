"""Preparing a text-generation dataset for training (check, format, tokenize), in rows/s,
cold and then again with the data, tokenizer and template unchanged, when the tokenized data
comes from the cache (``modelforge_core/datacache.py``). Goal: the second run at least 20x
faster than the first.

For reference, TRL's own preparation (``SFTTrainer`` tokenizing the formatted rows one at a
time, what a hand-written script gets) on a subset.

    python bench/data/bench_data.py [--rows 100000] [--trl-rows 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, result

GOAL_RATIO = 20.0
ISLANDS = ("Veloria", "Marrak", "Tessaly", "Korvath", "Sundra", "Orrin", "Yaskor", "Felora")


def write_rows(path: Path, count: int) -> None:
    """Instruction rows of realistic variety: a system line in some, answers of varied length."""
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            island = rng.choice(ISLANDS)
            row: dict[str, Any] = {
                "input": f"Question {index}: what grows on {island}, and where do its boats land?",
                "output": " ".join(f"On {island} the orchards give fruit number {rng.randint(1, 999)}."
                                   for _ in range(rng.randint(1, 4))),
            }
            if index % 3 == 0:
                row["system"] = "Answer in full sentences."
            handle.write(json.dumps(row) + "\n")


def prepare(config: Any, model_dir: Path) -> dict[str, float]:
    """One preparation as ``modelforge train`` does it: check, then the cached SFT dataset."""
    from transformers import AutoTokenizer

    from modelforge_core.data import check_dataset
    from modelforge_core.datacache import cached_sft_dataset
    from modelforge_core.plugins import get_plugins

    task = get_plugins().registry.tasks["text-generation"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # model loading, not data preparation
    start = time.perf_counter()
    data = check_dataset(config)
    checked = time.perf_counter()
    dataset = cached_sft_dataset(
        data.rows, tokenizer, config.data, shape=data.shape, formatter=type(task).__module__,
        build=lambda: task.build_dataset(data.rows, shape=data.shape, tokenizer=tokenizer, config=config.data,
                                         head="causal-lm"))
    done = time.perf_counter()
    assert len(dataset) == len(data.rows)
    assert "input_ids" in dataset.column_names
    return {"seconds": done - start, "check_s": checked - start, "prepare_s": done - checked,
            "rows_per_s": len(data.rows) / (done - start)}


def trl_reference(model_dir: Path, rows_file: Path, count: int, tmp: Path) -> dict[str, float]:
    """TRL's SFTTrainer preparing the formatted rows itself (formatting not counted)."""
    import dataclasses

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from modelforge_core.plugins import get_plugins

    task = get_plugins().registry.tasks["text-generation"]
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with rows_file.open(encoding="utf-8") as handle:
        rows = [json.loads(next(handle)) for _ in range(count)]
    dataset = task.build_dataset(rows, shape="supervised", tokenizer=tokenizer, config={}, head="causal-lm")
    names = {field.name for field in dataclasses.fields(SFTConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    args = SFTConfig(output_dir=str(tmp / "trl"), max_length=256, completion_only_loss=True, bf16=False,
                     report_to=[], use_cpu=True, dataset_num_proc=None, **{checkpointing: False})
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    start = time.perf_counter()
    SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows_per_s": count / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--trl-rows", type=int, default=5_000, help="0 to skip the TRL reference")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from modelforge_core.config import resolve_config
    from modelforge_core.testing.tiny import build_tiny_causal_lm

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        os.environ["MODELFORGE_CACHE_DIR"] = str(tmp / "cache")
        model_dir = build_tiny_causal_lm(tmp / "model")
        rows_file = tmp / "data.jsonl"
        write_rows(rows_file, args.rows)
        config = resolve_config({"task": "text-generation", "model_name": str(model_dir), "dataset": str(rows_file),
                                 "compute_specs": "low_end", "max_seq_length": 256})
        cold = prepare(config, model_dir)
        warm = prepare(config, model_dir)
        reference = trl_reference(model_dir, rows_file, min(args.trl_rows, args.rows), tmp) if args.trl_rows else None
    ratio = cold["seconds"] / warm["seconds"]
    print(f"machine: {machine()}")
    print(f"{'run':<44} {'seconds':>8} {'rows/s':>10}   (check s / format+tokenize or cache s)")
    print(f"{'first run (check, format, tokenize, store)':<44} {cold['seconds']:>8.2f} {cold['rows_per_s']:>10.0f}"
          f"   ({cold['check_s']:.2f} / {cold['prepare_s']:.2f})")
    print(f"{'second run, unchanged (check, cache hit)':<44} {warm['seconds']:>8.2f} {warm['rows_per_s']:>10.0f}"
          f"   ({warm['check_s']:.2f} / {warm['prepare_s']:.2f})")
    print(f"speed-up {ratio:.1f}x (goal {GOAL_RATIO:.0f}x: {'met' if ratio >= GOAL_RATIO else 'MISSED'})")
    result("data", run="first", rows=args.rows, **{k: round(v, 3) for k, v in cold.items()})
    result("data", run="second", rows=args.rows, **{k: round(v, 3) for k, v in warm.items()})
    result("data", run="speedup", ratio=round(ratio, 2), goal=GOAL_RATIO, met=ratio >= GOAL_RATIO)
    if reference:
        print(f"TRL SFTTrainer's own tokenization, {min(args.trl_rows, args.rows)} formatted rows: "
              f"{reference['rows_per_s']:.0f} rows/s")
        result("data", run="trl_reference", rows=min(args.trl_rows, args.rows),
               **{k: round(v, 3) for k, v in reference.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
