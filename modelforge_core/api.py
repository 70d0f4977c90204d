"""The public API for plugin authors: the component kinds and what they exchange.

A plugin subclasses :class:`Provider`, :class:`Strategy`, :class:`Task` or :class:`Reward`,
fills in the class attributes that describe it (its name, capabilities and options) and
implements the methods. The class attributes are read when a config is validated, so everything at class level must be
cheap; the methods run during training and may import torch, transformers, peft or trl inside.

Public API (docs/plugins.md, "The public API"): within a minor release series, attributes,
methods, fields and parameters are only added, with defaults, never renamed or removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import Problem
from .rowformats import ALPACA as ALPACA  # noqa: PLC0414  (public: tasks declare formats with these)
from .rowformats import MESSAGES as MESSAGES  # noqa: PLC0414
from .rowformats import SHAREGPT as SHAREGPT  # noqa: PLC0414
from .rowformats import RowFormat as RowFormat  # noqa: PLC0414
from .rowformats import native as native  # noqa: PLC0414

#: Where a strategy's options point a list of rewards (``"rewards": {"$ref": REWARDS_REF}``): the
#: core builds that list's schema from the installed rewards (``register_rewards``).
REWARDS_REF = "#/$defs/rewards"

#: Model heads a provider can load and a task can ask for.
HEADS = ("causal-lm", "seq2seq-lm", "question-answering", "sequence-classification")

#: Dataset shapes: ``supervised`` rows have a prompt and a target; ``preference`` rows
#: have a prompt, a chosen and a rejected answer; ``prompt`` rows have a prompt and whatever
#: fields reward functions read (a reference answer, test cases), for online RL such as grpo.
DATA_SHAPES = ("supervised", "preference", "prompt")


class Component:
    """What every provider, strategy and task has."""

    #: ``"provider"``, ``"strategy"``, ``"task"`` or ``"reward"``; set by the base classes below.
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
    #: One sentence ``modelforge plan`` adds to its notes when a config uses the component
    #: (how the component's real memory use differs from the estimate). ``None``: nothing.
    memory_note: ClassVar[str | None] = None
    #: Python distributions the component runs on beyond the core's ML libraries; their
    #: versions go into each run's manifest and ``modelforge doctor``'s report.
    libraries: ClassVar[tuple[str, ...]] = ()
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
    #: Whether it trains on several processes under ``accelerate launch``; when it cannot,
    #: :attr:`single_process_reason` says why (the launcher and the orchestrator refuse).
    multi_process: ClassVar[bool] = True
    single_process_reason: ClassVar[str] = ""
    #: The training devices it runs on (``"cuda"``, ``"mps"``, ``"cpu"``, ...); ``None``: all.
    #: A config that would train on another device is refused with :attr:`devices_description`.
    devices: ClassVar[frozenset[str] | None] = None
    #: Where it runs, in words, for that refusal ("NVIDIA and AMD GPUs and the CPU").
    devices_description: ClassVar[str] = ""
    #: True when it prepares a 4-bit/8-bit base as peft's ``prepare_model_for_kbit_training``
    #: does (every unquantized parameter in fp32, hence fp32 activations); the memory plan uses it.
    kbit_upcasts_to_fp32: ClassVar[bool] = True
    #: True when a 4-bit/8-bit base it loads can be sharded by FSDP or DeepSpeed ZeRO-3.
    shards_quantized: ClassVar[bool] = False

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
            "multi_process": self.multi_process,
            "devices": None if self.devices is None else sorted(self.devices),
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
    #: What ``modelforge generate`` reads for :meth:`predict`: option name -> key of the input
    #: row. ``--prompt``, ``--system``, ``--document``, ``--context`` and ``--question`` are
    #: flags of their own; any other name is given as ``--input NAME=TEXT``.
    generate_inputs: ClassVar[Mapping[str, str]] = {"prompt": "input"}
    #: The options of :attr:`generate_inputs` that cannot be left out; ``None``: all of them.
    required_inputs: ClassVar[tuple[str, ...] | None] = None
    #: True when the task answers with a span of its input instead of generated text
    #: (generation options such as ``--temperature`` mean nothing to it).
    span_answer: ClassVar[bool] = False
    #: True when :meth:`predict` takes a conversation (``{"messages": [...]}``): ``modelforge
    #: chat`` accepts the task's runs.
    conversational: ClassVar[bool] = False
    #: The tokens per example the task uses when ``max_seq_length`` is null (fixed windows,
    #: for example); ``None``: the longest example. The memory plan uses it.
    default_sequence_length: ClassVar[int | None] = None
    #: Names of the labels of a classification head, in label-id order. The core loads the
    #: ``sequence-classification`` head with ``len(labels)`` outputs and ``id2label`` from
    #: them (see :meth:`label_names` for labels that depend on the config). ``()``: no labels.
    labels: ClassVar[tuple[str, ...]] = ()
    #: Modules outside the LoRA targets that training must update and the adapter must save
    #: (peft's ``modules_to_save``), for example a freshly initialised ``"pooler"``. A head's
    #: own classifier is saved by peft already.
    modules_to_save: ClassVar[tuple[str, ...]] = ()
    #: A few valid rows per data shape (``{"supervised": [{...}, ...]}``): the test kit's
    #: ``sample_dataset`` fixture writes them for the task. ``{}``: none.
    sample_rows: ClassVar[Mapping[str, Sequence[Mapping[str, Any]]]] = {}
    #: The row formats it reads, recognised by their keys (see :mod:`modelforge_core.rowformats`):
    #: its own and common outside ones (``ALPACA``, ``SHAREGPT``, ``MESSAGES``). A row key no
    #: format uses is an error, and so is a row two formats match. Empty: no key check, rows go
    #: to :meth:`row_shape` as they are.
    formats: ClassVar[Sequence[RowFormat]] = ()

    def row_shape(self, row: Mapping[str, Any]) -> str | None:
        """Which data shape ``row`` has, or ``None`` when it has none the task knows.

        Must not import heavy libraries: ``modelforge validate --data`` calls it.
        """
        raise NotImplementedError

    def check_row(self, row: Mapping[str, Any], shape: str, config: Mapping[str, Any]) -> list[Problem]:
        """Every problem with one row of shape ``shape``; ``path`` is the field name.

        ``config`` is the resolved config (the task's options under its name), so a row can be
        checked against them (a label the task does not know). An implementation written for
        the older ``check_row(row, shape)`` keeps working: the core passes ``config`` only to
        a method that takes a third parameter (see :func:`call_check_row`).

        Must not import heavy libraries. The core adds file and line.
        """
        raise NotImplementedError

    def label_names(self, config: Mapping[str, Any]) -> list[str]:
        """The labels of the classification head for ``config``, in label-id order.

        The default returns :attr:`labels`; override it when the labels come from the task's
        options. The core fills :attr:`LoadRequest.num_labels` and
        :attr:`LoadRequest.label_names` from it.
        """
        return list(self.labels)

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
                "data_shapes": sorted(self.data_shapes),
                "generate_inputs": dict(self.generate_inputs), "span_answer": self.span_answer,
                "labels": list(self.labels)}


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
    #: Sequences one example costs in a training step (2 for a preference pair that runs
    #: the chosen and the rejected answer together); the memory plan multiplies by it.
    sequences_per_example: ClassVar[int] = 1
    #: True when its trainer computes a causal LM's loss in tiles (a fused LM head, as TRL's
    #: ``SFTTrainer`` and ``DPOTrainer`` do), so the full logits are never held at once.
    fused_loss: ClassVar[bool] = False
    #: True when it trains only on a 4-bit base (the schema's rules set ``use_4bit``); the
    #: profiles keep 4-bit for it and the hardware check says so when 4-bit cannot run.
    needs_4bit: ClassVar[bool] = False

    def train(self, job: TrainingJob) -> TrainResult:
        """Train, evaluate before and after, save the adapter(s) into ``job.run``."""
        raise NotImplementedError

    def capabilities(self) -> dict[str, Any]:
        return {
            **super().capabilities(),
            "data_shape": self.data_shape,
            "tasks": None if self.tasks is None else sorted(self.tasks),
            "recommended_learning_rate": self.recommended_learning_rate,
            "sequences_per_example": self.sequences_per_example,
            "fused_loss": self.fused_loss,
        }


class Reward(Component):
    """A reward function for online RL strategies (grpo): scores completions, one float each.

    A config names it in a strategy's reward list (``"grpo": {"rewards": [{"name": "regex",
    "weight": 1.0, "options": {...}}]}``); :attr:`options_schema` describes those ``options``
    (validated with the config, errors at ``grpo.rewards[0].options.<field>``). A reward must be
    deterministic: the same completions, rows and options always give the same scores.
    """

    kind: ClassVar[str] = "reward"
    #: Row fields the reward reads besides the prompt, with the default options (for
    #: ``modelforge plugins``); :meth:`fields` gives them for given options.
    row_fields: ClassVar[tuple[str, ...]] = ()
    #: The lowest and highest score it gives, when bounded (documentation, ``modelforge plugins``).
    score_range: ClassVar[tuple[float, float] | None] = None

    def fields(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The row fields the reward reads with ``options`` (a reference answer's field, ...).

        A strategy refuses rows that lack one before training starts.
        """
        return self.row_fields

    def score(self, prompts: Sequence[Any], completions: Sequence[str], *,
              fields: Mapping[str, Sequence[Any]], options: Mapping[str, Any]) -> list[float]:
        """One float per completion, in order.

        :param prompts: the prompt of each completion's row (a string, or a list of
            ``{"role", "content"}`` messages), repeated for each completion of a prompt.
        :param completions: the generated texts (the assistant's answer, without the prompt).
        :param fields: each field of :meth:`fields`, one value per completion (its row's).
        :param options: the reward's options, defaults filled in.

        Runs in the training loop: keep it fast and free of heavy imports where possible.
        """
        raise NotImplementedError

    def capabilities(self) -> dict[str, Any]:
        return {**super().capabilities(), "fields": list(self.row_fields),
                "score_range": None if self.score_range is None else list(self.score_range)}


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
    #: For ``sequence-classification``: the number of labels (1 for a reward model). The core
    #: fills it from :meth:`Task.label_names` when the task declares labels.
    num_labels: int | None = None
    #: The label names, in label-id order (``id2label`` of the model config), or ``None``.
    label_names: Sequence[str] | None = None
    #: Modules that training updates and the adapter saves besides LoRA (peft's
    #: ``modules_to_save``), from :attr:`Task.modules_to_save`.
    modules_to_save: Sequence[str] = ()
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
    #: When resuming: every stage's metrics the first attempt reported (``before``, and a
    #: multi-stage strategy's own stages such as rlhf's ``reward_model_after``); empty for a
    #: new run. A strategy reads earlier results here, never from the run folder.
    previous_metrics: dict[str, Any] = field(default_factory=dict)
    #: ``with job.stage("before"): trainer.evaluate()``: the trainer's evaluations inside the
    #: block belong to that stage, which the strategy reports itself; the core's callbacks then
    #: neither report them as ``during`` nor show them as training progress. With ``clean``
    #: (``"during"`` only), the core reports in-training evaluations through that function.
    #: The trainer kit (:mod:`modelforge_core.trainer`) does this for you.
    stage: Callable[..., AbstractContextManager[None]] = lambda name, clean=None: nullcontext()
    #: The core's run folder object (``modelforge_core.runs.RunDir``), for extra outputs.
    run_dir: Any = None
    #: Each data source's fingerprint and mapping (format, columns, split, ...), for the data cache key.
    data_sources: list[dict[str, Any]] = field(default_factory=list)
    #: The installed reward functions by name (for strategies that take a reward list; see
    #: ``modelforge_core.trainer.reward_functions``).
    rewards: Mapping[str, Reward] = field(default_factory=dict)


