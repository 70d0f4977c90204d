"""The public plugin API is all a plugin uses, and docs/plugins.md presents all of it.

Public: the package's ``hookimpl`` and the modules in :data:`PUBLIC_MODULES` (the test kit with
its submodules). Every other module of ``modelforge_core`` is internal and says so.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ("modelforge_core", "modelforge_core.api", "modelforge_core.hookspecs",
                  "modelforge_core.errors", "modelforge_core.trainer", "modelforge_core.tracking",
                  "modelforge_core.testing")
#: Plugins written against the public API only: the built-ins' code (not their tests) and the
#: examples, the tutorial included.
PLUGIN_SOURCES = sorted([*ROOT.glob("plugins/*/modelforge_*/**/*.py"), *ROOT.glob("examples/*/**/*.py")])


def is_public_module(name: str) -> bool:
    return name in PUBLIC_MODULES or name.startswith("modelforge_core.testing.")


def public_names(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in vars(module) if not name.startswith("_")]
    return set(names)


def core_imports(tree: ast.AST) -> Iterator[tuple[int, str, str | None]]:
    """``(line, module, name)`` for every import of ``modelforge_core`` anywhere in the file,
    function bodies included; ``name`` is ``None`` for ``import modelforge_core.x``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "modelforge_core":
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "modelforge_core":
            for alias in node.names:
                yield node.lineno, node.module, alias.name


def violations(source: str, filename: str = "<plugin>") -> list[str]:
    """What a plugin's source imports from ``modelforge_core`` beyond the public API."""
    found = []
    for line, module, name in core_imports(ast.parse(source, filename)):
        where = f"{filename}:{line}"
        if not is_public_module(module):
            found.append(f"{where}: imports the internal module {module}")
        elif name is not None and name != "*":
            submodule = f"{module}.{name}"
            if module == "modelforge_core" and name not in public_names(module):
                if not is_public_module(submodule):
                    found.append(f"{where}: imports the internal module {submodule}")
            elif module != "modelforge_core" and name not in public_names(module) and not is_public_module(submodule):
                found.append(f"{where}: imports {name}, which {module} does not present as public")
    return found


def test_plugin_sources_are_found() -> None:
    names = {path.parent.name for path in PLUGIN_SOURCES}
    assert {"modelforge_strategy_sft", "modelforge_strategy_dpo", "modelforge_strategy_rlhf",
            "modelforge_strategy_qlora", "modelforge_strategy_tutorial"} <= names


def test_the_check_flags_internal_imports() -> None:
    """The check itself: internal modules, internal names and function-level imports are caught."""
    source = (
        "from modelforge_core import hookimpl\n"
        "from modelforge_core.api import Strategy\n"
        "from modelforge_core.testing.datasets import write_jsonl\n"
        "def train(job):\n"
        "    from modelforge_core.training import run_supervised\n"
        "    from modelforge_core.runs import METRICS_FILE\n"
        "    from modelforge_core import orchestrate\n"
        "    from modelforge_core.trainer import with_perplexity\n"
        "    import modelforge_core.config\n"
    )
    assert violations(source, "p.py") == [
        "p.py:5: imports the internal module modelforge_core.training",
        "p.py:6: imports the internal module modelforge_core.runs",
        "p.py:7: imports the internal module modelforge_core.orchestrate",
        "p.py:8: imports with_perplexity, which modelforge_core.trainer does not present as public",
        "p.py:9: imports the internal module modelforge_core.config",
    ]


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path: Path) -> None:
    assert violations(path.read_text("utf-8"), str(path.relative_to(ROOT))) == []


def test_every_internal_module_says_so() -> None:
    """Public modules promise stability in their docstring; every other module (and subpackage)
    of the core says it is internal, so nobody mistakes it for API."""
    package = ROOT / "modelforge_core"
    modules = [*package.glob("*.py"), *package.glob("*/__init__.py")]
    unmarked = []
    for path in modules:
        relative = path.relative_to(ROOT).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        name = ".".join(parts)
        docstring = ast.get_docstring(ast.parse(path.read_text("utf-8"))) or ""
        if is_public_module(name):
            assert re.search(r"public API", docstring, re.IGNORECASE), f"{name}: docstring does not say it is public"
        elif "Internal:" not in docstring:
            unmarked.append(name)
    assert unmarked == [], "modules without an 'Internal:' note in their docstring"


def plugins_doc() -> str:
    return (ROOT / "docs" / "plugins.md").read_text("utf-8")


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/plugins.md has no section '## {title}'"
    return match.group(1)


def test_docs_present_every_public_module_with_a_versioning_promise() -> None:
    api = section(plugins_doc(), "The public API")
    for module in PUBLIC_MODULES:
        assert f"`{module}`" in api, module
    assert "internal" in api and re.search(r"minor release", api)


def test_docs_present_every_name_of_the_trainer_and_test_kits() -> None:
    import modelforge_core.testing
    import modelforge_core.trainer

    text = plugins_doc()
    kit = section(text, "The trainer kit")
    assert [name for name in modelforge_core.trainer.__all__ if f"`{name}" not in kit] == []
    testing = section(text, "Testing a plugin")
    assert [name for name in modelforge_core.testing.__all__ if f"`{name}" not in testing] == []


def test_docs_code_examples_import_only_the_public_api() -> None:
    """What docs/plugins.md tells authors to write passes the same check as the built-ins."""
    checked, found = 0, []
    for index, block in enumerate(re.findall(r"```python\n(.*?)```", plugins_doc(), re.DOTALL)):
        try:
            ast.parse(block)
        except SyntaxError:
            continue  # a hook's signature without a body
        checked += "modelforge_core" in block
        found += violations(block, f"docs/plugins.md block {index + 1}")
    assert found == []
    assert checked >= 3  # the test kit's and the trainer kit's examples at least
