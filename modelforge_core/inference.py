"""Loading a finished run for inference: base model + adapter through the run's provider,
with the run's own config, so prompts are formatted exactly as in training.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import LoadedModel, LoadRequest, Provider, Task
from .errors import RunError
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
    except (FileNotFoundError, KeyError):
        from .orchestrate import read_model_config

        return task.choose_head(config, read_model_config(config["model_name"]))


def load_trained(run_dir: Path, *, plugins: Plugins | None = None, adapter: str = ADAPTER_DIR,
                 with_adapter: bool = True) -> TrainedRun:
    """Load the run's base model with its trained adapter (or without, to compare)."""
    from .orchestrate import set_offline_environment
    from .training import quiet_libraries

    plugins = plugins or get_plugins()
    run = RunDir.open(run_dir)
    config = run.config()
    adapter_path = run.path / adapter
    if with_adapter and not (adapter_path / "adapter_config.json").is_file():
        status = run.status().get("status")
        raise RunError(f"{run.path} has no trained adapter (status: {status}); "
                       "finish or resume the training first")
    task = plugins.registry.tasks[config["task"]]
    provider = plugins.registry.providers[config["provider"]]
    head = run_head(run, task, config)
    set_offline_environment(config["model_name"])
    quiet_libraries()
    loaded = provider.load(LoadRequest(
        model_name=config["model_name"], head=head, config=config, new_adapter=False,
        adapter_path=adapter_path if with_adapter else None, for_training=False))
    return TrainedRun(run, config, task, provider, head, loaded)
