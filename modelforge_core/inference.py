"""Loading a finished run for inference: base model + adapter through the run's provider,
with the run's own config, so prompts are formatted exactly as in training.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import LoadedModel, LoadRequest, Provider, Task, task_load_fields
from .errors import ModelForgeError, RunError
from .plugins import Plugins, get_plugins
from .runs import ADAPTER_DIR, MANIFEST_FILE, RunDir


@dataclass
class TrainedRun:
    run: RunDir
    config: dict[str, Any]
    task: Task
    provider: Provider
    head: str
    loaded: LoadedModel

    def predict(self, inputs: dict[str, Any], **generation: Any) -> str:
        return self.task.predict(self.loaded, inputs, config=self.config, **generation)


def run_head(run: RunDir, task: Task, config: dict[str, Any]) -> str:
    try:
        return str(run.read_json(MANIFEST_FILE)["head"])
    except (FileNotFoundError, KeyError, TypeError, RunError):
        from .modelconfig import read_model_config

        return task.choose_head(config, read_model_config(config["model_name"]))


def load_run_model(run: RunDir, provider: Provider, request: LoadRequest) -> LoadedModel:
    """``provider.load(request)`` for a finished run, with its adapter checked first: a damaged
    adapter or base model (truncated, empty, malformed files) is one sentence, not a traceback."""
    if request.adapter_path is not None:
        problem = run.adapter_problem(Path(request.adapter_path).name)
        if problem:
            raise RunError(problem)
    try:
        return provider.load(request)
    except ModelForgeError:
        raise
    except Exception as exc:  # the libraries' errors for damaged files are of every type
        from .errors import shorten

        what = f"{run.path}'s base model {request.model_name} with its adapter" if request.adapter_path \
            else f"{run.path}'s base model {request.model_name}"
        raise RunError(f"cannot load {what}: {type(exc).__name__}: {shorten(str(exc), 300)} "
                       "(a damaged or incomplete file?)") from exc


def run_components(run: RunDir, config: dict[str, Any], plugins: Plugins) -> tuple[Task, Provider]:
    """The task and provider a run was trained with; a clear error when one is not installed."""
    from .schema import canonical_schema

    provider = config.get("provider") or canonical_schema()["properties"]["provider"]["default"]
    try:
        return plugins.registry.tasks[config["task"]], plugins.registry.providers[provider]
    except KeyError as exc:
        raise RunError(f"{run.path} was trained with {exc.args[0]!r}, which is not installed here") from None


def load_trained(run_dir: Path, *, plugins: Plugins | None = None, adapter: str = ADAPTER_DIR,
                 with_adapter: bool = True) -> TrainedRun:
    """Load the run's base model with its trained adapter (or without, to compare)."""
    from .orchestrate import set_offline_environment
    from .quantization import keep_4bit_trainable
    from .training import quiet_libraries

    plugins = plugins or get_plugins()
    run = RunDir.open(run_dir)
    config = run.config()
    adapter_path = run.path / adapter
    if with_adapter:
        problem = run.adapter_problem(adapter)
        if problem:
            raise RunError(problem)
    task, provider = run_components(run, config, plugins)
    head = run_head(run, task, config)
    set_offline_environment(config["model_name"])
    quiet_libraries()
    loaded = load_run_model(run, provider, LoadRequest(
        model_name=config["model_name"], head=head, config=config, new_adapter=False,
        adapter_path=adapter_path if with_adapter else None, for_training=False,
        **task_load_fields(task, config, head)))
    # Same 4-bit layout as during training: the metrics compare across CPUs and with the run's.
    keep_4bit_trainable(loaded.model)
    return TrainedRun(run, config, task, provider, head, loaded)
