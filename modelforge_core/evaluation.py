"""``modelforge evaluate``: a trained run's metrics on a dataset, measured again.

By default the dataset is the run's own eval split, rebuilt with the same seeded split as in
training; the data fingerprint in ``manifest.json`` must still match, or the split would hold
other rows. The loss-based metrics come from the same trainer class, formatted dataset, batch
size and sequence length as the evaluation at the end of training (so ``eval_loss`` reproduces
the ``after`` value in ``metrics.json``); the task adds its own metrics (ROUGE, exact match).

Results go to ``evaluations/<timestamp>.json`` inside the run folder; ``metrics.json``, the
record of the training itself, is never touched.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import RunError, UsageError
from .plugins import Plugins, get_plugins
from .runlist import EVALUATIONS_DIR
from .runs import MANIFEST_FILE, METRICS_FILE, RunDir, now_iso


@dataclass
class EvaluationResult:
    run_dir: Path
    file: Path
    dataset: dict[str, Any]
    metrics: dict[str, float]
    #: The ``after`` metrics written at the end of training, for comparison (eval split only).
    training_metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "file": str(self.file), "dataset": self.dataset,
                "metrics": self.metrics, "training_metrics": self.training_metrics}


@dataclass
class EvaluationData:
    """The rows to evaluate and the rows the run trained on (for the sequence length)."""

    eval_rows: list[dict[str, Any]]
    train_rows: list[dict[str, Any]]
    description: dict[str, Any]


def run_eval_split(run: RunDir, config: Mapping[str, Any], plugins: Plugins) -> EvaluationData:
    """The run's eval split, rebuilt exactly as in training, after checking the data is unchanged."""
    from .data import check_dataset
    from .orchestrate import split_rows

    manifest = run.read_json(MANIFEST_FILE) if run.file(MANIFEST_FILE).is_file() else {}
    recorded = manifest.get("data", {}) if isinstance(manifest, dict) else {}
    recorded = recorded if isinstance(recorded, dict) else {}
    dataset = config["dataset"]
    if not isinstance(dataset, str) or "://" in dataset or not Path(dataset).is_absolute():  # hub, mixture, ...
        return _sources_eval_split(run, config, plugins, recorded)
    file = Path(recorded.get("file") or config["dataset"])
    if not file.is_file():
        raise RunError(f"the run's dataset {file} is gone: give the rows to evaluate with --dataset FILE")
    if config.get("eval_split", 0) <= 0:
        raise UsageError(f"{run.path} was trained with eval_split 0 (no eval split): give --dataset FILE")
    data = check_dataset(config, plugins=plugins, path=file)
    # The fingerprint of the bytes just parsed, not of a second read that could differ.
    if recorded.get("fingerprint") and data.fingerprint != recorded["fingerprint"]:
        raise RunError(f"the dataset {file} changed since {run.path} was trained, so its eval split would hold "
                       "other rows: give --dataset FILE to evaluate on a file of your choice")
    train_indices, eval_indices = split_rows(data.rows, config["eval_split"], config["seed"], data.file)
    return EvaluationData(
        eval_rows=[data.rows[i] for i in eval_indices], train_rows=[data.rows[i] for i in train_indices],
        description={"file": str(file), "fingerprint": data.fingerprint, "split": "eval",
                     "rows": len(eval_indices)})


def _sources_eval_split(run: RunDir, config: Mapping[str, Any], plugins: Plugins,
                        recorded: Mapping[str, Any]) -> EvaluationData:
    """The eval split of a run trained on a hub dataset, a folder or a mixture: every source
    read again, and its fingerprint compared with the manifest's."""
    from .data import check_dataset
    from .orchestrate import split_rows

    if config.get("eval_split", 0) <= 0:
        raise UsageError(f"{run.path} was trained with eval_split 0 (no eval split): give --dataset FILE")
    data = check_dataset(config, plugins=plugins)
    if recorded.get("fingerprint") and data.fingerprint != recorded["fingerprint"]:
        raise RunError(f"the dataset {data.file} changed since {run.path} was trained, so its eval split would hold "
                       "other rows: give --dataset FILE to evaluate on a file of your choice")
    train_indices, eval_indices = split_rows(data.rows, config["eval_split"], config["seed"], data.file)
    return EvaluationData(
        eval_rows=[data.rows[i] for i in eval_indices], train_rows=[data.rows[i] for i in train_indices],
        description={"file": data.file, "fingerprint": data.fingerprint, "split": "eval", "rows": len(eval_indices)})


