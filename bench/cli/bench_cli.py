"""Wall time of the light ``modelforge`` commands against an eager import of the training
libraries (``python -c "import transformers, peft, trl"``), each the median of many runs.

Goal: every light command under 0.3 s median. Runs are interleaved (one of each command per
round) so that a burst of load on the machine hits all commands alike. Bytecode is written, as
it is for a user (this workspace's PYTHONDONTWRITEBYTECODE=1 is removed), and one unmeasured
round comes first to write it.

    python bench/cli/bench_cli.py [--runs 21] [--heavy-runs 5] [--rows 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import BIN, light_env, load_average, machine, median, result

GOAL_S = 0.3


def write_inputs(folder: Path, rows: int) -> Path:
    data = folder / "data.jsonl"
    with data.open("w", encoding="utf-8") as handle:
        for index in range(rows):
            handle.write(json.dumps({"input": f"What is the harbour of island {index}?",
                                     "output": f"The harbour of island {index} is Port {index % 97}."}) + "\n")
    model = folder / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    config = folder / "config.json"
    config.write_text(json.dumps({"task": "text-generation", "model_name": str(model), "dataset": str(data),
                                  "compute_specs": "low_end", "max_seq_length": 256}))
    return config


def timed(command: list[str], cpu: list[float] | None = None) -> float:
    """Wall seconds of one run; its CPU seconds (user + system, which other processes on a
    loaded machine do not inflate much) are appended to ``cpu``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=light_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--heavy-runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args(argv)
    cli = str(BIN / "modelforge")
    with tempfile.TemporaryDirectory() as tmp:
        config = str(write_inputs(Path(tmp), args.rows))
        light = {
            "modelforge --help": [cli, "--help"],
            "modelforge validate": [cli, "validate", config],
            f"modelforge validate --data ({args.rows} rows)": [cli, "validate", config, "--data"],
            "modelforge schema": [cli, "schema"],
            "modelforge plugins": [cli, "plugins"],
        }
        eager = 'python -c "import transformers, peft, trl"'
        heavy = {eager: [sys.executable, "-c", "import transformers, peft, trl"]} if args.heavy_runs else {}
        # the floor: an interpreter that imports nothing (site, with this venv's .pth files, included)
        floor = {'python -c "pass"': [sys.executable, "-c", "pass"]}
        for command in [*light.values(), *floor.values(), *heavy.values()]:
            timed(command)  # writes bytecode, warms the page cache
        times: dict[str, list[float]] = {name: [] for name in [*light, *floor, *heavy]}
        cpu: dict[str, list[float]] = {name: [] for name in [*light, *floor, *heavy]}
        load_before = load_average()
        for round_index in range(args.runs):
            for name, command in {**light, **floor}.items():
                times[name].append(timed(command, cpu[name]))
            if round_index < args.heavy_runs:
                for name, command in heavy.items():
                    times[name].append(timed(command, cpu[name]))
    print(f"machine: {machine()}  (load average before: {load_before})")
    print(f"{'command':<48} {'median s':>9} {'min s':>7} {'cpu s':>7} {'runs':>5}  goal (wall median)")
    for name, values in times.items():
        is_light = name in light
        verdict = ("met" if median(values) < GOAL_S else "MISSED") if is_light else "reference"
        print(f"{name:<48} {median(values):>9.3f} {min(values):>7.3f} {median(cpu[name]):>7.3f} {len(values):>5}  "
              f"{verdict}")
        met = median(values) < GOAL_S if is_light else None
        result("cli", command=name, median_s=round(median(values), 4), min_s=round(min(values), 4),
               cpu_median_s=round(median(cpu[name]), 4), runs=len(values), goal_s=GOAL_S if is_light else None, met=met)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
