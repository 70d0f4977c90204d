"""Scaling out through ``accelerate launch``: the same config on several processes.

ModelForge has no launcher of its own. ``modelforge train CONFIG --launcher accelerate`` only
builds an ``accelerate launch`` command, prints it and runs it; every process it starts runs
the ordinary ``python -m modelforge_core train CONFIG``. Inside those processes this module lets
the orchestrator behave as one training:

- the process group is started early (through accelerate's ``PartialState``, which the trainer
  then reuses), so each process has its own GPU before a model is loaded;
- the main process creates the run folder and broadcasts its path, so every process writes
  into one folder, whether the config names ``output_dir`` or not;
- a graceful stop (Ctrl-C, SIGTERM) seen by any process is agreed on by all of them at the same
  optimizer step, so none waits forever on a collective the others left;
- a sharded model (FSDP, DeepSpeed ZeRO-3) is gathered before its adapter is saved;
- combinations that cannot work are refused before anything heavy starts.

Importing this module is cheap; torch and accelerate are imported inside functions.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .errors import EnvironmentProblem, ModelForgeError, RunError, UsageError

if TYPE_CHECKING:
    from .api import LoadedModel, Provider
    from .plugins import Plugins
    from .runs import RunDir
    from .training import StopFlag

#: Set to a folder: at each adapter save, every process writes ``rank<N>.sha256`` there with a
#: hash of its trainable weights (``<adapter name> <sha256>`` lines). Equal hashes prove the
#: processes ended with the same adapter; the tests use it.
RANK_HASHES_ENV = "MODELFORGE_DEBUG_RANK_HASHES"

#: Sharding modes that split the base weights across processes.
SHARDED = ("fsdp", "zero3")


# --- checks --------------------------------------------------------------------------------

def effective_batch_size(config: Mapping[str, Any], processes: int) -> int:
    """Examples per optimizer step over all processes."""
    return int(config["per_device_train_batch_size"]) * int(config["gradient_accumulation_steps"]) * processes


def describe_batch(config: Mapping[str, Any], processes: int) -> str:
    """The line the log shows at the start of a training."""
    per_device, accumulation = config["per_device_train_batch_size"], config["gradient_accumulation_steps"]
    return (f"effective batch size: {effective_batch_size(config, processes)} "
            f"({per_device} per device × {accumulation} accumulation step{'s' if accumulation != 1 else ''} "
            f"× {processes} process{'es' if processes != 1 else ''})")


def _providers(plugins: Plugins | None) -> Mapping[str, Provider]:
    from .plugins import get_plugins

    return (plugins or get_plugins()).registry.providers


def scaling_problem(config: Mapping[str, Any], *, processes: int, sharding: str | None = None,
                    plugins: Plugins | None = None) -> str | None:
    """One sentence saying why ``config`` cannot run on ``processes`` processes with
    ``sharding`` (``"fsdp"``, ``"zero3"`` or ``None``), or ``None`` when it can.

    The provider says whether it can (:attr:`Provider.multi_process`,
    :attr:`Provider.shards_quantized`); a provider not installed here is not judged.
    """
    name = str(config.get("provider", ""))
    quantized = "use_4bit" if config.get("use_4bit") else "use_8bit" if config.get("use_8bit") else None
    if processes <= 1 and not (sharding in SHARDED and quantized):
        return None
    providers = _providers(plugins)
    provider = providers.get(name)
    if provider is None:
        return None
    if processes > 1 and not provider.multi_process:
        others = sorted(other.name for other in providers.values() if other.multi_process)
        fix = "train in one process (no --launcher, or --num-processes 1)"
        if others:
            fix += f", or set provider to {' or '.join(others)}"
        reason = provider.single_process_reason or f"the {name} provider trains in a single process only"
        return f"provider {name} cannot run on {processes} processes: {reason}; {fix}"
    if sharding in SHARDED and quantized and not provider.shards_quantized:
        mode = "FSDP" if sharding == "fsdp" else "DeepSpeed ZeRO-3"
        why = ("sharding a 4-bit bitsandbytes base needs its weights stored in the compute dtype "
               f"(bnb_4bit_quant_storage), which the {name} provider does not set"
               if quantized == "use_4bit" else "8-bit bitsandbytes weights cannot be sharded")
        return (f"{quantized} cannot be combined with {mode}: {why}; use data parallel "
                f"(examples/accelerate/multi-gpu.yaml) or ZeRO-2, or set {quantized} to false")
    return None


def check_scaling(config: Mapping[str, Any], *, processes: int, sharding: str | None = None,
                  plugins: Plugins | None = None) -> None:
    """Raise :class:`EnvironmentProblem` with :func:`scaling_problem`'s sentence, if any."""
    problem = scaling_problem(config, processes=processes, sharding=sharding, plugins=plugins)
    if problem:
        raise EnvironmentProblem(problem)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def sharding_from_environment() -> str | None:
    """The sharding mode ``accelerate launch`` set up for this process, from its variables."""
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if _flag("ACCELERATE_USE_DEEPSPEED") and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return "zero3"
    return None