# --- data sources (the register_data_sources hook) -------------------------------------------

@dataclass
class SourceSpec:
    """One source of a config's ``dataset``, with the defaults filled in."""

    path: str
    source: str | None = None
    split: str | None = None
    subset: str | None = None
    revision: str | None = None
    format: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    ignore_columns: list[str] = field(default_factory=list)
    weight: float | None = None
    fraction: float | None = None
    #: The whole source object, for a plugin source's own options (under its name).
    raw: dict[str, Any] = field(default_factory=dict)

    def options(self, name: str) -> dict[str, Any]:
        value = self.raw.get(name)
        return dict(value) if isinstance(value, Mapping) else {}

    def mapping(self) -> dict[str, Any]:
        """What decides how rows are read and mapped (for the data cache and the manifest)."""
        return {"format": self.format, "columns": self.columns, "ignore_columns": self.ignore_columns,
                "split": self.split, "subset": self.subset, "revision": self.revision,
                "weight": self.weight, "fraction": self.fraction}


@dataclass
class SourceRows:
    """What a source read: its rows with where each came from, and how to name it.

    :param name: the source in messages (a path, ``hf://owner/name@commit:split``).
    :param rows: ``(where, row)`` pairs; ``where`` is a 1-based line (``unit == "line"``) or a
        0-based row index (``unit == "row"``).
    :param files: for sources of several files, the file each row came from (else empty).
    :param fingerprint: ``sha256:...`` over exactly the content that was read.
    :param info: facts for the manifest (kind, revision, files).
    :param notes: what the user should know (a location read as one of two things).
    :param problems: why the source could not be read (rows may then be empty).
    """

    name: str
    rows: list[tuple[int, Any]]
    unit: str = "line"
    files: list[str] = field(default_factory=list)
    fingerprint: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class DataSource(Component):
    """A kind of place rows come from (local files, the hub, a database table, ...).

    Register an instance with the ``register_data_sources`` hook. A config selects it by
    location (:meth:`claims`) or explicitly with ``"source": "<name>"`` in a dataset object;
    its :attr:`options_schema` describes an object users write under its name in that dataset
    object (``{"path": "warehouse://sales", "warehouse": {"table": "q3"}}``).
    """

    kind: ClassVar[str] = "source"

    def claims(self, location: str) -> bool:
        """True when this source reads ``location`` (``s3://...`` for an S3 source). Called for
        every dataset location, so it must be cheap and touch nothing remote."""
        return False

    def read(self, spec: SourceSpec) -> SourceRows:
        """Read every row of ``spec``. Unreadable input goes into ``SourceRows.problems``;
        bad rows are the core's to check. May import heavy libraries."""
        raise NotImplementedError


