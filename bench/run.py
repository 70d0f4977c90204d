"""``make bench``: every CPU benchmark in turn (CLI start-up, data preparation and its cache,
training overhead against a hand-written script), each printing its table and RESULT lines.
The GPU benchmark is separate: ``bash bench/gpu/run.sh`` on a GPU machine (see RESULTS.md).

    python bench/run.py [--smoke]     # --smoke: tiny sizes, one repetition (what make test runs)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

FULL = {
    "cli": ["cli/bench_cli.py"],
    "data": ["data/bench_data.py"],
    "overhead": ["overhead/bench_overhead.py"],
}
SMOKE = {
    "cli": ["cli/bench_cli.py", "--runs", "1", "--heavy-runs", "0", "--rows", "200"],
    "data": ["data/bench_data.py", "--rows", "300", "--trl-rows", "40"],
    "overhead": ["overhead/bench_overhead.py", "--runs", "1", "--steps", "3", "--logging-steps", "1", "--batch", "2",
                 "--hidden", "64",
                 "--layers", "2", "--seq", "32", "--no-profile"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", choices=sorted(FULL), action="append")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    failed = []
    for name, command in plan.items():
        if args.only and name not in args.only:
            continue
        print(f"== bench {name}: {' '.join(command)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / command[0]), *command[1:]], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