# --- the accelerate config file ------------------------------------------------------------

def read_accelerate_config(path: Path) -> dict[str, Any]:
    """An accelerate config file (YAML or JSON) as a dict; a clear error when unreadable."""
    import yaml

    from .safeio import MAX_CONFIG_BYTES, describe_error, read_file

    try:
        text = read_file(path, limit=MAX_CONFIG_BYTES).data.decode("utf-8")
    except (OSError, ValueError) as exc:  # a FIFO or a device is refused, never read
        reason = describe_error(exc) if isinstance(exc, OSError) or "null" in str(exc) else "not UTF-8 text"
        raise UsageError(f"cannot read the accelerate config {path}: {reason}") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"the accelerate config {path} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"the accelerate config {path} must hold a mapping (write it with `accelerate config`)")
    return data


def _zero_stage(accelerate_config: Mapping[str, Any], base_dir: Path) -> int | None:
    deepspeed = accelerate_config.get("deepspeed_config") or {}
    if deepspeed.get("zero_stage") is not None:
        return int(deepspeed["zero_stage"])
    file = deepspeed.get("deepspeed_config_file")
    if file:
        path = Path(file) if Path(file).is_absolute() or Path(file).exists() else base_dir / file
        try:
            stage = json.loads(path.read_text(encoding="utf-8")).get("zero_optimization", {}).get("stage")
        except (OSError, ValueError):
            return None
        return int(stage) if isinstance(stage, int) else None
    return None


def plan_from_accelerate_config(path: Path | None, num_processes: int | None) -> tuple[int, str | None, str]:
    """``(processes, sharding, distributed_type)`` that ``accelerate launch`` will use."""
    data = read_accelerate_config(path) if path is not None else {}
    distributed = str(data.get("distributed_type", "MULTI_GPU" if (num_processes or 1) > 1 else "NO")).upper()
    processes = num_processes if num_processes is not None else int(data.get("num_processes") or 1)
    sharding = None
    if distributed == "FSDP":
        sharding = "fsdp"
    elif distributed == "DEEPSPEED" and path is not None and _zero_stage(data, path.parent) == 3:
        sharding = "zero3"
    return processes, sharding, distributed


# --- the launcher (the parent process) -----------------------------------------------------

#: ``modelforge train`` options that belong to the launcher, not to each process.
LAUNCHER_OPTIONS = frozenset({"launcher", "num_processes", "accelerate_config"})


