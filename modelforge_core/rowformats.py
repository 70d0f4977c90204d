"""Row formats: which keys a dataset row may have, how a format is recognised, and how a
row in a common outside format (alpaca, sharegpt, ...) becomes a task's own row.

A task lists the formats it reads in :attr:`modelforge_core.api.Task.formats`. A format is
recognised by its keys only: a row matches a format when it has all of the format's
``required`` keys and no key outside ``required | optional``. Exactly one format must match:

- a key that no format of the task uses is an error (never dropped in silence);
- a row that matches two formats is refused (never guessed): the config's ``format`` chooses.

Rows are converted to the task's own keys before the task checks them, so everything after
(checks, formatting, tokenization, the data cache) sees one kind of row per task.

No heavy imports here: ``modelforge validate --data`` runs this on every row.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import Problem

#: ShareGPT speaker names and the chat roles they stand for.
SHAREGPT_ROLES: Mapping[str, str] = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "tool": "tool", "observation": "tool",
    "function_response": "tool", "function": "tool",
}
#: Joins an alpaca ``instruction`` and its non-empty ``input`` into one prompt.
ALPACA_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class RowFormat:
    """One row format a task reads.

    :param name: what a config's ``format`` names and the manifest reports.
    :param required: keys every row of this format has.
    :param optional: keys a row of this format may have besides.
    :param shape: the data shape of its rows (``supervised`` or ``preference``).
    :param convert: turns a row into the task's own keys; ``None``: the row is already in them.
    :param description: one line for error hints and docs (``{"instruction", "input", "output"}``).
    :param open: rows may carry any other key besides (grpo's prompt rows: the fields its rewards
        read). A row that an exact (not open) format also matches is read as that one.
    """

    name: str
    required: frozenset[str]
    optional: frozenset[str] = frozenset()
    shape: str = "supervised"
    convert: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    description: str = ""
    open: bool = False

    @property
    def keys(self) -> frozenset[str]:
        return self.required | self.optional

    def matches(self, keys: Iterable[str]) -> bool:
        present = set(keys)
        return self.required <= present and (self.open or present <= self.keys)

    def label(self) -> str:
        return f"{self.name} {self.description or sorted(self.required)}"


def native(name: str, required: Iterable[str], optional: Iterable[str] = (), *, shape: str = "supervised",
           description: str = "", open: bool = False) -> RowFormat:
    """A task's own row format: rows pass to the task unchanged."""
    return RowFormat(name, frozenset(required), frozenset(optional), shape, None, description, open)


# --- the common outside formats ---------------------------------------------------------------

def alpaca_to_input_output(row: Mapping[str, Any]) -> dict[str, Any]:
    """``{"instruction", "input", "output"[, "system"]}`` -> ``{"input", "output"[, "system"]}``:
    the prompt is the instruction, then a blank line and the input when the input is not empty."""
    instruction, extra = row.get("instruction"), row.get("input")
    prompt = instruction
    if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
        prompt = instruction + ALPACA_SEPARATOR + extra
    elif extra is not None and not isinstance(extra, str):
        prompt = extra  # a wrong type: let the task's check report it
    out: dict[str, Any] = {"input": prompt, "output": row.get("output")}
    if "system" in row:
        out["system"] = row["system"]
    return out


def sharegpt_to_messages(row: Mapping[str, Any]) -> dict[str, Any]:
    """``{"conversations": [{"from", "value"}, ...][, "system"]}`` -> ``{"messages": [...]}``.

    Speakers map through :data:`SHAREGPT_ROLES`; an unknown speaker is kept as the role, so the
    task's check names it.
    """
    messages: list[Any] = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.append({"role": "system", "content": row["system"]})
    turns = row.get("conversations")
    if not isinstance(turns, list):
        return {"messages": turns}
    for turn in turns:
        if not isinstance(turn, Mapping):
            messages.append(turn)
            continue
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(str(speaker).lower(), speaker) if isinstance(speaker, str) else speaker
        messages.append({"role": role, "content": turn.get("value")})
    return {"messages": messages}


