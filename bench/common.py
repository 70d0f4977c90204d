"""Shared by the benchmark scripts: the machine they ran on, medians, result lines.

Every script prints a human table and one ``RESULT {json}`` line per figure, so that
``bench/run.py`` and the smoke tests can read the figures without parsing tables.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and the load average now: figures mean little without them."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": memory_gib, "load_average": load_average(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def result(name: str, **figures: Any) -> None:
    """One machine-readable line per figure."""
    print("RESULT " + json.dumps({"name": name, **figures}, default=str), flush=True)


def light_env() -> dict[str, str]:
    """The environment a user has: bytecode is written (this workspace sets
    PYTHONDONTWRITEBYTECODE=1, which would make every light command recompile its modules)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env
