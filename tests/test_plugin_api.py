"""The core asks a component what it needs to know, and never names a built-in one.

A third-party task, strategy and provider, defined here against the public API only, get the
same treatment as the built-ins from ``generate``, ``plan``, the launcher checks and
``doctor``; the core's source names no built-in plugin outside the install-hint table; the
import graph of ``modelforge_core`` has no circle; ``modelforge demo`` needs no pytest.
(``evaluate`` and training with a third-party task: ``tests/test_third_party_classifier.py``.)
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

import modelforge_core
from modelforge_core import hookimpl
from modelforge_core.api import Provider, Strategy, Task
from modelforge_core.errors import Problem, UsageError
from modelforge_core.plugins import BUILTIN_DISTRIBUTIONS, Plugins, load_plugins

CORE = Path(modelforge_core.__file__).parent

# --- a third-party plugin, written against modelforge_core.api only --------------------------


class Verdicts(Task):
    """Judges a claim against an optional context, answering with a span of the claim."""

    name: ClassVar[str] = "verdicts-3p"
    description: ClassVar[str] = "A third-party task (test)."
    heads: ClassVar[tuple[str, ...]] = ("causal-lm",)
    generate_inputs: ClassVar[Mapping[str, str]] = {"claim": "claim", "context": "context"}
    required_inputs: ClassVar[tuple[str, ...] | None] = ("claim",)
    span_answer: ClassVar[bool] = True
    default_sequence_length: ClassVar[int | None] = 200
    memory_note: ClassVar[str | None] = "verdicts-3p: claims are short"

    def row_shape(self, row: Mapping[str, Any]) -> str | None:
        return "supervised" if "claim" in row else None

    def check_row(self, row: Mapping[str, Any], shape: str) -> list[Problem]:  # type: ignore[override]
        """Written before ``check_row`` took the config: still called, with two arguments."""
        if row.get("verdict") not in ("true", "false"):
            return [Problem("verdict", "expected true or false", code="enum")]
        return []


class Triples(Strategy):
    name: ClassVar[str] = "triples-3p"
    description: ClassVar[str] = "A third-party strategy (test): three sequences per example, unfused loss."
    sequences_per_example: ClassVar[int] = 3
    memory_note: ClassVar[str | None] = "triples-3p: three sequences per example"


class Remote(Provider):
    name: ClassVar[str] = "remote-3p"
    description: ClassVar[str] = "A third-party provider (test): one process, NVIDIA GPUs only."
    heads: ClassVar[frozenset[str]] = frozenset({"causal-lm"})
    multi_process: ClassVar[bool] = False
    single_process_reason: ClassVar[str] = "remote-3p keeps one session per machine"
    devices: ClassVar[frozenset[str] | None] = frozenset({"cuda"})
    devices_description: ClassVar[str] = "NVIDIA GPUs"
    libraries: ClassVar[tuple[str, ...]] = ("pluggy",)


class ThirdParty:
    @hookimpl
    def register_tasks(self, register: Callable[[Task], None]) -> None:
        register(Verdicts())

    @hookimpl
    def register_strategies(self, register: Callable[[Strategy], None]) -> None:
        register(Triples())

    @hookimpl
    def register_providers(self, register: Callable[[Provider], None]) -> None:
        register(Remote())


@pytest.fixture(scope="module")
def third_party() -> Plugins:
    """The installed plugins plus the third-party one above."""
    return load_plugins(extra=[("third-party-test", ThirdParty())], environ={})


# --- generate -------------------------------------------------------------------------------

def _run_of(tmp_path: Path, task: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"task": task, "model_name": "tiny"}}), "utf-8")
    return run


def test_generate_reads_the_inputs_a_third_party_task_declares(
        tmp_path: Path, third_party: Plugins, use_plugins: Callable[[Plugins], Plugins]) -> None:
    from modelforge_core.cli.generate import parse_request

    use_plugins(third_party)
    run = _run_of(tmp_path, "verdicts-3p")
    (tmp_path / "context.txt").write_text("The sky is blue.", "utf-8")
    request = parse_request(run, {"prompt": None}, {}, False, ["claim=The sky is green", "context=@" +
                                                               str(tmp_path / "context.txt")])
    assert request.inputs == {"claim": "The sky is green", "context": "The sky is blue."}
    with pytest.raises(UsageError) as missing:
        parse_request(run, {"prompt": "hello"}, {"temperature": 0.7}, False, [])
    message = str(missing.value)
    assert "--prompt does not apply" in message and "--temperature do not apply to a span answer" in message
    assert "--claim missing" in message and "give --input claim= TEXT [--context TEXT]" in message
    # Through the command line: one usage message, exit code 2, nothing loaded.
    result = CliRunner().invoke(modelforge_core.cli.main, ["generate", str(run), "--input", "context=x"])
    assert result.exit_code == 2, result.output
    assert "--claim missing" in result.output and "Traceback" not in result.output


def test_generate_refuses_what_a_builtin_task_does_not_declare(tmp_path: Path) -> None:
    from modelforge_core.cli.generate import parse_request

    run = _run_of(tmp_path, "extractive-question-answering")
    with pytest.raises(UsageError, match=r"--max-new-tokens do not apply to a span answer.*--question missing"):
        parse_request(run, {"context": "c"}, {"max_new_tokens": 5}, False, [])
    request = parse_request(run, {"context": "c"}, {}, False, ["question=q"])
    assert request.inputs == {"context": "c", "question": "q"}


# --- data checks ----------------------------------------------------------------------------

def test_a_check_row_without_the_config_parameter_still_checks(tmp_path: Path, third_party: Plugins) -> None:
    from modelforge_core.data import check_dataset
    from modelforge_core.errors import ValidationFailed

    data = tmp_path / "claims.jsonl"
    data.write_text('{"claim": "a", "verdict": "true"}\n{"claim": "b", "verdict": "maybe"}\n', "utf-8")
    config = {"task": "verdicts-3p", "strategy": "triples-3p", "dataset": str(data)}
    with pytest.raises(ValidationFailed) as failed:
        check_dataset(config, plugins=third_party)
    [problem] = failed.value.problems
    assert (problem.line, problem.path, problem.message) == (2, "verdict", "expected true or false")


# --- plan -----------------------------------------------------------------------------------

def _plan_config(**values: Any) -> dict[str, Any]:
    return {"model_name": "Qwen/Qwen2.5-0.5B-Instruct", "task": "verdicts-3p", "strategy": "triples-3p",
            "provider": "remote-3p", "per_device_train_batch_size": 2, "max_seq_length": None,
            "gradient_checkpointing": False, "lora_r": 16, "use_4bit": False, "bf16": True, **values}


def test_plan_asks_the_components(third_party: Plugins) -> None:
    from modelforge_core.plan import make_plan

    plan = make_plan(_plan_config(), None, plugins=third_party)
    assert plan.settings["sequence"] == 200
    assert "max_seq_length is null: planned with the 200-token windows the verdicts-3p task uses" in plan.notes
    assert {"verdicts-3p: claims are short", "triples-3p: three sequences per example"} <= set(plan.notes)
    assert plan.settings["sequences_per_example"] == 3 and plan.settings["fused_loss"] is False
    # The same config under a built-in supervised strategy: one sequence per example, a fused loss.
    builtin = make_plan(_plan_config(strategy="sft", provider="huggingface"), None, plugins=third_party)
    assert builtin.settings["fused_loss"] is True and builtin.settings["sequences_per_example"] == 1
    assert plan.parts_gb["activations"] == pytest.approx(3 * builtin.parts_gb["activations"], rel=0.01)
    assert plan.parts_gb["logits"] > 10 * builtin.parts_gb["logits"]


def test_plan_of_builtins_keeps_its_figures(builtin_plugins: Plugins) -> None:
    """dpo's pairs and the QA windows come from the plugins now; the figures are the same."""
    from modelforge_core.plan import make_plan

    dpo = make_plan(_plan_config(task="text-generation", strategy="dpo", provider="huggingface",
                                 max_seq_length=512), None, plugins=builtin_plugins)
    sft = make_plan(_plan_config(task="text-generation", strategy="sft", provider="huggingface",
                                 max_seq_length=512), None, plugins=builtin_plugins)
    assert dpo.parts_gb["activations"] == pytest.approx(2 * sft.parts_gb["activations"], rel=0.01)
    qa = make_plan(_plan_config(model_name="google-bert/bert-base-uncased", task="extractive-question-answering",
                                strategy="sft", provider="huggingface"), None, plugins=builtin_plugins)
    assert qa.settings["sequence"] == 384
    rlhf = make_plan(_plan_config(task="text-generation", strategy="rlhf", provider="unsloth",
                                  max_seq_length=512), None, plugins=builtin_plugins)
    assert any(note.startswith("rlhf:") for note in rlhf.notes)
    assert any(note.startswith("unsloth's own kernels") for note in rlhf.notes)


