"""The errors ModelForge raises on purpose.

Every class here is something a user may see. The CLI converts any :class:`ModelForgeError`
into its message on stderr and a non-zero exit code, without a traceback (set
``MODELFORGE_DEBUG=1`` or pass ``--debug`` to get the traceback back). Anything else that
escapes is a bug in ModelForge or in a plugin.

Public API: a plugin may import this module and raise its errors (see docs/plugins.md, "The
public API"). Classes are only added; an existing one keeps its name, base and exit code within
a minor release series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: A message longer than this is cut in the middle: a 50 MB value is not echoed back whole.
MAX_MESSAGE_CHARS = 1000
#: Values quoted inside a message are cut to this many characters.
MAX_VALUE_CHARS = 200


def shorten(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut in the middle to at most about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    keep = max(limit // 2 - 10, 1)
    return f"{text[:keep]}…[{len(text) - 2 * keep:,} characters cut]…{text[-keep:]}"


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

    def __post_init__(self) -> None:
        # The one place every problem passes through: no field echoes a huge value whole.
        object.__setattr__(self, "path", shorten(self.path, MAX_VALUE_CHARS))
        object.__setattr__(self, "message", shorten(self.message, MAX_MESSAGE_CHARS))
        if self.hint is not None:
            object.__setattr__(self, "hint", shorten(self.hint, MAX_MESSAGE_CHARS))
        if self.file is not None:
            object.__setattr__(self, "file", shorten(self.file, MAX_VALUE_CHARS))
        if isinstance(self.extra.get("json_path"), list):
            self.extra["json_path"] = [shorten(p) if isinstance(p, str) else p for p in self.extra["json_path"]]

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
    """Base class: a failure the user can act on. Exit code 1 unless a subclass says otherwise.

    Its text is cut to :data:`MAX_MESSAGE_CHARS` (a value echoed in it may be huge).
    """

    exit_code = 1

    def __str__(self) -> str:
        return shorten(super().__str__(), MAX_MESSAGE_CHARS)


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
        self.subject = shorten(subject, MAX_VALUE_CHARS + 20)
        self.omitted = omitted
        n = len(problems) + omitted
        super().__init__(f"{self.subject} is invalid: {n} problem{'s' if n != 1 else ''}")


class PluginError(ModelForgeError):
    """A plugin failed to load, registered a duplicate name or raised inside a hook.

    The message names the plugin and the distribution that ships it.
    """


class EnvironmentProblem(ModelForgeError):
    """The machine cannot run what the config asks (bf16 without support, unsloth missing)."""

    exit_code = 3


class Interrupted(ModelForgeError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; ``modelforge train --resume``
    continues it. Raised by the trainer kit (:mod:`modelforge_core.trainer`). Exit code 130."""

    exit_code = 130


class RunError(ModelForgeError):
    """A run folder problem: it exists already, it is not a run, it cannot be resumed."""


class ModelLoadError(ModelForgeError):
    """A provider could not load the model, tokenizer or adapter (missing folder, not a model,
    remote code refused, unsupported architecture). Raise it from :meth:`Provider.load` with one
    sentence saying what to do; ``modelforge`` prints it and exits with code 2."""

    exit_code = 2
