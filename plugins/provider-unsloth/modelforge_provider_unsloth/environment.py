"""Can unsloth run in this Python environment? Answered from package metadata alone.

``modelforge validate`` asks this for every config that selects the unsloth provider, so it
must answer in milliseconds: importing unsloth takes half a minute and patches transformers and
TRL for the whole process. The checks cover the ways an environment is known to break unsloth:
the package missing, a library outside the versions unsloth declares (it caps transformers, trl
and datasets below the CPU set of ``.venv/``), and a CUDA build of torchvision beside a CPU torch,
whose compiled operators fail to load, which makes ``import unsloth`` fail. Anything else that
stops the import is reported by :func:`import_unsloth` when the model is about to load.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata
from types import ModuleType

from modelforge_core.errors import EnvironmentProblem

#: What to do about an environment that cannot run unsloth, appended to every message.
REMEDY = "run `make unsloth-env` and use .venv-unsloth/bin/modelforge, or set provider to huggingface"

#: The libraries whose versions decide whether unsloth's patches apply; the others it
#: requires do not change how training runs.
CHECKED_LIBRARIES = ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "bitsandbytes")

#: unsloth's own distributions, whose declared requirements are checked.
UNSLOTH_DISTRIBUTIONS = ("unsloth", "unsloth_zoo")

#: A broken import, remembered so that a second attempt in the same process does not repeat it.
_import_failure: list[str] = []


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _local_label(version: str) -> str:
    """The part after ``+`` (``cpu`` in ``2.13.0+cpu``), or ``""``."""
    return version.partition("+")[2]


def version_conflicts() -> list[str]:
    """Each checked library whose installed version is outside what unsloth declares, as
    ``"transformers 5.24.0 (unsloth needs <=5.17.0,...)"``."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.version import InvalidVersion, Version
    except ImportError:  # unsloth requires packaging; without it there is nothing to compare
        return []
    conflicts: list[str] = []
    for distribution in UNSLOTH_DISTRIBUTIONS:
        try:
            declared = metadata.requires(distribution) or []
        except metadata.PackageNotFoundError:
            continue
        for line in declared:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            name = requirement.name.lower().replace("_", "-")
            if name not in CHECKED_LIBRARIES:
                continue
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            installed = _version(name)
            if installed is None:
                conflicts.append(f"{name} is missing (unsloth needs {requirement.specifier or 'it'})")
                continue
            try:
                ok = requirement.specifier.contains(Version(installed), prereleases=True)
            except InvalidVersion:
                continue
            text = f"{name} {installed} (unsloth needs {requirement.specifier})"
            if not ok and text not in conflicts:
                conflicts.append(text)
    return conflicts


def torchvision_conflict() -> str | None:
    """A CUDA torchvision next to a CPU torch: its operators fail to load, and so does unsloth."""
    torch_version, vision_version = _version("torch"), _version("torchvision")
    if torch_version is None or vision_version is None:
        return None
    if _local_label(torch_version) == "cpu" and _local_label(vision_version) != "cpu":
        return (f"torchvision {vision_version} is a CUDA build installed beside the CPU build of torch "
                f"{torch_version}, and unsloth fails to import with it: run `pip uninstall torchvision` "
                f"(unsloth trains text models without it), or {REMEDY}")
    return None


def unsloth_problem() -> str | None:
    """Why unsloth cannot run here, in one sentence with what to do; ``None`` when it can."""
    if importlib.util.find_spec("unsloth") is None:
        return ("the unsloth provider needs the unsloth package, which is not installed in this "
                f"Python environment: {REMEDY}")
    if _import_failure:
        return _import_failure[0]
    version = _version("unsloth") or "(unknown version)"
    conflicts = version_conflicts()
    if conflicts:
        return (f"unsloth {version} is installed but cannot run with {'; '.join(conflicts)}: {REMEDY}")
    return torchvision_conflict()


def import_unsloth(*, quiet_order_warning: bool = False) -> ModuleType:
    """Import unsloth, or raise :class:`EnvironmentProblem` saying in one sentence why it fails.

    :param quiet_order_warning: silence unsloth's warning that transformers or peft were
        imported first. Only for inference, where its training optimizations do not matter.
    """
    if "unsloth" in sys.modules:
        return sys.modules["unsloth"]
    problem = unsloth_problem()
    if problem:
        raise EnvironmentProblem(problem)
    import contextlib
    import warnings

    try:
        # unsloth prints its banner on stdout, which `modelforge train --json` keeps for its result.
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            if quiet_order_warning:
                warnings.filterwarnings("ignore", message=".*Unsloth should be imported before")
            import unsloth
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        message = (f"unsloth {_version('unsloth') or '(unknown version)'} is installed but fails to import "
                   f"({type(exc).__name__}: {first_line}): {REMEDY}")
        _import_failure.append(message)
        raise EnvironmentProblem(message) from exc
    return sys.modules[unsloth.__name__]  # the module, typed (unsloth has no type hints)
