"""The orchestrating core of ``modelforge train``: plugins from the config, data checked
before anything heavy loads, a seeded split, the run folder, the strategy, metrics, status.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import os
import platform
import random
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import __version__, earlystop
from .api import LoadedModel, LoadRequest, RunInfo, TrainingJob, task_load_fields
from .config import ResolvedConfig
from .data import Dataset, check_dataset
from .errors import Interrupted, ModelForgeError, Problem, RunError, ValidationFailed, shorten
from .hardware import library_versions
from .modelconfig import read_model_config
from .plugins import Plugins, get_plugins
from .quantization import four_bit_guard_callback, keep_4bit_trainable, quiet_kernel_notice
from .runlock import RunLock, claim_new_run, lock_run
from .runs import CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, TENSORBOARD_DIR, RunDir, now_iso
from .schema import schema_version
from .sources import MAPPING_KEYS
from .training import Display, Stages, StopFlag, catch_interruptions, make_run_callback


@dataclass
class TrainOutcome:
    run_dir: Path
    status: str
    metrics: dict[str, Any]
    #: False in the other processes of a multi-process training (they print nothing).
    main_process: bool = True




def split_rows(rows: Sequence[Mapping[str, Any]], eval_split: float, seed: int,
               file: str) -> tuple[list[int], list[int]]:
    """Seeded train/eval split of row indices; identical on every process."""
    indices = list(range(len(rows)))
    random.Random(seed).shuffle(indices)
    n_eval = round(len(rows) * eval_split)
    if eval_split > 0 and n_eval == 0 and len(rows) >= 2:
        n_eval = 1
    if n_eval >= len(rows):
        raise ValidationFailed([Problem(
            "eval_split", f"the dataset has {len(rows)} row(s): eval_split {eval_split} leaves none for training",
            code="too_small", file=file)], subject="dataset")
    return sorted(indices[n_eval:]), sorted(indices[:n_eval])


def set_offline_environment(model_name: str) -> None:
    """No telemetry ever; fully offline when the model is a local folder."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if Path(model_name).exists():
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def build_manifest(config: Mapping[str, Any], plugins: Plugins, data: Dataset, hardware: Any,
                   split: tuple[list[int], list[int]], processes: int, head: str) -> dict[str, Any]:
    components = {}
    for kind in ("task", "strategy", "provider"):
        component = plugins.registry.of_kind(kind)[config[kind]]
        owner = plugins.registry.owner_of(component)
        components[kind] = {"name": component.name, "distribution": owner.distribution, "version": owner.version}
    effective = config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] * processes
    return {
        "modelforge_core": __version__,
        "schema_version": schema_version(),
        "components": components,
        "head": head,
        "libraries": library_versions(plugins),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hardware": {"device": hardware.device, "name": hardware.name, "bf16": hardware.bf16,
                     "fp16": hardware.fp16, "cpu_count": os.cpu_count(), "processes": processes},
        "data": {"file": data.file, "fingerprint": data.fingerprint, "rows": len(data.rows),
                 "train_rows": len(split[0]), "eval_rows": len(split[1]), "shape": data.shape,
                 "formats": data.formats, "sources": data.sources, "notes": data.notes},
        "seed": config["seed"],
        "effective_batch_size": effective,
        "trust_remote_code": bool(config.get("trust_remote_code")),
        "allow_pickle_weights": bool(config.get("allow_pickle_weights")),
        "command": sys.argv,
        "created_at": now_iso(),
    }


