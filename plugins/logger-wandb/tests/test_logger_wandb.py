"""The W&B logger's hooks, offline, without a training (the training itself is covered by
tests/test_earlystop.py): a resumed run continues the same W&B run; no object, no W&B."""

from __future__ import annotations

import json
from pathlib import Path

import modelforge_logger_wandb as plugin
import pytest

from modelforge_core.api import RunInfo

pytest.importorskip("wandb")


def _run(directory: Path, resumed_from: str | None = None, **config: object) -> RunInfo:
    return RunInfo(name=directory.name, directory=directory, config={"learning_rate": 0.001, **config},
                   sources={"learning_rate": "--set"}, resumed_from=resumed_from)


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path: Path) -> None:
    options = {"mode": "offline", "project": "tests", "entity": None, "run_name": None, "group": None, "tags": [],
               "timeout_s": 60}
    first = _run(tmp_path, wandb=options)
    plugin.on_run_start(first)
    plugin.on_log(first, 2, {"loss": 2.0})
    plugin.on_run_end(first, "interrupted", {}, None)
    run_id = json.loads((tmp_path / "wandb.json").read_text())["run_id"]

    again = _run(tmp_path, resumed_from="checkpoint-2", wandb=options)
    plugin.on_run_start(again)
    plugin.on_log(again, 4, {"loss": 1.5})
    plugin.on_run_end(again, "finished", {"best_step": 4}, None)
    assert json.loads((tmp_path / "wandb.json").read_text())["run_id"] == run_id
    attempts = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # Two attempts in one second get "-1" appended to the second folder by wandb.
    assert len(attempts) == 2 and all(f"-{run_id}" in p.name for p in attempts)


def test_no_wandb_object_no_wandb(tmp_path: Path) -> None:
    run = _run(tmp_path)
    plugin.on_run_start(run)
    plugin.on_run_end(run, "finished", {}, None)
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb.json").exists()