def forwarded_arguments(command: Any, params: Mapping[str, Any], *, drop: Collection[str]) -> list[str]:
    """Rebuild the command line of a parsed click ``command`` from its ``params``, without the
    options in ``drop``: what each launched process runs. Options added to ``modelforge
    train`` later are forwarded too."""
    import click

    positional: list[str] = []
    options: list[str] = []
    for param in command.params:
        value = params.get(param.name)
        if param.name in drop or value is None or value is False or value == ():
            continue
        if isinstance(param, click.Argument):
            positional += [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
            continue
        flag = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            options.append(flag)
        elif getattr(param, "multiple", False):
            for item in value:
                options += [flag, str(item)]
        else:
            options += [flag, str(value)]
    return positional + options


def accelerate_command(train_arguments: Sequence[str], *, num_processes: int | None,
                       accelerate_config: Path | None) -> list[str]:
    """The ``accelerate launch`` command that runs ``modelforge train`` with ``train_arguments``
    in each process, with this Python.

    Without an accelerate config: plain data parallel over ``num_processes`` processes
    (``--multi_gpu``: torchrun starts them, one GPU each, or CPU processes on the gloo backend
    where there is no GPU), and explicit defaults so accelerate does not guess.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is not None:
        command += ["--config_file", str(accelerate_config)]
        if num_processes is not None:
            command += ["--num_processes", str(num_processes)]
    else:
        processes = num_processes or 1
        if processes > 1:
            command.append("--multi_gpu")
        command += ["--num_processes", str(processes), "--num_machines", "1", "--main_process_port", "0",
                    "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*command, "-m", "modelforge_core", "train", *train_arguments]


def check_launch(config: Mapping[str, Any], *, num_processes: int | None, accelerate_config: Path | None,
                 plugins: Any) -> int:
    """Everything that can be refused before any process starts: the scaling combination,
    DeepSpeed's presence, the components' environment and the dataset. Returns the number of
    processes that will run."""
    from .data import check_dataset

    processes, sharding, distributed = plan_from_accelerate_config(accelerate_config, num_processes)
    check_scaling(config, processes=processes, sharding=sharding, plugins=plugins)
    if distributed == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise EnvironmentProblem(
            f"{accelerate_config} asks for DeepSpeed, which is not installed in this Python environment: "
            "pip install deepspeed (it needs a CUDA toolkit), or use examples/accelerate/fsdp.yaml")
    if distributed in ("FSDP", "DEEPSPEED") and not _has_accelerator():
        raise EnvironmentProblem(
            f"{accelerate_config} asks for {distributed}, which needs GPUs, and this machine has none: use "
            "data parallel instead (--num-processes N, or examples/accelerate/cpu-gloo.yaml)")
    registry = plugins.registry
    for component in (registry.tasks[config["task"]], registry.strategies[config["strategy"]],
                      registry.providers[config["provider"]]):
        message = component.check_environment()
        if message:
            raise EnvironmentProblem(message)
    check_dataset(config, plugins=plugins)
    return processes


def _has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return bool(torch.cuda.is_available())


def run_launcher(command: Sequence[str], *, env: Mapping[str, str] | None = None,
                 announce: Callable[[str], None] | None = None) -> int:
    """Run ``command`` (an ``accelerate launch`` command) and return its exit status.

    The child runs in its own session, so a Ctrl-C on the terminal reaches it once, from here:
    SIGINT and SIGTERM are passed on to its process group (accelerate passes them on to each
    training process, which saves a checkpoint and stops). A child killed by a signal gives
    128 + the signal number, as a shell would; an interrupted run gives 130.
    """
    if announce is not None:
        announce("running: " + shlex.join(command))
    received: list[int] = []
    pending: list[int] = []  # arrived before the child existed
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if not started:
            pending.append(signum)
            return
        with suppress(ProcessLookupError):
            os.killpg(started[0].pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        process = subprocess.Popen(list(command), env=dict(env) if env is not None else None,
                                   start_new_session=True)
        started.append(process)
        for signum in pending:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
        returncode = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if returncode < 0:
        return 128 - returncode
    if received and returncode != 0:
        return 128 + received[0]
    return returncode


def launch_training(config: Mapping[str, Any], train_arguments: Sequence[str], *, num_processes: int | None,
                    accelerate_config: Path | None, plugins: Any, debug: bool = False,
                    announce: Callable[[str], None] | None = None) -> int:
    """``modelforge train --launcher accelerate``: check, then hand over to ``accelerate launch``."""
    if "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("this process already runs under accelerate/torchrun: drop --launcher (each process "
                         "would start a launcher of its own)")
    if accelerate_config is not None and not accelerate_config.is_file():
        raise UsageError(f"the accelerate config {accelerate_config} does not exist")
    check_launch(config, num_processes=num_processes, accelerate_config=accelerate_config, plugins=plugins)
    command = accelerate_command(train_arguments, num_processes=num_processes, accelerate_config=accelerate_config)
    env = dict(os.environ)
    if debug:
        env["MODELFORGE_DEBUG"] = "1"
    return run_launcher(command, env=env, announce=announce)


# --- inside each training process ----------------------------------------------------------

def start_process_group() -> Any:
    """Start (or join) the process group through accelerate's ``PartialState``, before any
    model is loaded: each process then owns its GPU (``torch.cuda.current_device()``), which
    the providers use to place a quantized model. The trainer reuses the group."""
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or _flag("ACCELERATE_USE_CPU")
    return PartialState(cpu=cpu)


def share_run_dir(create: Callable[[], RunDir]) -> RunDir:
    """The main process runs ``create`` and broadcasts the folder's path; every process
    returns the same :class:`RunDir`. When the main process fails, every process raises."""
    from accelerate.utils import broadcast_object_list

    from .runs import RunDir

    state = start_process_group()
    failure: ModelForgeError | None = None
    payload: list[Any] = [None]
    if state.is_main_process:
        try:
            payload = [("ok", str(create().path))]
        except ModelForgeError as exc:
            failure = exc
            payload = [("error", str(exc))]
    broadcast_object_list(payload, from_process=0)
    if failure is not None:
        raise failure
    kind, value = payload[0]
    if kind != "ok":
        raise RunError(f"the main process could not create the run folder: {value}")
    return RunDir(Path(value))


def _collective_device() -> Any:
    import torch
    import torch.distributed as dist

    backend = str(dist.get_backend())
    return torch.device("cpu") if "gloo" in backend or not torch.cuda.is_available() else torch.device(
        "cuda", torch.cuda.current_device())


def distributed_callback(flag: StopFlag) -> Any:
    """The core's ``TrainerCallback`` for several processes; put it before the run callback.

    - Every process agrees, at each optimizer step, on whether a stop was requested (a signal
      reaches the processes at slightly different moments), so the run callback sees the same
      flag everywhere and no process waits on a collective the others left.
    - It remembers the trainer's model, which a sharded save needs.
    - It undoes a trap in accelerate 1.15 (its guard against wrapping a model twice): an
      evaluation before training (the "before" metrics) marks the model as prepared, and
      training then never wraps it in ``DistributedDataParallel``, so each process trains
      its own copy on its share of the data without exchanging gradients (docs/scaling.md).
    """
    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    plain_data_parallel = sharding_from_environment() is None and not _flag("ACCELERATE_USE_DEEPSPEED")

    class DistributedRun(TrainerCallback):  # type: ignore[misc]
        wrapped: Any = None
        training = False

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            model = kwargs.get("model")
            if not self.training and plain_data_parallel and model is not None:
                # Prepared for evaluation only: let training prepare (wrap) it for real.
                vars(model).pop("_is_accelerate_prepared", None)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.training = True
            self.wrapped = kwargs.get("model")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.wrapped = kwargs.get("model", self.wrapped)
            if not (dist.is_available() and dist.is_initialized()):
                return
            local = signal.Signals[flag.signal_name].value if flag.is_set() and flag.signal_name else 0
            agreed = torch.tensor([local], dtype=torch.int64, device=_collective_device())
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            number = int(agreed.item())
            if number and not flag.is_set():
                flag.set(signal.Signals(number).name)

    return DistributedRun()


@contextmanager
def adapter_for_save(loaded: LoadedModel, wrapped: Any = None) -> Iterator[dict[str, Any] | None]:
    """Make the whole adapter available while it is saved; a collective, so every process
    must enter it.

    Yields ``None`` when ``loaded.model`` holds whole weights (one process, DDP, ZeRO-1/2, and
    ZeRO-3 while its trainable parameters are gathered here). Under FSDP, whose processes hold
    only shards, yields the full state dict gathered the way the trainer saves one
    (``FULL_STATE_DICT``, on the CPU of the main process; empty elsewhere): save it with
    :func:`save_adapter_state`.
    """
    sharding = sharding_from_environment()
    if sharding == "fsdp" and wrapped is not None:
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        if isinstance(wrapped, FullyShardedDataParallel):
            with FullyShardedDataParallel.state_dict_type(
                    wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
                state = wrapped.state_dict()
            yield state
            return
    if sharding == "zero3":
        import deepspeed

        trainable = [p for p in loaded.model.parameters() if p.requires_grad and hasattr(p, "ds_id")]
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
            yield None
        return
    yield None


def save_adapter_state(loaded: LoadedModel, state: Mapping[str, Any], directory: Path) -> None:
    """Save the adapter found in a full ``state`` dict (peft keeps only its own weights), and the
    tokenizer, in peft's format: what the trainer does for a sharded peft model."""
    loaded.model.save_pretrained(directory, state_dict=dict(state))
    loaded.tokenizer.save_pretrained(directory)


def adapter_hash(loaded: LoadedModel) -> str:
    """SHA-256 of the trainable weights (the adapter), by name, as raw bytes."""
    import torch

    digest = hashlib.sha256()
    for name, parameter in sorted(loaded.model.named_parameters(), key=lambda item: item[0]):
        if not parameter.requires_grad:
            continue
        tensor = parameter.detach().to("cpu").contiguous().view(-1)
        digest.update(name.encode("utf-8"))
        digest.update(str(tensor.dtype).encode("ascii"))
        digest.update(tensor.view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_rank_hash(loaded: LoadedModel, name: str) -> None:
    """Honour :data:`RANK_HASHES_ENV`: append ``<name> <hash>`` to ``rank<N>.sha256``."""
    folder = os.environ.get(RANK_HASHES_ENV)
    if not folder:
        return
    rank = int(os.environ.get("RANK", "0"))
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / f"rank{rank}.sha256", "a", encoding="utf-8") as handle:
        handle.write(f"{name} {adapter_hash(loaded)}\n")
