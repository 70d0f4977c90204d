"""The public API for plugin authors: the three component kinds and what they exchange.

A plugin subclasses :class:`Provider`, :class:`Strategy` or :class:`Task`, fills in the class
attributes that describe it (its name, capabilities and options) and implements the methods.
The class attributes are read when a config is validated, so everything at class level must be
cheap; the methods run during training and may import torch, transformers, peft or trl inside.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import Problem

#: Model heads a provider can load and a task can ask for.
HEADS = ("causal-lm", "seq2seq-lm", "question-answering", "sequence-classification")

#: Dataset shapes: ``supervised`` rows have a prompt and a target; ``preference`` rows
#: have a prompt, a chosen and a rejected answer.
DATA_SHAPES = ("supervised", "preference")


class Component:
    """What every provider, strategy and task has."""

    #: ``"provider"``, ``"strategy"`` or ``"task"``; set by the base classes below.
    kind: ClassVar[str] = ""
    #: The name a config uses to select the component.
    name: ClassVar[str] = ""
    #: One line for ``modelforge plugins`` and the effective schema.
    description: ClassVar[str] = ""
    #: JSON Schema (Draft 2020-12) of the component's own options, an object that users
    #: write under the component's name in the config (``"dpo": {"beta": 0.1}``). Give every
    #: property a ``default`` and a ``description``. ``None``: no options.
    options_schema: ClassVar[Mapping[str, Any] | None] = None
    #: Extra ``if``/``then`` rules (JSON Schema) that the effective schema adds to its
    #: ``allOf``, for cross-field rules specific to this component.
    schema_rules: ClassVar[Sequence[Mapping[str, Any]]] = ()
    #: True when the component can only run on a GPU.
    needs_gpu: ClassVar[bool] = False
    #: The metrics the component reports at every evaluation *during* training (each
    #: ``eval_steps``), each with the direction that is better: ``"min"`` or ``"max"``
    #: (``{"eval_loss": "min"}``). Early stopping may watch only these: the effective schema
    #: allows ``early_stopping_metric`` to name a metric of the selected task or strategy.
    training_metrics: ClassVar[Mapping[str, str]] = {}

    def check_environment(self) -> str | None:
        """Say, in one sentence with what to do, why this machine cannot run the component.

        Called by ``modelforge validate`` and ``modelforge train`` before anything heavy is
        loaded; must itself be cheap (``importlib.util.find_spec``, not ``import``).
        Returns ``None`` when the component can run.
        """
        return None

    def capabilities(self) -> dict[str, Any]:
        """The capabilities as plain JSON data (for ``modelforge plugins --json``)."""
        if self.training_metrics:
            return {"needs_gpu": self.needs_gpu, "training_metrics": dict(self.training_metrics)}
        return {"needs_gpu": self.needs_gpu}


class Provider(Component):
    """Loads a model and its tokenizer for a head, with quantization and a LoRA adapter."""

    kind: ClassVar[str] = "provider"
    #: The heads it can load (see :data:`HEADS`).
    heads: ClassVar[frozenset[str]] = frozenset()
    #: Tasks it supports; ``None``: every task whose heads it can load.
    tasks: ClassVar[frozenset[str] | None] = None
    #: Strategies it supports; ``None``: all.
    strategies: ClassVar[frozenset[str] | None] = None

    def load(self, request: LoadRequest) -> LoadedModel:
        """Load the model (and a fresh or saved adapter) and its tokenizer."""
        raise NotImplementedError

    def save_adapter(self, loaded: LoadedModel, directory: Path) -> None:
        """Save the adapter and tokenizer of ``loaded`` into the existing, empty ``directory``
        in peft's format, so ``peft.AutoPeftModel*.from_pretrained(directory)`` loads it."""
        loaded.model.save_pretrained(directory)
        loaded.tokenizer.save_pretrained(directory)

    def capabilities(self) -> dict[str, Any]:
        return {
            **super().capabilities(),
            "heads": sorted(self.heads),
            "tasks": None if self.tasks is None else sorted(self.tasks),
            "strategies": None if self.strategies is None else sorted(self.strategies),
        }


