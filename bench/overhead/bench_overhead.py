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

- in-loop (steady-state) tokens/s: tokens between the first and the last logged step over the
  time between those logs, which leaves out what happens once at train begin (the TensorBoard
  writer's creation, the dataloader's first batch) and shows what a longer run would see.
  Spread: the lowest and highest of the runs, and the ratio of each alternating pair.
- what ModelForge adds to every step, each measured alone in this process (``--costs``): the
  core's callback (step end: progress and the interruption flag), its JSONL log line and the
  lifecycle hooks (per log), TensorBoard's scalars and flush (per log) and the progress line
  (per log), as a share of the median step. Goal: each at most 2% of a step.

Each ModelForge run gets an empty data cache, so both sides tokenize.

    python bench/overhead/bench_overhead.py [--runs 5] [--steps 50] [--hidden 256] [--layers 4] [--seq 256]
"""

from __future__ import annotations

import argparse
import itertools
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
THROUGHPUT_GOAL = 0.98
PER_STEP_GOAL = 0.02
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
            "train_loss": summary.get("train_loss"), **in_loop(steps)}


def in_loop(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Tokens and seconds between the first and the last logged training step, and the fastest
    interval between two logs (the one least disturbed by other work on a shared machine)."""
    first, last = steps[0], steps[-1]
    intervals = [(float(b.get("num_tokens", 0)) - float(a.get("num_tokens", 0))) / (float(b["time"]) - float(a["time"]))
                 for a, b in itertools.pairwise(steps[1:]) if float(b["time"]) > float(a["time"])]
    return {"loop_tokens": float(last.get("num_tokens", 0)) - float(first.get("num_tokens", 0)),
            "loop_seconds": float(last["time"]) - float(first["time"]),
            "loop_steps": int(last["step"]) - int(first["step"]),
            "best_interval_tokens_per_s": max(intervals, default=0.0)}


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
    figures.update(started=started, finished=finished, **in_loop(figures.pop("logs")))
    return figures


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    loop = [r["loop_tokens"] / r["loop_seconds"] for r in runs]
    return {
        "loop_tokens_per_s": median(loop), "loop_min": min(loop), "loop_max": max(loop),
        "best_interval_tokens_per_s": max(r["best_interval_tokens_per_s"] for r in runs),
        "step_s": median([r["loop_seconds"] / r["loop_steps"] for r in runs]),
        "tokens_per_s": median([r["num_tokens"] / r["train_runtime"] for r in runs]),
        "train_runtime_s": median([r["train_runtime"] for r in runs]),
        "to_first_step_s": median([r["first_log"] - r["started"] for r in runs]),
        "after_training_s": median([r["finished"] - r["last_log"] for r in runs]),
        "wall_s": median([r["finished"] - r["started"] for r in runs]),
        "num_tokens": median([r["num_tokens"] for r in runs]),
    }


