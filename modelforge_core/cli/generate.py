"""``modelforge generate``: run a trained adapter on one input, formatted exactly as in training.

The options a run accepts depend on its task: ``--prompt`` (and ``--system``) for text
generation, ``--document`` for summarization, ``--context`` and ``--question`` for extractive
question answering. They are checked against the run's config before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import UsageError
from .output import dump_json

if TYPE_CHECKING:
    from ..api import Task

F = TypeVar("F", bound=Callable[..., Any])

#: The flags of their own that ``modelforge generate`` has; other inputs are ``--input NAME=TEXT``.
NAMED_INPUTS = ("prompt", "system", "document", "context", "question")


def generation_options(function: F) -> F:
    """The sampling options shared by ``generate`` and ``chat`` (unset: the task's defaults,
    which are greedy decoding)."""
    decorators = [
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
                     help="Longest answer, in tokens [default: the task's, 128 for text generation]."),
        click.option("--temperature", type=click.FloatRange(min=0.0), default=None,
                     help="Sampling temperature; 0 (the default) is greedy decoding."),
        click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=None,
                     help="Nucleus sampling (with --temperature): sample from the most likely tokens "
                          "whose probabilities add up to this."),
        click.option("--repetition-penalty", type=click.FloatRange(min=0.0, min_open=True), default=None,
                     help="Above 1 discourages repeating tokens [default: 1, no penalty]."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def generation_kwargs(max_new_tokens: int | None, temperature: float | None, top_p: float | None,
                      repetition_penalty: float | None) -> dict[str, Any]:
    """Only the options the user gave, so each task keeps its own defaults."""
    given = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
             "repetition_penalty": repetition_penalty}
    return {key: value for key, value in given.items() if value is not None}


def read_text(value: str, option: str) -> str:
    """``TEXT`` as is, or the contents of ``FILE`` for ``@FILE`` (``@@text`` for a literal ``@text``)."""
    if value.startswith("@@"):
        return value[1:]
    if value.startswith("@"):
        from ..safeio import MAX_CONFIG_BYTES, describe_error, read_file

        path = Path(value[1:])
        try:
            return read_file(path, limit=MAX_CONFIG_BYTES).data.decode("utf-8")
        except (OSError, ValueError) as exc:  # a FIFO or a device is refused, never read
            reason = describe_error(exc) if not isinstance(exc, UnicodeDecodeError) else "not UTF-8 text"
            raise UsageError(f"{option} {value}: cannot read {path} ({reason}); "
                             "give the text itself or @ and an existing regular file") from exc
    return value


def run_task(run_dir: Path) -> str:
    """The task of a run, read from its config without loading anything heavy."""
    from ..runs import RunDir

    return str(RunDir.open(run_dir).config()["task"])


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option(name: str) -> str:
    """How the user gives input ``name``: its own flag, or ``--input NAME=``."""
    return _flag(name) if name in NAMED_INPUTS else f"--input {name}="


@dataclass
class GenerateRequest:
    """The parsed command line of ``modelforge generate``."""

    run_dir: Path
    task: str
    inputs: dict[str, Any]
    generation: dict[str, Any] = field(default_factory=dict)
    compare_base: bool = False


def task_of(name: str) -> Task:
    """The installed task ``name`` (its class attributes say what ``generate`` reads)."""
    from ..plugins import get_plugins

    task = get_plugins().registry.tasks.get(name)
    if task is None:
        raise UsageError(f"the run's task {name!r} is not installed here: install the plugin that provides it "
                         "(`modelforge plugins` lists the installed ones)")
    return task


def parse_inputs(named: Mapping[str, str | None], pairs: Sequence[str]) -> dict[str, str]:
    """The named flags that were given and the ``--input NAME=TEXT`` pairs, by option name."""
    present = {key: value for key, value in named.items() if value is not None}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--input {pair}: give NAME=TEXT, for example --input prompt=Hello")
        if key in present:
            raise UsageError(f"{_flag(key)} is given twice")
        present[key] = value
    return present


def parse_request(run_dir: Path, given: Mapping[str, str | None], generation: dict[str, Any],
                  compare_base: bool, pairs: Sequence[str] = (), *, task: Task | None = None) -> GenerateRequest:
    """Check the options against what the run's task declares (:attr:`Task.generate_inputs`,
    :attr:`Task.required_inputs`, :attr:`Task.span_answer`); one usage error that says what to give."""
    name = run_task(run_dir)
    component = task or task_of(name)
    present = parse_inputs(given, pairs)
    accepted = dict(component.generate_inputs)
    required = tuple(accepted) if component.required_inputs is None else tuple(component.required_inputs)
    wrong = [key for key in present if key not in accepted]
    missing = [key for key in required if key not in present]
    wrong_generation = sorted(generation) if component.span_answer else []
    if wrong or missing or wrong_generation:
        wanted = " ".join(f"{_option(key)} TEXT" for key in required)
        optional = [key for key in accepted if key not in required]
        if optional:
            wanted += " [" + " ".join(f"{_option(key)} TEXT" for key in optional) + "]"
        problems = []
        if wrong:
            problems.append(f"{', '.join(_flag(k) for k in wrong)} do{'es' if len(wrong) == 1 else ''} not apply")
        if wrong_generation:
            problems.append(f"{', '.join(_flag(k) for k in wrong_generation)} do not apply to a span answer")
        if missing:
            problems.append(f"{', '.join(_flag(k) for k in missing)} missing")
        raise UsageError(f"{run_dir} is {_article(name)} {name} run ({'; '.join(problems)}): give {wanted.strip()}")
    inputs = {accepted[key]: read_text(value, _flag(key)) for key, value in present.items()}
    return GenerateRequest(run_dir, name, inputs, generation, compare_base)


def execute(request: GenerateRequest) -> dict[str, Any]:
    """Load the run and answer; with ``compare_base``, answer again with the adapter switched off."""
    from ..inference import load_trained

    trained = load_trained(request.run_dir)
    result: dict[str, Any] = {"run_dir": str(request.run_dir), "task": request.task, "inputs": request.inputs,
                              "generation": request.generation,
                              "answer": trained.predict(request.inputs, **request.generation)}
    if request.compare_base:
        result["base_answer"] = base_answer(trained, request.inputs, request.generation)
    return result


def base_answer(trained: Any, inputs: dict[str, Any], generation: dict[str, Any]) -> str:
    """The base model's answer: the same loaded model with its adapter disabled (peft), or the
    base loaded again where the provider gave no switch."""
    disable = getattr(trained.loaded.model, "disable_adapter", None)
    if disable is not None:
        with disable():
            return str(trained.predict(inputs, **generation))
    from ..inference import load_trained

    return str(load_trained(trained.run.path, with_adapter=False).predict(inputs, **generation))


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--prompt", help="Text generation: the user's message (or @FILE).")
@click.option("--system", help="Text generation: a system message before the prompt (or @FILE).")
@click.option("--document", help="A document to summarize, for tasks that read one (or @FILE).")
@click.option("--context", help="Question answering: the passage holding the answer (or @FILE).")
@click.option("--question", help="Question answering: the question (or @FILE).")
@click.option("--input", "pairs", multiple=True, metavar="NAME=TEXT",
              help="Any input the run's task declares, by name (repeatable; TEXT may be @FILE).")
@generation_options
@click.option("--base", "compare_base", is_flag=True,
              help="Also answer with the base model (adapter off), to compare.")
@click.option("--json", "as_json", is_flag=True, help="Print the inputs and answer(s) as JSON.")
def generate(run_dir: Path, prompt: str | None, system: str | None, document: str | None, context: str | None,
             question: str | None, pairs: tuple[str, ...], max_new_tokens: int | None, temperature: float | None,
             top_p: float | None, repetition_penalty: float | None, compare_base: bool, as_json: bool) -> None:
    """Answer one input with the run's trained adapter, formatted as in training.

    \b
    text generation:  modelforge generate RUN_DIR --prompt "What is ...?" [--system TEXT]
    summarization:    modelforge generate RUN_DIR --document @report.txt
    question answer:  modelforge generate RUN_DIR --context @page.txt --question "Who ...?"
    any other task:   modelforge generate RUN_DIR --input NAME=TEXT (the names its task declares)

    TEXT starting with @ is read from that file. Decoding is greedy unless --temperature is set.
    """
    request = parse_request(
        run_dir, {"prompt": prompt, "system": system, "document": document, "context": context,
                  "question": question},
        generation_kwargs(max_new_tokens, temperature, top_p, repetition_penalty), compare_base, pairs)
    result = execute(request)
    if as_json:
        dump_json(result)
        return
    if not compare_base:
        click.echo(result["answer"])
        return
    click.echo(click.style("fine-tuned: ", bold=True) + result["answer"])
    click.echo(click.style("base model: ", bold=True) + result["base_answer"])