def openai_messages(row: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI-style ``{"messages": [...]}``: content given as a list of ``{"type": "text",
    "text"}`` parts is joined into one string; ``system`` and ``tool`` roles are kept."""
    messages = row.get("messages")
    if not isinstance(messages, list):
        return {"messages": messages}
    out = []
    for message in messages:
        if isinstance(message, Mapping) and isinstance(message.get("content"), list):
            parts = message["content"]
            if all(isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in parts):
                out.append({**message, "content": "".join(p["text"] for p in parts)})
                continue
        out.append(message)
    return {"messages": out}


ALPACA = RowFormat("alpaca", frozenset({"instruction", "output"}), frozenset({"input", "system"}),
                   convert=alpaca_to_input_output, description='{"instruction", "input", "output"}')
SHAREGPT = RowFormat("sharegpt", frozenset({"conversations"}), frozenset({"system", "id"}),
                     convert=sharegpt_to_messages,
                     description='{"conversations": [{"from": "human"|"gpt"|"system"|"tool", "value"}, ...]}')
MESSAGES = RowFormat("messages", frozenset({"messages"}), convert=openai_messages,
                     description='{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content"}, ...]}')


# --- detection --------------------------------------------------------------------------------

@dataclass
class Detected:
    """The outcome for one row: the converted row and its format, or the problems."""

    row: dict[str, Any] | None
    format: RowFormat | None
    problems: list[Problem] = field(default_factory=list)


def apply_columns(row: Mapping[str, Any], columns: Mapping[str, str],
                  ignore: Sequence[str] = ()) -> tuple[dict[str, Any], list[Problem]]:
    """The row with source columns renamed to the task's keys (``columns`` maps task key ->
    source column) and the ``ignore`` columns removed."""
    problems = []
    moved = set(columns.values())
    out = {k: v for k, v in row.items() if k not in ignore and k not in moved}
    for target, source in columns.items():
        if source not in row:
            problems.append(Problem(source, f"column {source!r} (mapped to {target!r}) is missing",
                                    code="missing_field", hint=f"the row has {sorted(map(str, row))}"))
        elif target in out:
            problems.append(Problem(target, f"the row has a {target!r} column and {source!r} is mapped to it too",
                                    code="ambiguous_column", hint='drop one of the two with "ignore_columns"'))
        else:
            out[target] = row[source]
    return out, problems


def detect(row: Mapping[str, Any], formats: Sequence[RowFormat], *, forced: str | None = None,
           task: str = "the task") -> Detected:
    """Recognise ``row``'s format by its keys and convert it to the task's own keys."""
    keys = {str(k) for k in row}
    by_name = {f.name: f for f in formats}
    hint_formats = "; ".join(f.label() for f in formats)
    if forced is not None:
        chosen = by_name.get(forced)
        if chosen is None:
            return Detected(None, None, [Problem("format", f"{task} has no row format {forced!r}", code="enum",
                                                 hint=f"its formats: {', '.join(by_name)}")])
        candidates = [chosen]
    else:
        candidates = [f for f in formats if f.matches(keys)]
        exact = [f for f in candidates if not f.open]
        if exact and len(exact) < len(candidates):  # an exact format wins over an open one
            candidates = exact
    if len(candidates) > 1:
        names = ", ".join(f.name for f in candidates)
        return Detected(None, None, [Problem("(row)", f"fields {sorted(keys)} match several row formats: {names}",
                                             code="ambiguous_format",
                                             hint=f'set "format" on the dataset to one of: {names}')])
    if len(candidates) == 1 and candidates[0].matches(keys):
        fmt = candidates[0]
        converted = dict(row) if fmt.convert is None else fmt.convert(row)
        return Detected(converted, fmt)
    known = set().union(*(f.keys for f in formats)) if formats else set()
    scope = candidates or list(formats)
    # The nearest formats, for the message only: most required keys present, fewest keys extra.
    def closeness(f: RowFormat) -> tuple[int, int]:
        return len(f.required & keys), -len(keys - f.keys)

    best = max((closeness(f) for f in scope), default=(0, 0))
    near = [f for f in scope if closeness(f) == best] if best[0] else []
    hint = ('map it with "columns" or drop it with "ignore_columns" on the dataset; '
            f"formats: {hint_formats}")
    problems = []
    if not near and not keys & known:
        problems.append(Problem("(row)", f"fields {sorted(keys)} match no {task} row format", code="shape",
                                hint=f'map them with "columns" on the dataset; formats: {hint_formats}'))
    elif len(near) == 1:
        fmt = near[0]
        for key in sorted(keys - fmt.keys):
            if key in known:
                owners = ", ".join(f.name for f in formats if key in f.keys)
                message = f"field {key!r} is not in the {fmt.name} row format (only in: {owners})"
            else:
                message = f"no {task} row format has a field {key!r}"
            problems.append(Problem(key, message, code="unknown_field", hint=hint))
        for key in sorted(fmt.required - keys):
            problems.append(Problem(key, "missing field", code="missing_field",
                                    hint=f"a {fmt.name} row has {fmt.description or sorted(fmt.required)}"))
    else:
        for key in sorted(keys - known):
            problems.append(Problem(key, f"no {task} row format has a field {key!r}", code="unknown_field",
                                    hint=hint))
        if not problems:
            problems.append(Problem("(row)", f"fields {sorted(keys)} match no {task} row format", code="shape",
                                    hint=f"expected one of: {hint_formats}"))
    return Detected(None, None, problems)
