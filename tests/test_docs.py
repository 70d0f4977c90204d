"""Meta-tests: every hook is documented in docs/plugins.md with its exact signature and has a
``test_hook_<name>``; the component classes' attributes and the kit's fixtures are documented."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelforge_core import api, hookspecs

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugins.md"


def _hookspecs() -> dict[str, Callable[..., Any]]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {name: func for name, func in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(func, marker)}


HOOKS = _hookspecs()


def _signature(func: Callable[..., Any]) -> str:
    """``def name(arg: Type, ...) -> Return``, with the annotations as written in the source."""
    signature = inspect.signature(func)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"def {func.__name__}({params}) -> {signature.return_annotation}"


def _guide() -> str:
    return re.sub(r"\s+", " ", GUIDE.read_text("utf-8"))


def _test_function_names() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        names.update(node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef))
    return names


def test_there_are_hooks() -> None:
    assert {"register_providers", "register_strategies", "register_tasks", "register_commands",
            "on_run_start", "on_log", "on_evaluate", "on_run_end"} <= set(HOOKS)


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_documented_with_its_exact_signature(name: str) -> None:
    guide = _guide()
    assert f"### `{name}`" in guide, f"docs/plugins.md needs a section for {name}"
    assert _signature(HOOKS[name]) in guide, f"docs/plugins.md must show: {_signature(HOOKS[name])}"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_has_a_test(name: str) -> None:
    assert f"test_hook_{name}" in _test_function_names()


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hookspec_docstring_names_every_parameter(name: str) -> None:
    func = HOOKS[name]
    doc = inspect.getdoc(func) or ""
    assert "Called " in doc, f"{name}: say when it is called"
    for param in inspect.signature(func).parameters:
        assert f":param {param}:" in doc, f"{name}: document {param}"


@pytest.mark.parametrize("cls", [api.Component, api.Provider, api.Task, api.Strategy, api.Reward],
                         ids=lambda c: c.__name__)
def test_component_attributes_are_documented(cls: type) -> None:
    guide = GUIDE.read_text("utf-8")
    public = [name for name in vars(cls) if not name.startswith("_") and name != "kind"]
    assert public
    for name in public:
        assert re.search(rf"`{name}(\(|`)", guide), f"docs/plugins.md: document {cls.__name__}.{name}"


def test_plugin_selection_variables_are_documented() -> None:
    from modelforge_core.plugins import DISABLE_ENV, LOAD_ENV

    guide = GUIDE.read_text("utf-8")
    assert LOAD_ENV in guide
    assert DISABLE_ENV in guide


def test_kit_fixtures_named_in_the_guide_exist() -> None:
    from modelforge_core.testing import pytest_plugin

    guide = GUIDE.read_text("utf-8")
    for fixture in ("tiny_causal_lm", "tiny_seq2seq_lm", "tiny_qa_encoder", "sample_dataset", "run_training"):
        assert f"`{fixture}`" in guide
        assert callable(getattr(pytest_plugin, fixture)), fixture


def test_guide_links_resolve() -> None:
    for target in re.findall(r"\]\((\.\./[^)#]+)\)", GUIDE.read_text("utf-8")):
        assert (GUIDE.parent / target).exists(), target
