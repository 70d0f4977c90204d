"""The errors ModelForge raises on purpose.

Every class here is something a user may see. The CLI converts any :class:`ModelForgeError`
into its message on stderr and a non-zero exit code, without a traceback (set
``MODELFORGE_DEBUG=1`` or pass ``--debug`` to get the traceback back). Anything else that
escapes is a bug in ModelForge or in a plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One finding about a user's input: where it is, what is wrong, and what would help.

    ``path`` is a dotted JSON path inside the config (``lora_r``, ``dpo.beta``) or a
    field name inside a dataset row; ``line`` is the 1-based line in the file the value
    came from, when known.
    """

    path: str
    message: str
    hint: str | None = None
    code: str = "invalid"
    file: str | None = None
    line: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The 0-based row index in a table (parquet, arrow, a hub dataset), where lines mean nothing.
    row: int | None = None

    def location(self) -> str:
        if self.file and self.row is not None:
            return f"{self.file} row {self.row}"
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file or ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "message": self.message, "code": self.code}
        if self.hint:
            data["hint"] = self.hint
        if self.file:
            data["file"] = self.file
        if self.line:
            data["line"] = self.line
        if self.row is not None:
            data["row"] = self.row
        data.update(self.extra)
        return data


class ModelForgeError(Exception):
    """Base class: a failure the user can act on. Exit code 1 unless a subclass says otherwise."""

    exit_code = 1


class UsageError(ModelForgeError):
    """A command-line mistake (a bad ``--set``, a missing run folder). Exit code 2."""

    exit_code = 2


class ConfigError(ModelForgeError):
    """The config file cannot be read or parsed (missing, malformed JSON/YAML). Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        self.file, self.line, self.column = file, line, column
        where = file or ""
        if line:
            where += f":{line}" + (f":{column}" if column else "")
        super().__init__(f"{where}: {message}" if where else message)


class ValidationFailed(ModelForgeError):
    """The config, or the dataset it names, breaks one or more rules. Exit code 2.

    Holds every problem found, not just the first.
    """

    exit_code = 2

    def __init__(self, problems: list[Problem], *, subject: str = "config",
                 omitted: int = 0) -> None:
        self.problems = problems
        self.subject = subject
        self.omitted = omitted
        n = len(problems) + omitted
        super().__init__(f"{subject} is invalid: {n} problem{'s' if n != 1 else ''}")


class PluginError(ModelForgeError):
    """A plugin failed to load, registered a duplicate name or raised inside a hook.

    The message names the plugin and the distribution that ships it.
    """


class EnvironmentProblem(ModelForgeError):
    """The machine cannot run what the config asks (bf16 without support, unsloth missing)."""

    exit_code = 3


class RunError(ModelForgeError):
    """A run folder problem: it exists already, it is not a run, it cannot be resumed."""