class Task(Component):
    """Reads and checks a dataset, formats it for training, picks the head, computes metrics."""

    kind: ClassVar[str] = "task"
    #: Heads the task can train, preferred first.
    heads: ClassVar[tuple[str, ...]] = ()
    #: Dataset shapes the task accepts (see :data:`DATA_SHAPES`).
    data_shapes: ClassVar[frozenset[str]] = frozenset({"supervised"})
    #: The row formats, for error messages: ``{"supervised": ['{"input", "output"}']}``.
    row_formats: ClassVar[Mapping[str, Sequence[str]]] = {}

    def row_shape(self, row: Mapping[str, Any]) -> str | None:
        """Which data shape ``row`` has, or ``None`` when it has none the task knows.

        Must not import heavy libraries: ``modelforge validate --data`` calls it.
        """
        raise NotImplementedError

    def check_row(self, row: Mapping[str, Any], shape: str) -> list[Problem]:
        """Every problem with one row of shape ``shape``; ``path`` is the field name.

        Must not import heavy libraries. The core adds file and line.
        """
        raise NotImplementedError

    def choose_head(self, config: Mapping[str, Any], model_config: Mapping[str, Any] | None) -> str:
        """Pick the model head from the config and the model's ``config.json`` (if readable)."""
        return self.heads[0]

    def build_dataset(self, rows: Sequence[Mapping[str, Any]], *, shape: str, tokenizer: Any,
                      config: Mapping[str, Any], head: str) -> Any:
        """Turn checked rows into what the strategy's trainer consumes (a ``datasets.Dataset``).

        For the ``causal-lm`` head and supervised rows: ``prompt``/``completion`` columns
        (strings or message lists) that TRL's ``SFTTrainer`` tokenizes with loss on the
        completion only. For other heads: tokenized features (``input_ids``, ``labels``, ...).
        """
        raise NotImplementedError

    def data_collator(self, tokenizer: Any, model: Any, head: str) -> Any:
        """The collator for the tokenized features of :meth:`build_dataset` (``None``: default)."""
        return None

    def evaluate(self, loaded: LoadedModel, rows: Sequence[Mapping[str, Any]], *,
                 config: Mapping[str, Any]) -> dict[str, float]:
        """Task metrics computed by running the model on ``rows`` (ROUGE, exact match, ...).

        Loss-based metrics come from the trainer; return ``{}`` when there is nothing more.
        """
        return {}

    def predict(self, loaded: LoadedModel, inputs: Mapping[str, Any], *, config: Mapping[str, Any],
                **generation: Any) -> str:
        """Run the trained model on one input, formatted exactly as in training.

        ``inputs`` holds a row without its target (``{"input": ...}``, ``{"messages": [...]}``,
        ``{"document": ...}``, ``{"context": ..., "question": ...}``); ``generation`` holds
        options such as ``max_new_tokens``. Returns the answer text.
        """
        raise NotImplementedError

    def capabilities(self) -> dict[str, Any]:
        return {**super().capabilities(), "heads": list(self.heads),
                "data_shapes": sorted(self.data_shapes)}


class Logger(Component):
    """An experiment tracker or logger (MLflow, Weights & Biases, ...).

    A logger is declarative: its plugin does the logging in the lifecycle hooks
    (``on_run_start``, ``on_log``, ``on_evaluate``, ``on_run_end``). What it registers gives it
    an options object in the config under its :attr:`name` (``"mlflow": {"experiment": "x"}``);
    a logger is *enabled* for a run when that object is present in the config, so installing a
    logger plugin never sends anything anywhere by itself. :meth:`Component.check_environment`
    is asked only for the loggers a config enables.
    """

    kind: ClassVar[str] = "logger"

    @staticmethod
    def enabled_in(config: Mapping[str, Any], name: str) -> bool:
        """Whether the config enables the logger called ``name`` (its options object is there)."""
        return isinstance(config.get(name), Mapping)