def per_step_costs(work: Path, logging_steps: int, repeats: int = 300) -> dict[str, float]:
    """Seconds each addition costs per training step, measured alone on the real objects: per
    step the callback's step end; per log (spread over ``logging_steps`` steps) the JSONL line
    with the hooks, TensorBoard's scalars and flush, and the progress line a terminal-less run
    prints (the bar on a terminal updates at the same points)."""
    import contextlib
    import io

    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    from modelforge_core.api import RunInfo
    from modelforge_core.plugins import get_plugins
    from modelforge_core.runs import RunDir
    from modelforge_core.training import Display, StopFlag, make_run_callback

    run = RunDir.create({"output_dir": str(work / "costs-run")})
    info = RunInfo(run.name, run.path, {}, True)
    quiet = make_run_callback(run, info, get_plugins().hooks, Display(enabled=False), StopFlag())
    shown = make_run_callback(run, info, get_plugins().hooks, Display(enabled=True, tty=False), StopFlag())
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.path / "logs")
    args = TrainingArguments(output_dir=str(work / "costs-out"), report_to=["tensorboard"], use_cpu=True)
    state, control = TrainerState(max_steps=1000, global_step=10, epoch=0.1), TrainerControl()
    tensorboard = TensorBoardCallback()
    started = time.perf_counter()
    tensorboard.on_train_begin(args, state, control)  # imports TensorBoard, creates the writer
    writer_s = time.perf_counter() - started
    logs = {"loss": 2.5, "grad_norm": 0.8, "learning_rate": 2e-4, "num_tokens": 12345.0, "mean_token_accuracy": 0.3,
            "entropy": 4.1, "epoch": 0.1}

    def seconds(call: Any) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        return (time.perf_counter() - started) / repeats

    with contextlib.redirect_stderr(io.StringIO()):
        costs = {
            "callback step end (per step)": seconds(lambda: quiet.on_step_end(args, state, control)),
            "JSONL line + hooks (per log)": seconds(lambda: quiet.on_log(args, state, control, logs=dict(logs))),
            "TensorBoard scalars + flush (per log)": seconds(
                lambda: tensorboard.on_log(args, state, control, logs=dict(logs))),
            "progress line (per log)": seconds(
                lambda: shown.on_log(args, state, control, logs=dict(logs))),
        }
    costs["progress line (per log)"] -= costs["JSONL line + hooks (per log)"]
    tensorboard.on_train_end(args, state, control)
    per_step = {name: value / (1 if "per step" in name else logging_steps) for name, value in costs.items()}
    return {**per_step, "TensorBoard writer (once, at train begin)": writer_s}


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
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--costs", action=argparse.BooleanOptionalAction, default=True,
                        help="measure each per-step addition alone")
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
            "logging_steps": args.logging_steps, "eval_steps": 1000, "save_steps": 1000, "eval_split": 0,
            "warmup_ratio": 0.0, "group_by_length": False, "max_seq_length": args.seq, "packing": False, "seed": 42,
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
        load_after = load_average()
        profile_figures = own_self_time(work / "run.prof") if args.profile and modelforge_run(
            config, work, args.runs, profile=work / "run.prof") else None
        costs = per_step_costs(work, args.logging_steps) if args.costs else {}
    ours, theirs = summarize(framework), summarize(plain)
    ratio = ours["loop_tokens_per_s"] / theirs["loop_tokens_per_s"]
    whole = ours["tokens_per_s"] / theirs["tokens_per_s"]
    pairs = sorted(round((a["loop_tokens"] / a["loop_seconds"]) / (b["loop_tokens"] / b["loop_seconds"]), 3)
                   for a, b in zip(framework, plain, strict=True))
    startup = ours["to_first_step_s"] - theirs["to_first_step_s"]
    print(f"machine: {machine()}  (load average before: {load_before}, after the comparison: {load_after})")
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers; {args.steps} steps of batch {args.batch}, "
          f"max {args.seq} tokens; LoRA r16 all-linear; logging every {args.logging_steps} steps; "
          f"{args.runs} alternating runs each, medians")
    print(f"{'':<18} {'in-loop tok/s':>13} {'(min-max)':>13} {'step s':>7} {'trainer tok/s':>13} {'train s':>8} "
          f"{'to 1st step s':>14} {'after train s':>14} {'wall s':>8}")
    for name, figures in (("modelforge train", ours), ("plain TRL + peft", theirs)):
        spread = f"{figures['loop_min']:.0f}-{figures['loop_max']:.0f}"
        print(f"{name:<18} {figures['loop_tokens_per_s']:>13.0f} {spread:>13} {figures['step_s']:>7.3f} "
              f"{figures['tokens_per_s']:>13.0f} {figures['train_runtime_s']:>8.2f} "
              f"{figures['to_first_step_s']:>14.2f} {figures['after_training_s']:>14.2f} {figures['wall_s']:>8.2f}")
        result("overhead", side=name, runs=args.runs, **{k: round(v, 3) for k, v in figures.items()})
    verdict = "met" if ratio >= THROUGHPUT_GOAL else "MISSED"
    print(f"in-loop throughput ratio {ratio:.3f}x (goal >= {THROUGHPUT_GOAL}: {verdict}); "
          f"ratio of each alternating pair, sorted: {pairs}")
    print(f"trainer's own tokens/s (train_runtime, includes what happens once at train begin): {whole:.3f}x")
    best = ours["best_interval_tokens_per_s"] / theirs["best_interval_tokens_per_s"]
    print(f"fastest interval between two logs, over all runs (the least disturbed by other work): "
          f"{ours['best_interval_tokens_per_s']:.0f} vs {theirs['best_interval_tokens_per_s']:.0f} tokens/s, "
          f"{best:.3f}x")
    if costs:
        step = theirs["step_s"]
        print(f"per-step additions, each measured alone, against the plain script's median step of {step:.3f} s:")
        once = {name: cost for name, cost in costs.items() if "once" in name}
        costs = {name: cost for name, cost in costs.items() if name not in once}
        for name, cost in costs.items():
            share = cost / step
            print(f"  {name:<40} {cost * 1e3:8.3f} ms a step  {100 * share:6.3f} % "
                  f"({'ok' if share <= PER_STEP_GOAL else 'OVER 2%'})")
        for name, cost in once.items():
            print(f"  {name:<40} {cost * 1e3:8.1f} ms once     {100 * cost / (step * args.steps):6.3f} % "
                  f"of {args.steps} steps")
        total = sum(costs.values())
        print(f"  {'all together':<40} {total * 1e3:8.3f} ms a step  {100 * total / step:6.3f} %")
        result("overhead", side="per_step_costs", step_s=round(step, 4),
               **{name: round(cost, 6) for name, cost in {**costs, **once}.items()})
    print(f"start-up overhead {startup:+.2f} s to the first step (goal < {STARTUP_GOAL_S} s: "
          f"{'met' if startup < STARTUP_GOAL_S else 'MISSED'})")
    result("overhead", side="comparison", throughput_ratio=round(ratio, 4), pair_ratios=pairs,
           best_interval_ratio=round(best, 4),
           trainer_throughput_ratio=round(whole, 4), load_before=load_before, load_after=load_after,
           throughput_goal=THROUGHPUT_GOAL,
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
