"""What this machine can train with, and the ``compute_specs`` profile that suits it.

``modelforge doctor`` prints :func:`detect_machine`; the memory plan compares against
:func:`memory_target`; ``training.check_precision`` asks :func:`precision_problems` and
:func:`apply_auto_precision`. The rules are pure functions of hardware figures
(:func:`recommend_profile`, :func:`auto_precision`, :func:`precision_problems`) so that tests
feed them figures; only the ``detect_*`` functions look at the machine.

Memory figures are in GiB (2**30 bytes), the unit torch and ``nvidia-smi`` report.

``MODELFORGE_ASSUME_MEMORY_GB`` replaces the memory of the training device (the GPU's, or
the system memory on a CPU-only machine) with the given figure, everywhere: in the doctor's
recommendation, in ``modelforge plan`` and in the check ``modelforge train`` runs first. It
lets a user ask "would this fit a 12 GB card?" and lets tests be the same on every machine.

Importing this module is cheap; torch is imported inside the functions that need it.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .errors import ModelForgeError

if TYPE_CHECKING:
    from .plugins import Plugins

GIB = 2**30

#: The variable that replaces the detected memory of the training device (in GiB).
ASSUME_MEMORY_ENV = "MODELFORGE_ASSUME_MEMORY_GB"

#: The ML libraries whose versions ``modelforge doctor`` reports and each run's manifest records,
#: besides those the installed components declare (:attr:`Component.libraries`).
LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes")

# --- the profile rule ----------------------------------------------------------------------
#
# Accelerator memory below LOW_END_BELOW_GB -> low_end, below MID_RANGE_BELOW_GB -> mid_range,
# else high_end; no GPU -> low_end. The project this replaces used the same 7.2 and 15.2.
# Why those figures and not 8 and 16: cards are sold by their nominal size, but what torch
# reports as total memory is a little less (the driver and, with ECC, the error-correcting
# bits keep some): an "8 GB" card reports 7.6-8.0 GiB and must count as mid_range, a "6 GB"
# card reports about 5.8 GiB and stays low_end; a "16 GB" card reports 15.5-16 GiB and counts
# as high_end, a "12 GB" card stays mid_range. The T4 (16 GB with ECC, reports 14.6 GiB) lands
# in mid_range, which suits it: it has no bf16 and little bandwidth. A CPU-only machine gets
# low_end whatever its memory: the smallest batch and shortest sequences are the only
# settings under which training on a CPU finishes in a reasonable time. Apple MPS shares the
# system memory: the figure compared is what macOS lets the GPU use (about 3/4 of it).
# profiles/<name>.json repeats these floors as ``hardware.min_accelerator_memory_gb``; a test
# checks that they agree.
LOW_END_BELOW_GB = 7.2
MID_RANGE_BELOW_GB = 15.2


@dataclass(frozen=True)
class Recommendation:
    """The profile for a machine and the reason, in one sentence."""

    profile: str
    reason: str


def recommend_profile(device: str, memory_gb: float | None) -> Recommendation:
    """The ``compute_specs`` profile for a training device with ``memory_gb`` GiB.

    :param device: ``"cuda"``, ``"mps"`` or ``"cpu"``.
    :param memory_gb: the accelerator's memory (ignored for ``"cpu"``); ``None`` if unknown.
    """
    if device == "cpu":
        return Recommendation("low_end", "no GPU: training runs on the CPU, where only the smallest settings "
                                         "(batch 1, short sequences, 4-bit base) finish in reasonable time")
    what = "GPU" if device == "cuda" else "Apple GPU (shared memory)"
    if memory_gb is None:
        return Recommendation("low_end", f"the {what}'s memory is unknown: starting from the smallest settings")
    if memory_gb < LOW_END_BELOW_GB:
        return Recommendation("low_end", f"{memory_gb:.1f} GiB of {what} memory is below {LOW_END_BELOW_GB} GiB")
    if memory_gb < MID_RANGE_BELOW_GB:
        return Recommendation("mid_range", f"{memory_gb:.1f} GiB of {what} memory is at least {LOW_END_BELOW_GB} "
                                           f"and below {MID_RANGE_BELOW_GB} GiB")
    return Recommendation("high_end", f"{memory_gb:.1f} GiB of {what} memory is at least {MID_RANGE_BELOW_GB} GiB")


# --- precision -----------------------------------------------------------------------------

def auto_precision(device: str, bf16_native: bool) -> str:
    """What a profile's ``"precision": "auto"`` means on a device: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    bf16 on GPUs that have it natively (NVIDIA Ampere and newer, compute capability 8.0+): the
    range of fp32, no loss scaling. fp16 on older NVIDIA GPUs, which have fast fp16 but emulate
    bf16. fp32 on the CPU (fp16 mixed precision needs a GPU, and bf16 is slow on most CPUs) and
    on Apple MPS (mixed precision there depends on the macOS and torch versions).
    """
    if device == "cuda":
        return "bf16" if bf16_native else "fp16"
    return "fp32"


def config_precision(config: Mapping[str, Any]) -> str:
    """The precision a config asks for: ``"bf16"``, ``"fp16"`` or ``"fp32"`` (neither set)."""
    if config.get("bf16"):
        return "bf16"
    if config.get("fp16"):
        return "fp16"
    return "fp32"


def precision_is_automatic(config: Mapping[str, Any]) -> bool:
    """True when neither fp16 nor bf16 came from the user and the config's profile says ``auto``.

    Uses the value sources of a :class:`~modelforge_core.config.ResolvedConfig`; a plain mapping
    (or a resumed run, whose sources are ``"run"``) is taken as the user's own choice.
    """
    sources = getattr(config, "sources", None)
    if not isinstance(sources, Mapping):
        return False
    if any(sources.get(key, "default") != "default" for key in ("fp16", "bf16")):
        return False
    from .profiles import PROFILE_NAMES, profile_precision

    name = config.get("compute_specs")
    return name in PROFILE_NAMES and profile_precision(str(name)) == "auto"


def apply_auto_precision(config: Any, device: str, bf16_native: bool) -> str | None:
    """Set fp16/bf16 on a resolved config whose profile leaves precision to the hardware.

    Changes ``config.data`` and ``config.sources`` in place (the source becomes the profile's,
    so the run's saved config says where the value came from); with bf16 on a 4-bit base whose
    compute dtype the user did not choose, the compute dtype becomes bfloat16 too. Returns the
    precision chosen, or ``None`` when the user chose (nothing is changed then).
    """
    if not precision_is_automatic(config):
        return None
    chosen = auto_precision(device, bf16_native)
    source = f"profile:{config['compute_specs']}"
    data, sources = config.data, config.sources
    data["bf16"], data["fp16"] = chosen == "bf16", chosen == "fp16"
    if chosen != "fp32":
        sources["bf16"] = sources["fp16"] = source
    if (chosen == "bf16" and data.get("use_4bit")
            and sources.get("bnb_4bit_compute_dtype", "default") == "default"):
        data["bnb_4bit_compute_dtype"] = "bfloat16"
        sources["bnb_4bit_compute_dtype"] = source
    return chosen


# --- checks against the hardware -----------------------------------------------------------

@dataclass(frozen=True)
class BitsAndBytesStatus:
    """Whether bitsandbytes is installed and its 4-bit kernels run on a device."""

    installed: bool
    version: str | None
    device: str
    runs: bool
    reason: str


#: Training devices in words, for messages.
DEVICE_WORDS = {"cuda": "a CUDA GPU", "mps": "Apple MPS", "xpu": "an Intel XPU", "cpu": "the CPU"}


def precision_problems(config: Mapping[str, Any], *, device: str, device_name: str, fp16: bool,
                       bf16: bool, bitsandbytes: BitsAndBytesStatus | None = None,
                       plugins: Plugins | None = None) -> list[str]:
    """Why this hardware cannot run the config's precision, quantization or provider.

    One sentence each, with what to do. ``fp16``/``bf16``: whether the device trains with that
    precision (bf16: natively, on a GPU). ``bitsandbytes`` is needed only when the config
    quantizes (``use_4bit``/``use_8bit``). The config's strategy and provider are asked what
    they need (:attr:`Strategy.needs_4bit`, :attr:`Provider.devices`) from ``plugins``
    (default: the installed ones).
    """
    from .plugins import get_plugins

    registry = (plugins or get_plugins()).registry
    strategy = registry.strategies.get(str(config.get("strategy")))
    provider = registry.providers.get(str(config.get("provider")))
    problems = []
    if config.get("fp16") and not fp16:
        problems.append(f"fp16 mixed precision needs a GPU, and this machine trains on the {device_name}: "
                        "set fp16 to false (or bf16 to true, which the CPU supports)")
    if config.get("bf16") and not bf16:
        problems.append(f"bf16 is not supported by {device_name} (it needs an NVIDIA Ampere or newer GPU, "
                        "compute capability 8.0): set bf16 to false and fp16 to true")
    if (config.get("use_4bit") or config.get("use_8bit")) and bitsandbytes is not None and not bitsandbytes.runs:
        bits = "use_4bit" if config.get("use_4bit") else "use_8bit"
        fix = f"set {bits} to false"
        if strategy is not None and strategy.needs_4bit:
            others = sorted(other.name for other in registry.strategies.values()
                            if not other.needs_4bit and other.data_shape == strategy.data_shape)
            fix = (f"set strategy to {' or '.join(others) or 'one that trains a 16-bit base'} and use_4bit to false "
                   f"({strategy.name} needs 4-bit)")
        problems.append(f"{bits} needs bitsandbytes, which cannot run on the {device_name} here "
                        f"({bitsandbytes.reason}): {fix}, or install a bitsandbytes build for this device")
    if provider is not None and provider.devices is not None and device not in provider.devices:
        others = sorted(other.name for other in registry.providers.values()
                        if other.devices is None or device in other.devices)
        where = provider.devices_description or ", ".join(sorted(provider.devices))
        fix = f": set provider to {' or '.join(others)}" if others else ""
        problems.append(f"the {provider.name} provider cannot train on {DEVICE_WORDS.get(device, device)} "
                        f"(it runs on {where}){fix}")
    return problems


def bf16_from_capability(major: int) -> bool:
    """The one bf16 rule for CUDA: native from compute capability 8.0 (Ampere) on.

    ``torch.cuda.is_bf16_supported()`` also says yes for GPUs that emulate bf16 slowly.
    """
    return major >= 8


def cuda_bf16_native(index: int = 0) -> bool:
    """True when CUDA device ``index`` computes bf16 natively (:func:`bf16_from_capability`)."""
    import torch

    major, _minor = torch.cuda.get_device_capability(index)
    return bf16_from_capability(major)


@cache
def bitsandbytes_status(device: str) -> BitsAndBytesStatus:
    """Probe bitsandbytes by quantizing 64 numbers to 4 bits on ``device`` (cheap, definitive)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return BitsAndBytesStatus(False, None, device, False, "bitsandbytes is not installed")
    version = _version("bitsandbytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a probe: its warnings are not the user's business
            import torch
            from bitsandbytes.functional import quantize_4bit

            quantize_4bit(torch.ones(64, dtype=torch.float32, device=device).to(torch.float16))
    except Exception as exc:  # any failure means: it cannot run here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return BitsAndBytesStatus(True, version, device, False, f"{type(exc).__name__}: {first}"[:200])
    return BitsAndBytesStatus(True, version, device, True, f"4-bit quantization runs on {device}")


# --- detection -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Accelerator:
    """One GPU: its kind (``cuda`` or ``mps``), name, memory and what precisions it has."""

    kind: str
    index: int
    name: str
    memory_gb: float | None
    bf16: bool
    fp16: bool
    compute_capability: str | None = None


@dataclass(frozen=True)
class MemoryTarget:
    """The device a training will run on and the memory the plan compares with."""

    device: str
    name: str
    memory_gb: float | None
    source: str
    bf16: bool
    fp16: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Machine:
    """What ``modelforge doctor`` reports."""

    accelerators: tuple[Accelerator, ...]
    system_memory_gb: float | None
    available_memory_gb: float | None
    cpu_count: int
    target: MemoryTarget
    bitsandbytes: BitsAndBytesStatus
    versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def recommendation(self) -> Recommendation:
        return recommend_profile(self.target.device, self.target.memory_gb)

    def to_json(self) -> dict[str, Any]:
        rec = self.recommendation
        return {
            "accelerators": [asdict(a) for a in self.accelerators],
            "device": self.target.to_json(),
            "cpu": {"count": self.cpu_count},
            "memory": {"total_gb": self.system_memory_gb, "available_gb": self.available_memory_gb},
            "bitsandbytes": asdict(self.bitsandbytes),
            "versions": self.versions,
            "precision": auto_precision(self.target.device, self.target.bf16),
            "assumed_memory_gb": assumed_memory_gb(),
            "recommendation": {
                "compute_specs": rec.profile, "reason": rec.reason,
                "thresholds_gb": {"low_end_below": LOW_END_BELOW_GB, "mid_range_below": MID_RANGE_BELOW_GB},
            },
        }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def library_versions(plugins: Plugins | None = None) -> dict[str, str | None]:
    """Installed versions (``None``: absent) of :data:`LIBRARIES` and of the libraries the
    installed components declare (``plugins``, default: the installed ones)."""
    from .runs import package_versions

    names = list(LIBRARIES)
    try:
        from .plugins import get_plugins

        registry = (plugins or get_plugins()).registry
        for kind in ("provider", "strategy", "task"):
            for component in registry.of_kind(kind).values():
                names += [name for name in component.libraries if name not in names]
    except ModelForgeError:  # versions are a report: plugins that cannot load add none
        pass
    return package_versions(names)


def system_memory() -> tuple[float | None, float | None]:
    """Total and available system memory in GiB, from /proc/meminfo or ``os.sysconf``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            fields = {line.split(":")[0]: line.split(":")[1].split() for line in handle if ":" in line}
        total = int(fields["MemTotal"][0]) * 1024 / GIB
        available = int(fields["MemAvailable"][0]) * 1024 / GIB if "MemAvailable" in fields else None
        return total, available
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        total = pages * size / GIB
    except (AttributeError, ValueError, OSError):
        return None, None
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * size / GIB
    except (AttributeError, ValueError, OSError):
        available = None
    return total, available


def assumed_memory_gb() -> float | None:
    """The figure in ``MODELFORGE_ASSUME_MEMORY_GB``, or ``None`` when unset."""
    text = os.environ.get(ASSUME_MEMORY_ENV, "").strip()
    if not text:
        return None
    from .errors import UsageError

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"{ASSUME_MEMORY_ENV}={text!r}: give the memory in GiB as a positive number, e.g. 12")
    return value


def detect_accelerators() -> tuple[Accelerator, ...]:
    """The CUDA GPUs (through torch), or Apple's MPS device; empty on a CPU-only machine."""
    import torch

    found = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append(Accelerator(
                "cuda", index, props.name, round(props.total_memory / GIB, 2),
                bf16=bf16_from_capability(props.major), fp16=True, compute_capability=f"{props.major}.{props.minor}"))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        memory = None
        if hasattr(torch, "mps") and hasattr(torch.mps, "recommended_max_memory"):
            memory = round(torch.mps.recommended_max_memory() / GIB, 2)
        else:
            total, _ = system_memory()
            memory = round(total * 0.75, 2) if total else None
        found.append(Accelerator("mps", 0, "Apple MPS", memory, bf16=True, fp16=True))
    return tuple(found)


def memory_target(device: str | None = None, name: str | None = None,
                  accelerators: tuple[Accelerator, ...] | None = None) -> MemoryTarget:
    """The training device and its memory: the first GPU's, or the system memory on a CPU.

    ``device``/``name`` come from ``training.detect_hardware()`` when the caller has it; else
    the accelerators are detected. ``MODELFORGE_ASSUME_MEMORY_GB`` replaces the memory figure.
    """
    if accelerators is None:
        accelerators = detect_accelerators() if device != "cpu" else ()
    first = next((a for a in accelerators if device in (None, a.kind)), None)
    if first is not None:
        target = MemoryTarget(first.kind, name or first.name, first.memory_gb,
                              f"{first.kind}:{first.index} memory", first.bf16, first.fp16)
    else:
        total, _available = system_memory()
        target = MemoryTarget("cpu", name or "CPU", round(total, 2) if total else None, "system memory",
                              bf16=True, fp16=False)
    assumed = assumed_memory_gb()
    if assumed is not None:
        target = MemoryTarget(target.device, target.name, assumed, ASSUME_MEMORY_ENV, target.bf16,
                              target.fp16)
    return target


def detect_machine() -> Machine:
    """Everything ``modelforge doctor`` reports (imports torch; works without a GPU)."""
    accelerators = detect_accelerators()
    target = memory_target(accelerators=accelerators)
    total, available = system_memory()
    return Machine(
        accelerators=accelerators,
        system_memory_gb=round(total, 2) if total else None,
        available_memory_gb=round(available, 2) if available else None,
        cpu_count=os.cpu_count() or 1,
        target=target,
        bitsandbytes=bitsandbytes_status(target.device),
        versions=library_versions(),
    )