def dataset_file(run: RunDir, config: Mapping[str, Any], plugins: Plugins, path: Path) -> EvaluationData:
    """Every row of a file the user chose (supervised rows of the run's task)."""
    from .data import check_dataset
    data = check_dataset(config, plugins=plugins, path=path, shape="supervised")
    if not data.rows:
        raise UsageError(f"{path} has no rows to evaluate")
    return EvaluationData(eval_rows=list(data.rows), train_rows=list(data.rows),
                          description={"file": str(path), "fingerprint": data.fingerprint, "split": "all",
                                       "rows": len(data.rows)})


def measure(trained: Any, data: EvaluationData) -> dict[str, float]:
    """The run's metrics on ``data``, measured as at the end of training: the trainer kit builds
    the same trainer (TRL's ``SFTTrainer`` for causal LMs, ``Seq2SeqTrainer`` or ``Trainer``
    otherwise) on the same formatted data, batch size and sequence length, and
    :func:`~modelforge_core.trainer.evaluate_stage` gives the loss and the task's metrics."""
    from .api import RunInfo, TrainingJob
    from .trainer import evaluate_stage, quiet_libraries, supervised_trainer
    from .training import trainer_arguments

    quiet_libraries()
    config = trained.config
    with tempfile.TemporaryDirectory(prefix="modelforge-evaluate-") as scratch:
        job = TrainingJob(
            config=config, task=trained.task, provider=trained.provider,
            run=RunInfo(trained.run.name, trained.run.path, config), train_rows=data.train_rows,
            eval_rows=data.eval_rows, shape="supervised", load_model=lambda *args, **kwargs: trained.loaded,
            trainer_arguments=lambda **kwargs: trainer_arguments(
                config, output_dir=scratch, logging_dir=None, **{"report_to": [], "save_strategy": "no", **kwargs}),
            callbacks=[], head=trained.head, say=lambda _: None)
        trainer = supervised_trainer(job, trained.loaded, for_training=False)
        return evaluate_stage(trainer, job, "evaluate", trained.loaded, data.eval_rows)


def evaluate_run(run_dir: Path, *, dataset: Path | None = None, plugins: Plugins | None = None) -> EvaluationResult:
    """Measure a trained run on its eval split (or on ``dataset``) and record the result."""
    from .inference import load_trained

    plugins = plugins or get_plugins()
    run = RunDir.open(run_dir)
    config = run.config()
    from .schema import canonical_schema

    strategy_name = config.get("strategy") or canonical_schema()["properties"]["strategy"]["default"]
    strategy = plugins.registry.strategies.get(strategy_name)
    if strategy is None:
        raise RunError(f"{run.path} was trained with strategy {strategy_name!r}, which is not installed here")
    if dataset is None and strategy.data_shape != "supervised":
        raise UsageError(f"{run.path} trained on {strategy.data_shape} pairs ({strategy_name}): its preference "
                         "metrics are in metrics.json; give --dataset FILE with supervised rows to measure "
                         "the model's loss on them")
    if dataset is not None and not dataset.is_file():
        raise UsageError(f"--dataset {dataset}: no such file")
    data = (dataset_file(run, config, plugins, dataset) if dataset is not None
            else run_eval_split(run, config, plugins))
    trained = load_trained(run.path, plugins=plugins)
    metrics = measure(trained, data)
    training_metrics = {}
    # Only the run's own eval split is what the end-of-training metrics measured (a preference
    # run's eval_loss is even another loss): no comparison for a file of the user's choice.
    if dataset is None and run.file(METRICS_FILE).is_file():
        saved = run.read_json(METRICS_FILE)
        after = saved.get("after") if isinstance(saved, dict) else None
        training_metrics = dict(after) if isinstance(after, dict) else {}
    folder = run.path / EVALUATIONS_DIR
    folder.mkdir(exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}.json"
    for attempt in range(1, 1000):
        if not (folder / name).exists():
            break
        name = f"{stamp}-{attempt}.json"
    record = {"created_at": now_iso(), "dataset": data.description, "metrics": metrics,
              "training_metrics_after": training_metrics, "pid": os.getpid()}
    run.write_json(f"{EVALUATIONS_DIR}/{name}", record)
    return EvaluationResult(run.path, folder / name, data.description, metrics, training_metrics)
