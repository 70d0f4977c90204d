"""``modelforge chat``: a conversation with a trained text-generation run in the terminal.

The conversation is kept as a list of messages and every turn is formatted by the task with
the same chat template as in training (``{"messages": [...]}`` to ``Task.predict``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from .generate import generation_kwargs, generation_options, read_text, run_task, task_of

HELP_TEXT = "/reset starts a new conversation, /exit (or Ctrl-D) quits."


@dataclass
class Conversation:
    """The messages so far; the system message survives ``/reset``."""

    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, text: str) -> dict[str, Any]:
        """The input for ``predict``: the conversation with the user's new turn."""
        return {"messages": [*self.messages, {"role": "user", "content": text}]}

    def record(self, question: str, answer: str) -> None:
        self.messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _enable_line_editing() -> None:
    with contextlib.suppress(ImportError):  # not on every platform
        import readline  # noqa: F401  (importing it gives input() history and editing)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--system", help="A system message that opens the conversation (or @FILE).")
@generation_options
def chat(run_dir: Path, system: str | None, max_new_tokens: int | None, temperature: float | None,
         top_p: float | None, repetition_penalty: float | None) -> None:
    """Chat with a text-generation run's trained adapter in the terminal.

    Each turn is formatted with the run's chat template, the whole conversation included.
    /reset starts over, /exit or Ctrl-D quits, Ctrl-C cancels the answer being generated.
    """
    task = run_task(run_dir)
    if not task_of(task).conversational:
        raise UsageError(f"{run_dir} is a run of the {task} task, which takes no conversation: chat needs a run "
                         "of a conversational task; use `modelforge generate` for one input")
    generation = generation_kwargs(max_new_tokens, temperature, top_p, repetition_penalty)
    conversation = Conversation(read_text(system, "--system") if system else None)
    from ..inference import load_trained

    click.echo(f"loading {run_dir} ...", err=True)
    trained = load_trained(run_dir)
    _enable_line_editing()
    click.echo(f"chatting with {run_dir}. {HELP_TEXT}", err=True)
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:
            click.echo()
            continue
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0].lower()
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                conversation.reset()
                click.echo("(new conversation)")
            else:
                click.echo(f"unknown command {command}: {HELP_TEXT}")
            continue
        try:
            answer = trained.predict(conversation.ask(text), **generation)
        except KeyboardInterrupt:
            click.echo("(answer cancelled)")
            continue
        conversation.record(text, answer)
        click.echo(f"model> {answer}")
