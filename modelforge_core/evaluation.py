"""``modelforge evaluate``: a trained run's metrics on a dataset, measured again.

By default the dataset is the run's own eval split, rebuilt with the same seeded split as in
training; the data fingerprint in ``manifest.json`` must still match, or the split would hold
other rows. The loss-based metrics come from the same trainer class, formatted dataset, batch
size and sequence length as the evaluation at the end of training (so ``eval_loss`` reproduces
the ``after`` value in ``metrics.json``); the task adds its own metrics (ROUGE, exact match).

Results go to ``evaluations/<timestamp>.json`` inside the run folder; ``metrics.json``, the
record of the training itself, is never touched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
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
    from .orchestrate import fingerprint_file, split_rows

    manifest = run.read_json(MANIFEST_FILE) if run.file(MANIFEST_FILE).is_file() else {}
    recorded = manifest.get("data", {})
    dataset = config["dataset"]
    if not isinstance(dataset, str) or "://" in dataset or not Path(dataset).is_absolute():  # hub, mixture, ...
        return _sources_eval_split(run, config, plugins, recorded)
    file = Path(recorded.get("file") or config["dataset"])
    if not file.is_file():
        raise RunError(f"the run's dataset {file} is gone: give the rows to evaluate with --dataset FILE")
    if recorded.get("fingerprint") and fingerprint_file(file) != recorded["fingerprint"]:
        raise RunError(f"the dataset {file} changed since {run.path} was trained, so its eval split would hold "
                       "other rows: give --dataset FILE to evaluate on a file of your choice")
    if config.get("eval_split", 0) <= 0:
        raise UsageError(f"{run.path} was trained with eval_split 0 (no eval split): give --dataset FILE")
    data = check_dataset(config, plugins=plugins, path=file)
    train_indices, eval_indices = split_rows(data.rows, config["eval_split"], config["seed"], data.file)
    return EvaluationData(
        eval_rows=[data.rows[i] for i in eval_indices], train_rows=[data.rows[i] for i in train_indices],
        description={"file": str(file), "fingerprint": fingerprint_file(file), "split": "eval",
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
    from .orchestrate import fingerprint_file

    data = check_dataset(config, plugins=plugins, path=path, shape="supervised")
    if not data.rows:
        raise UsageError(f"{path} has no rows to evaluate")
    return EvaluationData(eval_rows=list(data.rows), train_rows=list(data.rows),
                          description={"file": str(path), "fingerprint": fingerprint_file(path), "split": "all",
                                       "rows": len(data.rows)})


def loss_metrics(trained: Any, data: EvaluationData) -> dict[str, float]:
    """``eval_loss`` (and what the trainer reports with it) with the trainer the run trained with:
    TRL's ``SFTTrainer`` for causal LMs, ``Seq2SeqTrainer`` or ``Trainer`` for the other heads."""
    from .training import NOISE_SUFFIXES, choose_max_length, prepare_trainer, trainer_arguments, with_perplexity

    config, task, head, loaded = trained.config, trained.task, trained.head, trained.loaded
    tokenizer, model = loaded.tokenizer, loaded.model

    def build(rows: Sequence[Mapping[str, Any]]) -> Any:
        return task.build_dataset(rows, shape="supervised", tokenizer=tokenizer, config=config, head=head)

    if head == "causal-lm":
        # The same tokenized columns as in training (and the same cache entry, when it is there).
        from .datacache import cached_sft_dataset

        def prepared(rows: Sequence[Mapping[str, Any]]) -> Any:
            return cached_sft_dataset(rows, tokenizer, config, shape="supervised", formatter=type(task).__module__,
                                      say=lambda _: None, build=lambda: build(rows))
    else:
        prepared = build
    eval_ds = prepared(data.eval_rows)
    trainer: Any
    with tempfile.TemporaryDirectory(prefix="modelforge-evaluate-") as scratch:
        def arguments(args_class: type, **extra: Any) -> Any:
            return args_class(**trainer_arguments(config, output_dir=scratch, logging_dir=None, has_eval=True,
                                                  args_class=args_class, report_to=[], save_strategy="no",
                                                  **extra))

        if head == "causal-lm":
            from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

            train_ds = prepared(data.train_rows) if data.train_rows is not data.eval_rows else eval_ds
            max_length = choose_max_length(config, train_ds, tokenizer, model, lambda _: None)
            args = arguments(SFTConfig, max_length=max_length, packing=config["packing"],
                             completion_only_loss=True, dataset_num_proc=None)
            trainer = SFTTrainer(model=model, args=args, train_dataset=eval_ds, eval_dataset=eval_ds,
                                 processing_class=tokenizer)
        else:
            from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

            collator = task.data_collator(tokenizer, model, head)
            args_class, trainer_class = ((Seq2SeqTrainingArguments, Seq2SeqTrainer) if head == "seq2seq-lm"
                                         else (TrainingArguments, Trainer))
            trainer = trainer_class(model=model, args=arguments(args_class), eval_dataset=eval_ds,
                                    data_collator=collator, processing_class=tokenizer)
        prepare_trainer(trainer)
        raw = trainer.evaluate()
    metrics = with_perplexity({k: float(v) for k, v in raw.items()
                               if isinstance(v, (int, float)) and not k.endswith(NOISE_SUFFIXES)})
    if head in ("question-answering", "sequence-classification"):
        metrics.pop("eval_perplexity", None)  # not a language model: perplexity means nothing
    return metrics


def evaluate_run(run_dir: Path, *, dataset: Path | None = None, plugins: Plugins | None = None) -> EvaluationResult:
    """Measure a trained run on its eval split (or on ``dataset``) and record the result."""
    from .inference import load_trained

    plugins = plugins or get_plugins()
    run = RunDir.open(run_dir)
    config = run.config()
    strategy = plugins.registry.strategies[config["strategy"]]
    if dataset is None and strategy.data_shape != "supervised":
        raise UsageError(f"{run.path} trained on {strategy.data_shape} pairs ({config['strategy']}): its preference "
                         "metrics are in metrics.json; give --dataset FILE with supervised rows to measure "
                         "the model's loss on them")
    if dataset is not None and not dataset.is_file():
        raise UsageError(f"--dataset {dataset}: no such file")
    data = (dataset_file(run, config, plugins, dataset) if dataset is not None
            else run_eval_split(run, config, plugins))
    trained = load_trained(run.path, plugins=plugins)
    metrics = loss_metrics(trained, data)
    metrics.update(trained.task.evaluate(trained.loaded, data.eval_rows, config=config))
    training_metrics = {}
    # Only the run's own eval split is what the end-of-training metrics measured (a preference
    # run's eval_loss is even another loss): no comparison for a file of the user's choice.
    if dataset is None and run.file(METRICS_FILE).is_file():
        training_metrics = dict(run.read_json(METRICS_FILE).get("after") or {})
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