def _process_count() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train(config: ResolvedConfig, *, plugins: Plugins | None = None, resume: Path | None = None,
          display: Display | None = None, runs_root: Path | None = None, force: bool = False) -> TrainOutcome:
    """Run a whole training from a resolved config, or resume the run in ``resume``.

    ``force``: train even when the memory plan says the config cannot fit this machine.

    The signal handlers are installed first, before anything is written: from the moment the run
    folder says ``running``, a SIGINT/SIGTERM is a graceful stop (checkpoint, ``interrupted``, exit
    130), and a second one stops at once, still with exit 130. The run folder's lock
    (:mod:`modelforge_core.runlock`) is held from before the first write to the end.
    """
    flag = StopFlag()
    held: list[RunLock] = []
    try:
        with catch_interruptions(flag):
            return _train(config, plugins=plugins, resume=resume, display=display, runs_root=runs_root,
                          force=force, flag=flag, held=held)
    except KeyboardInterrupt:
        raise Interrupted("stopped at once by a second interrupt; the run keeps its last complete "
                          "checkpoint") from None
    except OSError as exc:
        folder = held[0].path if held else None
        if folder is not None and exc.filename and _inside(Path(str(exc.filename)), folder):
            raise RunError(f"cannot write {exc.filename}: {exc.strerror or exc}; the run folder {folder} "
                           "is no longer writable (a full disk, a read-only mount?)") from exc
        raise
    finally:
        for lock in held:
            lock.release()


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def _train(config: ResolvedConfig, *, plugins: Plugins | None, resume: Path | None, display: Display | None,
           runs_root: Path | None, force: bool, flag: StopFlag, held: list[RunLock]) -> TrainOutcome:
    plugins = plugins or get_plugins()
    quiet_kernel_notice()
    main_process = _is_main_process()
    # Under accelerate/torchrun only the main process talks: progress, messages, the log.
    display = (display or Display()) if main_process else Display(enabled=False)
    from .launch import check_scaling, sharding_from_environment
    from .readiness import require_runnable

    check_scaling(config, processes=_process_count(), sharding=sharding_from_environment(), plugins=plugins)
    require_runnable(config, plugins)
    registry = plugins.registry
    task = registry.tasks[config["task"]]
    strategy = registry.strategies[config["strategy"]]
    provider = registry.providers[config["provider"]]
    data = check_dataset(config, plugins=plugins)
    split = split_rows(data.rows, config["eval_split"], config["seed"], data.file)
    earlystop.check_evaluations(config, len(split[0]), _process_count())
    set_offline_environment(config["model_name"])

    from .training import check_precision, detect_hardware

    hardware = detect_hardware()
    check_precision(config, hardware, plugins)
    if not force:
        from .plan import check_fits

        display.message(check_fits(config, hardware, plugins=plugins).headline())
    if _process_count() > 1:
        from .launch import start_process_group

        start_process_group()
    head = task.choose_head(config.data, read_model_config(config["model_name"]))
    previous_before: dict[str, float] = {}
    if flag.is_set():
        raise Interrupted(f"stopped by {flag.signal_name} before training started; nothing was written")
    previous_metrics: dict[str, Any] = {}
    if resume is not None:
        run = _open_for_resume(resume, held)
        status = run.status().get("status")
        if status == "finished":
            raise RunError(f"{resume} finished already: nothing to resume")
        checkpoint = run.last_checkpoint()
        if checkpoint is None:
            raise RunError(f"{resume} has no complete checkpoint to resume from; start a new run instead")
        if not run.file(MANIFEST_FILE).is_file():
            raise RunError(f"{resume} has no {MANIFEST_FILE}, so its data cannot be checked: start a new run instead")
        manifest = run.read_json(MANIFEST_FILE)
        recorded = manifest.get("data") if isinstance(manifest, dict) else None
        if not isinstance(recorded, dict) or not isinstance(recorded.get("fingerprint"), str):
            raise RunError(f"{run.file(MANIFEST_FILE)} is damaged (no data fingerprint): start a new run instead")
        # The fingerprint of the bytes that were just read and checked, not of a second read.
        if recorded["fingerprint"] != data.fingerprint:
            raise RunError(f"the dataset {data.file} changed since {resume} started: resuming would train "
                           "on different data; start a new run instead")
        if run.file(METRICS_FILE).is_file():
            saved = run.read_json(METRICS_FILE)
            previous_metrics = dict(saved) if isinstance(saved, dict) else {}
            before = previous_metrics.get("before")
            previous_before = dict(before) if isinstance(before, dict) else {}
        display.message(f"resuming {run.path} from {checkpoint.name}")
    else:
        checkpoint = None
        run = _create_run(config, runs_root, held)
        if main_process:
            run.write_json(CONFIG_FILE, {**config.to_json(), "schema_version": schema_version()})
            run.write_json(MANIFEST_FILE, build_manifest(config, plugins, data, hardware, split,
                                                         _process_count(), head))
    from .launch import describe_batch

    display.message(describe_batch(config, _process_count()))
    # A resumed run's sources are those of its first attempt (the CLI resolves the saved config).
    sources = dict(run.read_json(CONFIG_FILE).get("sources") or {}) if checkpoint else dict(config.sources)
    info = RunInfo(run.name, run.path, config.data, main_process, sources=sources,
                   resumed_from=checkpoint.name if checkpoint else None)
    if main_process:
        run.set_status("running", global_step=_step_of(checkpoint),
                       resumed_from=checkpoint.name if checkpoint else None)
        plugins.hooks.on_run_start(info)
    sync: list[Any] = []
    if _process_count() > 1 or sharding_from_environment():
        from .launch import distributed_callback

        sync.append(distributed_callback(flag))
    # A resumed run keeps every stage the first attempt reported (rlhf's reward model, too).
    stage_metrics: dict[str, Any] = dict(previous_metrics)
    from .trainer import LANGUAGE_MODEL_HEADS, clean_metrics

    stages = Stages(partial(clean_metrics, perplexity=head in LANGUAGE_MODEL_HEADS))
    early = (earlystop.make_callback(config, task, strategy, display.message, stage=lambda: stages.current)
             if earlystop.enabled(config) else None)

    def report(stage: str, metrics: Mapping[str, float]) -> None:
        if not main_process:
            return
        stage_metrics[stage] = dict(metrics)
        run.write_json(METRICS_FILE, stage_metrics)
        run.append_log({"stage": stage, **metrics})
        step = run_callback.last_step
        if stage == "after" and early is not None and early.outcome.best_step:
            step = early.outcome.best_step  # the trainer reloaded the best checkpoint
        plugins.hooks.on_evaluate(info, stage, metrics, step)
        display.message(f"{stage}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def load_model(head: str, **kwargs: Any) -> LoadedModel:
        # New heads and LoRA weights are drawn when the model loads: seed first, so a run
        # with the same config and seed starts from the same weights.
        from transformers import set_seed

        set_seed(config["seed"])
        fields = {**task_load_fields(task, config.data, head), **kwargs}
        request = LoadRequest(model_name=fields.pop("model_name", config["model_name"]), head=head,
                              config=config.data, **fields)
        loaded = provider.load(request)
        # Every provider's model, every strategy: no 4-bit layer in an inference-only layout.
        keep_4bit_trainable(loaded.model)
        return loaded

    def save(loaded: LoadedModel, name: str) -> Path:
        from .launch import adapter_for_save, save_adapter_state, write_rank_hash

        # Every process enters: gathering a sharded adapter is a collective.
        with adapter_for_save(loaded, sync[0].wrapped if sync else None) as state:
            write_rank_hash(loaded, name)
            if not main_process:
                return run.path / name
            if state is not None:
                return run.save_directory(name, lambda tmp: save_adapter_state(loaded, state, tmp))
            return run.save_directory(name, lambda tmp: provider.save_adapter(loaded, tmp))

    def trainer_arguments(**kwargs: Any) -> dict[str, Any]:
        from .training import trainer_arguments as build

        return build(config.data, output_dir=str(run.checkpoints), logging_dir=str(run.path / TENSORBOARD_DIR),
                     **{**earlystop.trainer_arguments(config, task, strategy), **kwargs})

    run_callback = make_run_callback(run, info, plugins.hooks, display, flag, stages)
    job = TrainingJob(
        config=config.data, task=task, provider=provider, run=info,
        train_rows=[data.rows[i] for i in split[0]], eval_rows=[data.rows[i] for i in split[1]],
        shape=data.shape, load_model=load_model, trainer_arguments=trainer_arguments,
        callbacks=[*sync, run_callback, four_bit_guard_callback(), *([early] if early is not None else [])],
        head=head,
        resume_from=checkpoint, save=save, report=report, say=display.message,
        stop_requested=flag.is_set, previous_metrics_before=previous_before, run_dir=run,
        previous_metrics=previous_metrics, stage=stages.enter,
        data_sources=[{"fingerprint": s["fingerprint"], "mapping": {k: s.get(k) for k in MAPPING_KEYS}}
                      for s in data.sources],
        rewards=registry.rewards,
    )
    display.message(f"run folder: {run.path}")
    try:
        result = strategy.train(job)
    except Interrupted as exc:
        if main_process:
            run.set_status("interrupted", error=None, note=str(exc), signal=flag.signal_name,
                           global_step=_step_of(run.last_checkpoint()))
            plugins.hooks.on_run_end(info, "interrupted", {}, None)
        raise
    except KeyboardInterrupt:
        if main_process:
            run.set_status("interrupted", note="stopped at once by a second interrupt",
                           global_step=_step_of(run.last_checkpoint()))
            plugins.hooks.on_run_end(info, "interrupted", {}, None)
        raise
    except BaseException as exc:
        if main_process:
            message = str(exc) if isinstance(exc, ModelForgeError) else f"{type(exc).__name__}: {exc}"
            try:
                (run.path / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
                run.set_status("failed", error=message, global_step=_step_of(run.last_checkpoint()))
            except OSError as write_error:  # the folder itself failed: say so, never stay "running"
                raise RunError(f"training failed ({shorten(message, 300)}) and its status cannot be written "
                               f"into {run.path}: {write_error.strerror or write_error}") from exc
            plugins.hooks.on_run_end(info, "failed", {}, message)
        raise
    metrics = {"before": result.metrics_before, "after": result.metrics_after,
               "global_step": result.global_step, **result.extra}
    stopped = early.outcome.status_fields() if early is not None else {}
    if stopped:
        metrics["best_step"] = stopped["best_step"]  # the step of the saved adapter
        metrics["early_stopping"] = stopped
    if main_process:
        run.write_json(METRICS_FILE, metrics)
        run.set_status("finished", global_step=result.global_step, finished_at=now_iso(), **stopped)
        plugins.hooks.on_run_end(info, "finished", metrics, None)
    return TrainOutcome(run.path, "finished", metrics, main_process)


def _create_run(config: Mapping[str, Any], root: Path | None, held: list[RunLock]) -> RunDir:
    def create() -> RunDir:
        run = RunDir.create(config, root=root)
        held.append(claim_new_run(run.path, given=bool(config.get("output_dir"))))
        return run

    if _process_count() > 1:
        # The main process creates and locks the folder, and broadcasts its path to the others.
        from .launch import share_run_dir

        run = share_run_dir(create)
    else:
        run = create()
    os.environ["MODELFORGE_RUN_DIR"] = str(run.path)
    return run


def _open_for_resume(resume: Path, held: list[RunLock]) -> RunDir:
    """Open the run and, in the main process, take its lock before any write (a second writer
    is refused here); under several processes the others learn the outcome by broadcast."""
    def open_and_lock() -> RunDir:
        run = RunDir.open(resume)
        held.append(lock_run(run.path))
        return run

    if _process_count() > 1:
        from .launch import share_run_dir

        return share_run_dir(open_and_lock)
    return open_and_lock()


def _step_of(checkpoint: Path | None) -> int:
    """The global step a ``checkpoint-<step>`` folder was saved at (0 for none)."""
    if checkpoint is None:
        return 0
    step = checkpoint.name.partition("-")[2]
    return int(step) if step.isdigit() else 0