class Strategy(Component):
    """Builds and runs the training."""

    kind: ClassVar[str] = "strategy"
    #: The dataset shape it trains on (see :data:`DATA_SHAPES`).
    data_shape: ClassVar[str] = "supervised"
    #: Tasks it supports; ``None``: every task that accepts :attr:`data_shape`.
    tasks: ClassVar[frozenset[str] | None] = None
    #: The learning rate the strategy recommends (documentation and ``modelforge plugins``).
    recommended_learning_rate: ClassVar[float | None] = None

    def train(self, job: TrainingJob) -> TrainResult:
        """Train, evaluate before and after, save the adapter(s) into ``job.run``."""
        raise NotImplementedError

    def capabilities(self) -> dict[str, Any]:
        return {
            **super().capabilities(),
            "data_shape": self.data_shape,
            "tasks": None if self.tasks is None else sorted(self.tasks),
            "recommended_learning_rate": self.recommended_learning_rate,
        }


@dataclass
class LoadRequest:
    """What a strategy asks a provider to load."""

    model_name: str
    head: str
    config: Mapping[str, Any]
    #: Attach a fresh LoRA adapter configured from the config (training).
    new_adapter: bool = True
    #: Load this saved adapter on top of the base instead (inference, resuming).
    adapter_path: Path | None = None
    #: For ``sequence-classification``: the number of labels (1 for a reward model).
    num_labels: int | None = None
    #: Prepare for training (kbit preparation, gradient checkpointing) or for inference.
    for_training: bool = True
    #: Name of the adapter inside the peft model (several adapters can share a base).
    adapter_name: str = "default"


@dataclass
class LoadedModel:
    """A model and tokenizer as a provider loaded them."""

    model: Any
    tokenizer: Any
    head: str
    provider: str
    #: Facts for the manifest and the log: dtype, quantization, parameter counts.
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunInfo:
    """What lifecycle hooks are told about a run."""

    name: str
    directory: Path
    config: Mapping[str, Any]
    is_main_process: bool = True
    #: Where each config value came from (``"default"``, ``"profile:<name>"``, ``"file:<path>"``,
    #: ``"--set"``, ``"api"``); nested options have dotted keys (``"dpo.beta"``).
    sources: Mapping[str, str] = field(default_factory=dict)
    #: The checkpoint folder name this attempt resumes from (``"checkpoint-20"``), or ``None``
    #: for a fresh run. A resumed run has the same :attr:`directory` as the first attempt.
    resumed_from: str | None = None


@dataclass
class TrainResult:
    """What a strategy returns: metrics before and after training and the step count."""

    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    global_step: int
    #: Extra named results for ``metrics.json`` (stages of rlhf, for example).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingJob:
    """Everything a strategy needs, assembled by the core.

    ``load_model`` goes through the configured provider; ``trainer_arguments`` maps every
    training field of the config to ``transformers.TrainingArguments`` keyword arguments
    (the strategy adds its own and may override); ``callbacks`` are the core's
    ``transformers.TrainerCallback`` objects (progress, JSONL log, lifecycle hooks,
    interruption) to hand to every trainer it builds.
    """

    config: Mapping[str, Any]
    task: Task
    provider: Provider
    run: RunInfo
    train_rows: Sequence[Mapping[str, Any]]
    eval_rows: Sequence[Mapping[str, Any]]
    shape: str
    load_model: Callable[..., LoadedModel]
    trainer_arguments: Callable[..., dict[str, Any]]
    callbacks: list[Any]
    head: str
    #: A checkpoint folder to resume from, or ``None``.
    resume_from: Path | None = None
    #: Where the final adapter goes (``run/adapter``), written atomically by ``save``.
    save: Callable[[LoadedModel, str], Path] | None = None
    #: Report metrics to hooks, the log and ``metrics.json``: ``report(stage, metrics)``.
    report: Callable[[str, Mapping[str, float]], None] = lambda stage, metrics: None
    #: Print a progress message for the user (the log line "max_seq_length is null: ...").
    say: Callable[[str], None] = print
    #: True once SIGINT/SIGTERM asked the run to stop (after saving a checkpoint).
    stop_requested: Callable[[], bool] = lambda: False
    #: When resuming: the metrics measured before training in the first attempt.
    previous_metrics_before: dict[str, float] = field(default_factory=dict)
    #: The core's run folder object (``modelforge_core.runs.RunDir``), for extra outputs.
    run_dir: Any = None