# --- launch ---------------------------------------------------------------------------------

def test_launch_asks_the_provider_whether_it_runs_on_several_processes(third_party: Plugins) -> None:
    from modelforge_core.launch import scaling_problem

    assert scaling_problem({"provider": "remote-3p"}, processes=1, plugins=third_party) is None
    refusal = scaling_problem({"provider": "remote-3p"}, processes=4, plugins=third_party)
    assert refusal is not None
    assert refusal.startswith("provider remote-3p cannot run on 4 processes: remote-3p keeps one session per "
                              "machine; train in one process (no --launcher, or --num-processes 1), or set "
                              "provider to huggingface")
    assert "remote-3p" not in refusal.split("set provider to")[1]
    assert scaling_problem({"provider": "huggingface"}, processes=4, plugins=third_party) is None


# --- doctor and the hardware checks ---------------------------------------------------------

def test_doctor_and_the_hardware_check_ask_the_provider_for_its_devices(
        third_party: Plugins, use_plugins: Callable[[Plugins], Plugins]) -> None:
    from modelforge_core.cli.doctor import provider_report
    from modelforge_core.hardware import library_versions, precision_problems

    use_plugins(third_party)
    on_cpu = provider_report("cpu")
    assert on_cpu["remote-3p"] == {"ready": False, "problem": "it does not run on the CPU (it runs on NVIDIA GPUs)",
                                   "multi_process": False, "devices": ["cuda"]}
    assert on_cpu["huggingface"]["ready"] is True
    assert provider_report("cuda")["remote-3p"]["ready"] is True
    [problem] = precision_problems({"provider": "remote-3p"}, device="cpu", device_name="CPU", fp16=False,
                                   bf16=True, plugins=third_party)
    assert problem.startswith("the remote-3p provider cannot train on the CPU (it runs on NVIDIA GPUs): "
                              "set provider to huggingface")
    assert precision_problems({"provider": "remote-3p"}, device="cuda", device_name="GPU", fp16=True,
                              bf16=True, plugins=third_party) == []
    assert library_versions(third_party)["pluggy"]  # a component's own libraries are reported