def required_text(row: Mapping[str, Any], keys: Sequence[str], *, allow_empty: Sequence[str] = ()) -> list[Problem]:
    """For :meth:`Task.check_row`: a problem for each of ``keys`` that is missing, not a string
    or empty (blank), except that the ``allow_empty`` ones may be empty."""
    problems = []
    for key in keys:
        if key not in row:
            problems.append(Problem(key, "missing field", code="missing_field"))
        elif not isinstance(row[key], str):
            problems.append(Problem(key, f"expected a string, got {type(row[key]).__name__}", code="type"))
        elif key not in allow_empty and not row[key].strip():
            problems.append(Problem(key, "must not be empty", code="empty"))
    return problems


def task_load_fields(task: Task, config: Mapping[str, Any], head: str) -> dict[str, Any]:
    """The :class:`LoadRequest` fields the task decides for ``head``: ``num_labels`` and
    ``label_names`` of a ``sequence-classification`` head (:meth:`Task.label_names`) and
    ``modules_to_save`` (:attr:`Task.modules_to_save`). The core passes them on every load of
    a run (training, reload, evaluation, export), so each builds the same model."""
    fields: dict[str, Any] = {}
    if head == "sequence-classification":
        labels = task.label_names(config)
        if labels:
            fields.update(num_labels=len(labels), label_names=list(labels))
    if task.modules_to_save:
        fields["modules_to_save"] = list(task.modules_to_save)
    return fields


def call_check_row(task: Task, row: Mapping[str, Any], shape: str, config: Mapping[str, Any]) -> list[Problem]:
    """``task.check_row(row, shape, config)``, or ``task.check_row(row, shape)`` for a task
    written before ``config`` was passed (a method with two parameters and no ``*args``)."""
    import inspect

    try:
        parameters = inspect.signature(task.check_row).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume the current one
        return task.check_row(row, shape, config)
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    positional = [p for p in parameters
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if variadic or len(positional) >= 3:
        return task.check_row(row, shape, config)
    return task.check_row(row, shape)  # type: ignore[call-arg]
