"""``modelforge train`` against the script a user would write by hand (``plain_sft.py``: TRL's
SFTTrainer + peft LoRA), same model, rows, hyperparameters and seed, in alternating runs.

Figures, medians over the runs:
- training tokens/s of each, from the trainer's own timing (``train_runtime``) and TRL's
  token count (``num_tokens``): start-up is not in it. Goal: ModelForge >= 0.97x the plain script.
- time from process start to the first logged training step, and whole-process wall time.
  ModelForge's start-up overhead is the difference to the plain script in time to the first
  step: both import the same libraries, load the same model and tokenize the same rows, so
  what is left is the framework's own work (config, plugins, data check, run folder, ...).
  Goal: under 0.5 s.
- with ``--profile``, one more ModelForge run under cProfile: the self time of the
  framework's own functions (modelforge_core and the plugins), which excludes library calls.

Each ModelForge run gets an empty data cache, so both sides tokenize.

    python bench/overhead/bench_overhead.py [--runs 5] [--steps 20] [--hidden 256] [--layers 4] [--seq 256]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import BIN, REPO, light_env, load_average, machine, median, result

HERE = Path(__file__).resolve().parent
THROUGHPUT_GOAL = 0.97
STARTUP_GOAL_S = 0.5
WORDS = ("harbour", "orchard", "island", "plum", "fig", "boat", "market", "tide", "lantern", "road", "hill", "salt")


def write_rows(path: Path, count: int, words: int) -> None:
    """Rows long enough that a batch fills most of ``--seq`` tokens."""
    import random

    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            answer = " ".join(rng.choice(WORDS) for _ in range(words))
            handle.write(json.dumps({"input": f"Tell story {index} about the {rng.choice(WORDS)}.",
                                     "output": answer.capitalize() + "."}) + "\n")


def modelforge_run(config: Path, work: Path, index: int, profile: Path | None = None) -> dict[str, Any]:
    output = work / f"mf-run-{index}"
    env = light_env()
    env["MODELFORGE_CACHE_DIR"] = str(work / f"cache-{index}")
    command = [str(BIN / "modelforge"), "train", str(config), "--quiet", "--set", f"output_dir={output}"]
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "modelforge_core", *command[1:]]
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    finished = time.time()
    if done.returncode != 0:
        raise SystemExit(f"modelforge train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    summary = next(r for r in records if "train_runtime" in r)
    return {"started": started, "first_log": steps[0]["time"], "last_log": summary["time"], "finished": finished,
            "train_runtime": summary["train_runtime"], "num_tokens": max(r.get("num_tokens", 0) for r in records),
            "train_loss": summary.get("train_loss")}


def plain_run(resolved: Path, work: Path, index: int) -> dict[str, Any]:
    out = work / f"plain-{index}"
    out.mkdir()
    started = time.time()
    done = subprocess.run([sys.executable, str(HERE / "plain_sft.py"), str(resolved), str(out / "result.json")],
                          env=light_env(), capture_output=True, text=True, check=False)
    finished = time.time()
    if done.returncode != 0:
        raise SystemExit(f"plain_sft.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures = dict(json.loads((out / "result.json").read_text()))
    figures.update(started=started, finished=finished)
    return figures


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "tokens_per_s": median([r["num_tokens"] / r["train_runtime"] for r in runs]),
        "train_runtime_s": median([r["train_runtime"] for r in runs]),
        "to_first_step_s": median([r["first_log"] - r["started"] for r in runs]),
        "after_training_s": median([r["finished"] - r["last_log"] for r in runs]),
        "wall_s": median([r["finished"] - r["started"] for r in runs]),
        "num_tokens": median([r["num_tokens"] for r in runs]),
    }


def own_self_time(profile: Path) -> tuple[float, list[tuple[str, float]]]:
    """Seconds spent in the framework's own functions (self time, callees excluded)."""
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    own: dict[str, float] = {}
    for (filename, line, function), (_, _, self_time, _, _) in stats.items():
        path = filename.replace(os.sep, "/")
        ours = "/modelforge_core/" in path and "/testing/" not in path
        if ours or ("/plugins/" in path and "/modelforge_" in path):
            name = f"{path.split('/')[-2]}/{path.split('/')[-1]}:{line}({function})"
            own[name] = own.get(name, 0.0) + self_time
    top = sorted(own.items(), key=lambda item: -item[1])[:8]
    return sum(own.values()), top


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    from modelforge_core.config import resolve_config
    from modelforge_core.testing.tiny import build_tiny_causal_lm

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = build_tiny_causal_lm(work / "model", hidden_size=args.hidden, num_layers=args.layers)
        data = work / "data.jsonl"
        write_rows(data, args.steps * args.batch, words=max(4, args.seq // 3))
        settings = {
            "task": "text-generation", "model_name": str(model), "dataset": str(data), "compute_specs": "low_end",
            "use_4bit": False, "gradient_checkpointing": False, "optim": "adamw_torch", "bf16": False,
            "fp16": False, "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
            "max_steps": args.steps, "learning_rate": 2e-4, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
            "logging_steps": 5, "eval_steps": 1000, "save_steps": 1000, "eval_split": 0, "warmup_ratio": 0.0,
            "group_by_length": False, "max_seq_length": args.seq, "packing": False, "seed": 42,
        }
        config = work / "config.json"
        config.write_text(json.dumps(settings))
        resolved = work / "resolved.json"
        resolved.write_text(json.dumps(resolve_config(settings, base_dir=work).data, default=str))
        load_before = load_average()
        framework: list[dict[str, Any]] = []
        plain: list[dict[str, Any]] = []
        for index in range(args.runs):
            order = ("mf", "plain") if index % 2 == 0 else ("plain", "mf")
            for side in order:
                if side == "mf":
                    framework.append(modelforge_run(config, work, index))
                else:
                    plain.append(plain_run(resolved, work, index))
        profile_figures = own_self_time(work / "run.prof") if args.profile and modelforge_run(
            config, work, args.runs, profile=work / "run.prof") else None
    ours, theirs = summarize(framework), summarize(plain)
    ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
    startup = ours["to_first_step_s"] - theirs["to_first_step_s"]
    print(f"machine: {machine()}  (load average before: {load_before})")
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers; {args.steps} steps of batch {args.batch}, "
          f"max {args.seq} tokens; LoRA r16 all-linear; {args.runs} alternating runs each, medians")
    print(f"{'':<22} {'tokens/s':>9} {'train s':>8} {'to 1st step s':>14} {'after train s':>14} {'wall s':>8}")
    for name, figures in (("modelforge train", ours), ("plain TRL + peft", theirs)):
        print(f"{name:<22} {figures['tokens_per_s']:>9.0f} {figures['train_runtime_s']:>8.2f} "
              f"{figures['to_first_step_s']:>14.2f} {figures['after_training_s']:>14.2f} {figures['wall_s']:>8.2f}")
        result("overhead", side=name, runs=args.runs, **{k: round(v, 3) for k, v in figures.items()})
    verdict = "met" if ratio >= THROUGHPUT_GOAL else "MISSED"
    print(f"throughput ratio {ratio:.3f}x (goal >= {THROUGHPUT_GOAL}: {verdict})")
    print(f"start-up overhead {startup:+.2f} s to the first step (goal < {STARTUP_GOAL_S} s: "
          f"{'met' if startup < STARTUP_GOAL_S else 'MISSED'})")
    result("overhead", side="comparison", throughput_ratio=round(ratio, 4), throughput_goal=THROUGHPUT_GOAL,
           startup_overhead_s=round(startup, 3), startup_goal_s=STARTUP_GOAL_S,
           met=ratio >= THROUGHPUT_GOAL and startup < STARTUP_GOAL_S)
    if profile_figures:
        total, top = profile_figures
        print(f"self time of the framework's own functions (one run under cProfile): {total:.3f} s; largest:")
        for name, seconds in top:
            print(f"  {seconds:8.3f} s  {name}")
        result("overhead", side="own_code_profile", own_self_time_s=round(total, 3),
               top=[[name, round(seconds, 4)] for name, seconds in top])
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