# --- the core names no built-in plugin ------------------------------------------------------

#: Where a built-in name may appear in the core, and why.
ALLOWED = {
    # The install-hint table: which distribution provides a missing built-in component.
    "plugins.py": {"huggingface", "unsloth", "sft", "qlora", "dpo", "rlhf", "text-generation", "summarization",
                   "extractive-question-answering", "grpo", "exact_match", "numeric_match", "regex", "length_penalty",
                   "mlflow", "wandb"},
    # The Hugging Face hub's own cache folder (~/.cache/huggingface), not the provider.
    "modelconfig.py": {"huggingface"},
}
#: The test kit ships synthetic datasets for the built-in tasks and a default config; it is a
#: test helper, not the core's logic.
EXEMPT_DIRS = ("testing",)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            found.add(id(body[0].value))
    return found


def test_the_core_names_no_builtin_plugin_outside_the_install_hints() -> None:
    """Every string in the core's code (docstrings aside) is checked word by word: a branch on a
    built-in's name, a message that recommends one, a table keyed by one all fail here."""
    names = {name for _kind, name in BUILTIN_DISTRIBUTIONS}
    found = []
    for path in sorted(CORE.rglob("*.py")):
        relative = path.relative_to(CORE)
        if relative.parts[0] in EXEMPT_DIRS:
            continue
        tree = ast.parse(path.read_text("utf-8"))
        docstrings = _docstrings(tree)
        allowed = ALLOWED.get(str(relative), set())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                words = set(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", node.value)) & names - allowed
                found += [f"{relative}:{node.lineno}: {word} in {node.value[:60]!r}" for word in sorted(words)]
    assert found == []


def test_the_scan_would_see_a_branch_on_a_builtin_name() -> None:
    tree = ast.parse('if config.get("provider") == "unsloth":\n    pass\n')
    constants = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    assert "unsloth" in constants


# --- the import graph -----------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modelforge_core modules it imports when run (``TYPE_CHECKING`` blocks aside;
    imports inside functions count: they run too)."""
    modules = {_module_name(path): path for path in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text("utf-8"))
        typing_only = {id(sub) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for sub in ast.walk(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                deps |= {n for n in [target, *(f"{target}.{a.name}" for a in node.names)] if n in modules}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps - {name}
    return graph


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_of_the_core_has_no_circle() -> None:
    graph = import_graph()
    assert "modelforge_core.schema" in graph["modelforge_core.plugins"]  # the graph sees imports
    assert circles(graph) == []
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


# --- demo without pytest --------------------------------------------------------------------

def test_demo_imports_nothing_from_pytest(tmp_path: Path) -> None:
    """Every module ``modelforge demo`` imports, imported where pytest cannot be."""
    imports: Sequence[str] = sorted({
        f"modelforge_core.{node.module}" for node in ast.walk(ast.parse((CORE / "demo.py").read_text("utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module})
    code = ("import sys; sys.modules['pytest'] = None; sys.modules['_pytest'] = None\n"
            + "".join(f"import {name}\n" for name in imports)
            + "import modelforge_core.demo, modelforge_core.cli.demo\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "modelforge_core.testing.configs" in imports


def test_the_effective_schema_describes_third_party_components(third_party: Plugins) -> None:
    from modelforge_core.schema import effective_schema

    properties = effective_schema(third_party.registry)["properties"]
    assert properties["task"]["description"].endswith(
        "Installed plugins add: verdicts-3p (A third-party task (test)).")
    assert "triples-3p (A third-party strategy (test): three sequences per example, unfused loss)" in \
        properties["strategy"]["description"]
    assert "remote-3p" in properties["provider"]["description"]
    assert "remote-3p" in properties["provider"]["enum"]


def test_load_plugins_extra_works_when_the_plugin_is_installed_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/plugins.md's test fixture (``extra=[(name, module)]``) keeps working after the
    Packaging section's install: the same module under the same entry-point name registers once."""
    import importlib

    info = tmp_path / "mf_api_twice-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mf-api-twice\nVersion: 1.0\n", "utf-8")
    (info / "entry_points.txt").write_text("[modelforge]\nstrategy-twice = mf_api_twice\n", "utf-8")
    (tmp_path / "mf_api_twice.py").write_text(
        "from modelforge_core import hookimpl\nfrom modelforge_core.api import Strategy\n"
        "class Twice(Strategy):\n    name = 'twice-3p'\n"
        "@hookimpl\ndef register_strategies(register):\n    register(Twice())\n", "utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module("mf_api_twice")
        plugins = load_plugins(extra=[("strategy-twice", module)], environ={})
        owner = plugins.registry.owner_of(plugins.registry.strategies["twice-3p"])
        assert owner.distribution == "mf-api-twice"
        from modelforge_core.errors import PluginError

        with pytest.raises(PluginError, match="already taken"):  # another object under that name still clashes
            load_plugins(extra=[("strategy-twice", ThirdParty())], environ={})
    finally:
        sys.modules.pop("mf_api_twice", None)
