"""The text-generation task: instruction, chat and prompt/completion data for causal LMs.

Supervised rows: ``{"input", "output"}`` (optionally ``"system"``), ``{"messages": [...]}``
(chat, ending with the assistant's turn) or ``{"prompt", "completion"}``. Preference rows (for
dpo and rlhf): ``{"prompt", "chosen", "rejected"}``, as strings or as message lists. Prompt rows
(for grpo): ``{"prompt", ...}`` with whatever other fields the configured rewards read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import ALPACA, MESSAGES, SHAREGPT, LoadedModel, RowFormat, Task, native, required_text
from modelforge_core.errors import Problem

ROLES = ("system", "user", "assistant", "tool")


def _text_problem(row: Mapping[str, Any], key: str, *, allow_empty: bool = False) -> Problem | None:
    found = required_text(row, (key,), allow_empty=(key,) if allow_empty else ())
    return found[0] if found else None


def _messages_problems(value: Any, key: str, *, must_end_with_assistant: bool,
                       roles: Sequence[str] = ROLES) -> list[Problem]:
    if not isinstance(value, list) or not value:
        return [Problem(key, "expected a non-empty list of {\"role\", \"content\"} messages", code="type")]
    problems = []
    for index, message in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(message, dict):
            problems.append(Problem(where, "a message must be an object with role and content", code="type"))
            continue
        role, content = message.get("role"), message.get("content")
        if role not in roles:
            problems.append(Problem(f"{where}.role", f"role must be one of {', '.join(roles)}, got {role!r}",
                                    code="enum"))
        if not isinstance(content, str):
            problems.append(Problem(f"{where}.content", "content must be a string", code="type"))
    if must_end_with_assistant and not problems:
        last = value[-1]
        if last.get("role") != "assistant":
            problems.append(Problem(f"{key}[{len(value) - 1}].role",
                                    "the last message must be the assistant's answer (the training target)",
                                    code="shape"))
        elif not last.get("content", "").strip():
            problems.append(Problem(f"{key}[{len(value) - 1}].content", "the assistant's answer is empty",
                                    code="empty"))
    return problems


class TextGeneration(Task):
    name: ClassVar[str] = "text-generation"
    description: ClassVar[str] = "Instruction, chat and prompt/completion fine-tuning of causal LMs."
    heads: ClassVar[tuple[str, ...]] = ("causal-lm",)
    data_shapes: ClassVar[frozenset[str]] = frozenset({"supervised", "preference", "prompt"})
    row_formats: ClassVar[Mapping[str, Sequence[str]]] = {
        "supervised": ('{"input": ..., "output": ...}', '{"messages": [{"role", "content"}, ...]}',
                       '{"prompt": ..., "completion": ...}'),
        "preference": ('{"prompt": ..., "chosen": ..., "rejected": ...}',),
        "prompt": ('{"prompt": ..., and the fields the rewards read, e.g. "answer": ...}',),
    }
    generate_inputs: ClassVar[Mapping[str, str]] = {"prompt": "input", "system": "system"}
    required_inputs: ClassVar[tuple[str, ...] | None] = ("prompt",)
    conversational: ClassVar[bool] = True
    formats: ClassVar[Sequence[RowFormat]] = (
        native("input_output", {"input", "output"}, {"system"}, description='{"input", "output"[, "system"]}'),
        MESSAGES,
        native("prompt_completion", {"prompt", "completion"}, description='{"prompt", "completion"}'),
        native("preference", {"prompt", "chosen", "rejected"}, shape="preference",
               description='{"prompt", "chosen", "rejected"}'),
        native("prompt", {"prompt"}, shape="prompt", open=True,
               description='{"prompt", ...the fields its rewards read} (grpo)'),
        ALPACA,
        SHAREGPT,
    )

    def row_shape(self, row: Mapping[str, Any]) -> str | None:
        if "chosen" in row or "rejected" in row:
            return "preference"
        if "messages" in row or "completion" in row or "input" in row or "output" in row:
            return "supervised"
        if "prompt" in row:
            return "prompt"
        return None

    def row_format(self, row: Mapping[str, Any]) -> str:
        """``io``, ``messages``, ``prompt_completion``, ``preference`` or ``prompt``."""
        if "chosen" in row or "rejected" in row:
            return "preference"
        if self.row_shape(row) == "prompt":
            return "prompt"
        if "messages" in row:
            return "messages"
        if "completion" in row or ("prompt" in row and "output" not in row):
            return "prompt_completion"
        return "io"

    def check_row(self, row: Mapping[str, Any], shape: str, config: Mapping[str, Any]) -> list[Problem]:
        fmt = self.row_format(row)
        if fmt == "preference":
            return self._check_preference(row)
        if fmt == "prompt":
            if isinstance(row["prompt"], list):
                return _messages_problems(row["prompt"], "prompt", must_end_with_assistant=False)
            problem = _text_problem(row, "prompt")
            return [problem] if problem else []
        if fmt == "messages":
            return _messages_problems(row["messages"], "messages", must_end_with_assistant=True)
        if fmt == "prompt_completion":
            if isinstance(row.get("prompt"), list) or isinstance(row.get("completion"), list):
                problems = _messages_problems(row.get("prompt"), "prompt", must_end_with_assistant=False)
                problems += _messages_problems(row.get("completion"), "completion", must_end_with_assistant=True)
                return problems
            found = (_text_problem(row, "prompt", allow_empty=True), _text_problem(row, "completion"))
            return [p for p in found if p]
        problems = [p for p in (_text_problem(row, "input", allow_empty=True), _text_problem(row, "output")) if p]
        if "system" in row:
            problem = _text_problem(row, "system", allow_empty=True)
            if problem:
                problems.append(problem)
        return problems

    def _check_preference(self, row: Mapping[str, Any]) -> list[Problem]:
        problems: list[Problem] = []
        prompt = row.get("prompt")
        if isinstance(prompt, list):
            problems += _messages_problems(prompt, "prompt", must_end_with_assistant=False)
        else:
            problem = _text_problem(row, "prompt")
            if problem:
                problems.append(problem)
        for key in ("chosen", "rejected"):
            value = row.get(key)
            if isinstance(value, list):
                problems += _messages_problems(value, key, must_end_with_assistant=True)
            else:
                problem = _text_problem(row, key)
                if problem:
                    problems.append(problem)
        if not problems and row["chosen"] == row["rejected"]:
            problems.append(Problem("rejected", "chosen and rejected are identical: the pair teaches nothing",
                                    code="invalid"))
        return problems

    def build_dataset(self, rows: Sequence[Mapping[str, Any]], *, shape: str, tokenizer: Any,
                      config: Mapping[str, Any], head: str) -> Any:
        from .formatting import build_dataset

        return build_dataset(self, rows, shape=shape, tokenizer=tokenizer, config=config)

    def predict(self, loaded: LoadedModel, inputs: Mapping[str, Any], *, config: Mapping[str, Any],
                **generation: Any) -> str:
        from .formatting import generate_answer

        return generate_answer(self, loaded, inputs, **generation)


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(TextGeneration())
