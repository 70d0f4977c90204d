"""The plugin manager: discovery, selection by environment, errors that name the plugin, the
registry, capabilities against the canonical schema, the effective schema, and every hook
(``test_hook_<name>``, checked by tests/test_docs.py)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import click
import click.testing
import pytest
from jsonschema import Draft202012Validator

from modelforge_core import hookimpl
from modelforge_core.api import Logger, Provider, RunInfo, Strategy, Task
from modelforge_core.config import resolve_config
from modelforge_core.errors import PluginError, ValidationFailed
from modelforge_core.plugins import (
    BUILTIN_DISTRIBUTIONS,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    LOAD_ENV,
    Plugins,
    compatible,
    get_plugins,
    load_plugins,
    set_plugins,
)
from modelforge_core.schema import canonical_schema, effective_schema, validate_instance

BASE: dict[str, Any] = {"task": "text-generation", "model_name": "Qwen/Qwen2.5-0.5B-Instruct",
                        "dataset": "data/train.jsonl", "compute_specs": "low_end"}
REPO = Path(__file__).resolve().parents[1]


# --- test plugins (registered directly, never installed) -------------------------------------

class FrozenEmbeddingsSFT(Strategy):
    name: ClassVar[str] = "sft-frozen-embeddings"
    description: ClassVar[str] = "SFT with the embedding matrix frozen."
    data_shape: ClassVar[str] = "supervised"
    tasks: ClassVar[frozenset[str] | None] = frozenset({"text-generation"})
    options_schema: ClassVar[Mapping[str, Any] | None] = {
        "properties": {
            "unfreeze_after_steps": {"type": ["integer", "null"], "minimum": 1, "default": None,
                                     "description": "Unfreeze after this many steps (null: never).",
                                     "examples": [100, None]},
        },
    }
    schema_rules: ClassVar[tuple[Mapping[str, Any], ...]] = ({
        "description": "sft-frozen-embeddings needs a 16-bit base: set use_4bit to false.",
        "if": {"properties": {"strategy": {"const": "sft-frozen-embeddings"}}, "required": ["strategy"]},
        "then": {"properties": {"use_4bit": {"const": False}}, "required": ["use_4bit"]},
    },)


class Twin(Strategy):
    name: ClassVar[str] = "twin"


class OtherTwin(Strategy):
    name: ClassVar[str] = "twin"


class Registers:
    """A plugin object that registers the given components through the registration hooks."""

    def __init__(self, *components: Any) -> None:
        self.components = components

    def _register(self, kind: str, register: Callable[[Any], None]) -> None:
        for component in self.components:
            if getattr(component, "kind", None) == kind or (isinstance(component, type) and component.kind == kind):
                register(component)

    @hookimpl
    def register_strategies(self, register: Callable[[Strategy], None]) -> None:
        self._register("strategy", register)

    @hookimpl
    def register_tasks(self, register: Callable[[Task], None]) -> None:
        self._register("task", register)

    @hookimpl
    def register_providers(self, register: Callable[[Provider], None]) -> None:
        self._register("provider", register)


def _builtin_modules(*, without: tuple[str, ...] = ()) -> list[tuple[str, object]]:
    """The built-in plugin modules as ``extra`` pairs, to build a manager without entry points."""
    return [(ep.name, ep.load()) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
            if ep.name in {d.removeprefix("modelforge-") for d in BUILTIN_DISTRIBUTIONS.values()}
            and ep.name not in without]


def _with_builtins(*plugins: tuple[str, object]) -> Plugins:
    return load_plugins(extra=[*_builtin_modules(), *plugins], entry_points=False)


# --- fake installed distributions ------------------------------------------------------------

@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Create an installed-looking distribution on sys.path: ``make(dist, entry_name, module, source)``."""
    modules: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(distribution: str, entry_name: str, module: str, source: str) -> None:
        info = tmp_path / f"{distribution.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.2.3\n", "utf-8")
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_name} = {module}\n", "utf-8")
        (tmp_path / f"{module}.py").write_text(source, "utf-8")
        modules.append(module)

    yield make
    for module in modules:
        sys.modules.pop(module, None)


GOOD_PLUGIN = """
from modelforge_core import hookimpl
from modelforge_core.api import Strategy

class Extra(Strategy):
    name = "{name}"

@hookimpl
def register_strategies(register):
    register(Extra())
"""


# --- discovery -------------------------------------------------------------------------------

def test_builtins_are_found_through_entry_points(builtin_plugins: Plugins) -> None:
    registry = builtin_plugins.registry
    for (kind, name), distribution in BUILTIN_DISTRIBUTIONS.items():
        component = registry.of_kind(kind)[name]
        owner = registry.owner_of(component)
        assert owner.distribution == distribution
        assert owner.version
        assert builtin_plugins.infos[owner.name] == owner
    assert {registry.owner_of(c).distribution for c in registry.components()} == set(BUILTIN_DISTRIBUTIONS.values())


def test_no_plugin_is_loaded_at_import_time() -> None:
    code = ("import sys, modelforge_core, modelforge_core.plugins, modelforge_core.schema, modelforge_core.config;"
            "print(sorted(m for m in sys.modules if m.startswith('modelforge_') and m.count('_') > 1"
            " and not m.startswith('modelforge_core')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_get_and_set_plugins(use_plugins: Callable[[Plugins], Plugins]) -> None:
    mine = use_plugins(load_plugins(entry_points=False))
    assert get_plugins() is mine
    set_plugins(None)
    assert get_plugins() is not mine
    assert "sft" in get_plugins().registry.strategies


def test_installed_third_party_distribution_is_found(fake_distribution: Callable[..., None]) -> None:
    fake_distribution("modelforge-strategy-extra", "strategy-extra", "mf_test_extra",
                      GOOD_PLUGIN.format(name="extra"))
    plugins = load_plugins(environ={})
    owner = plugins.registry.owner_of(plugins.registry.strategies["extra"])
    assert (owner.name, owner.distribution, owner.version) == ("strategy-extra", "modelforge-strategy-extra", "1.2.3")


# --- errors that name the plugin -------------------------------------------------------------

def test_duplicate_component_names_name_both_plugins() -> None:
    with pytest.raises(PluginError) as failure:
        load_plugins(extra=[("first-plugin", Registers(Twin())), ("second-plugin", Registers(OtherTwin()))],
                     entry_points=False)
    message = str(failure.value)
    assert "strategy 'twin' is registered twice" in message
    assert "'first-plugin'" in message
    assert "'second-plugin'" in message
    assert DISABLE_ENV in message


def test_duplicate_of_a_builtin_names_its_distribution() -> None:
    class SFTAgain(Strategy):
        name: ClassVar[str] = "sft"

    with pytest.raises(PluginError) as failure:
        load_plugins(extra=[("impostor", Registers(SFTAgain()))], environ={})
    assert "modelforge-strategy-sft" in str(failure.value)
    assert "'impostor'" in str(failure.value)


def test_duplicate_entry_point_names_name_both_distributions(fake_distribution: Callable[..., None]) -> None:
    fake_distribution("modelforge-one", "twin", "mf_test_one", GOOD_PLUGIN.format(name="one"))
    fake_distribution("modelforge-two", "twin", "mf_test_two", GOOD_PLUGIN.format(name="two"))
    with pytest.raises(PluginError, match="entry-point name 'twin'") as failure:
        load_plugins(environ={LOAD_ENV: "twin"})
    assert "modelforge-one" in str(failure.value)
    assert "modelforge-two" in str(failure.value)


def test_plugin_that_fails_to_import_names_plugin_and_distribution(fake_distribution: Callable[..., None]) -> None:
    fake_distribution("modelforge-broken", "broken", "mf_test_broken",
                      "raise ImportError('needs a library that is not installed')\n")
    with pytest.raises(PluginError) as failure:
        load_plugins(environ={})
    message = str(failure.value)
    assert "plugin 'broken' (distribution modelforge-broken 1.2.3) failed to import" in message
    assert "needs a library that is not installed" in message
    assert f"{DISABLE_ENV}=broken" in message
    # The way out the message offers works.
    assert "broken" not in load_plugins(environ={DISABLE_ENV: "broken"}).infos


def test_hook_that_raises_names_the_plugin() -> None:
    class Exploding:
        @hookimpl
        def register_tasks(self, register: Callable[[Task], None]) -> None:
            raise RuntimeError("boom")

    with pytest.raises(PluginError) as failure:
        load_plugins(extra=[("exploding", Exploding())], entry_points=False)
    assert str(failure.value) == ("plugin 'exploding' (distribution (registered directly) ) failed in hook "
                                  "register_tasks: RuntimeError: boom")
    assert isinstance(failure.value.__cause__, RuntimeError)


def test_installed_plugin_hook_that_raises_names_its_distribution(fake_distribution: Callable[..., None]) -> None:
    fake_distribution("modelforge-raiser", "raiser", "mf_test_raiser",
                      "from modelforge_core import hookimpl\n\n@hookimpl\ndef register_providers(register):\n"
                      "    raise ValueError('no GPU table')\n")
    with pytest.raises(PluginError, match=r"plugin 'raiser' \(distribution modelforge-raiser 1.2.3\) failed in hook "
                                          r"register_providers: ValueError: no GPU table"):
        load_plugins(environ={LOAD_ENV: "raiser"})


def test_unknown_hook_name_is_an_error() -> None:
    class Misspelled:
        @hookimpl
        def register_strategy(self, register: Callable[[Strategy], None]) -> None:  # no such hook
            raise AssertionError("never called")

    with pytest.raises(PluginError) as failure:
        load_plugins(extra=[("misspelled", Misspelled())], entry_points=False)
    assert "plugin 'misspelled'" in str(failure.value)
    assert "register_strategy" in str(failure.value)
    assert "does not exist" in str(failure.value)


def test_hook_with_arguments_the_spec_lacks_is_an_error() -> None:
    class WrongArguments:
        @hookimpl
        def on_log(self, run: RunInfo, loss: float) -> None:
            raise AssertionError("never called")

    with pytest.raises(PluginError, match=r"plugin 'wrong-arguments'.*does not match the hook specification"):
        load_plugins(extra=[("wrong-arguments", WrongArguments())], entry_points=False)


def test_hook_wrappers_are_refused() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def on_log(self, run: RunInfo) -> Iterator[None]:
            yield

    with pytest.raises(PluginError, match=r"plugin 'wrapper'.*hook wrapper"):
        load_plugins(extra=[("wrapper", Wrapper())], entry_points=False)


def test_registering_a_class_instead_of_an_instance_is_explained() -> None:
    with pytest.raises(PluginError, match=r"pass an instance: register\(Twin\(\)\)"):
        load_plugins(extra=[("classy", Registers(Twin))], entry_points=False)


def test_registering_the_wrong_kind_is_refused() -> None:
    class Confused:
        @hookimpl
        def register_providers(self, register: Callable[[Any], None]) -> None:
            register(Twin())

    with pytest.raises(PluginError, match=r"not a modelforge_core\.api\.Provider instance"):
        load_plugins(extra=[("confused", Confused())], entry_points=False)


def test_component_without_a_name_is_refused() -> None:
    with pytest.raises(PluginError, match="without a name"):
        load_plugins(extra=[("nameless", Registers(Strategy()))], entry_points=False)


def test_options_object_may_not_shadow_a_config_field() -> None:
    class Seed(Strategy):
        name: ClassVar[str] = "seed"
        options_schema: ClassVar[Mapping[str, Any] | None] = {"properties": {}}

    with pytest.raises(PluginError, match="'seed' is already the config field of that name"):
        load_plugins(extra=[("shadow", Registers(Seed()))], entry_points=False)


def test_options_object_may_not_shadow_another_components_options() -> None:
    class DPOTask(Task):  # a task called "dpo" with options, beside the dpo strategy's options
        name: ClassVar[str] = "dpo"
        options_schema: ClassVar[Mapping[str, Any] | None] = {"properties": {}}

    with pytest.raises(PluginError, match="'dpo' is already the options of the task from plugin 'shadow'") as failure:
        _with_builtins(("shadow", Registers(DPOTask())))
    assert "plugin 'strategy-dpo'" in str(failure.value)


# --- selection by environment ----------------------------------------------------------------

def test_load_plugins_allowlist() -> None:
    plugins = load_plugins(environ={LOAD_ENV: "strategy-sft, modelforge-task-text-generation,provider_huggingface"})
    assert set(plugins.infos) == {"strategy-sft", "task-text-generation", "provider-huggingface"}
    assert {s.reason for s in plugins.skipped} == {f"not listed in {LOAD_ENV}"}
    # The six other built-ins, and any third-party plugin installed beside them.
    assert len(plugins.skipped) == len(metadata.entry_points(group=ENTRY_POINT_GROUP)) - 3
    assert {s.distribution for s in plugins.skipped} >= set(BUILTIN_DISTRIBUTIONS.values()) - {
        "modelforge-strategy-sft", "modelforge-task-text-generation", "modelforge-provider-huggingface"}


def test_empty_allowlist_loads_no_entry_points() -> None:
    plugins = load_plugins(environ={LOAD_ENV: ""})
    assert plugins.infos == {}
    assert len(plugins.skipped) == len(metadata.entry_points(group=ENTRY_POINT_GROUP))
    assert {s.distribution for s in plugins.skipped} >= set(BUILTIN_DISTRIBUTIONS.values())


def test_disable_blocklist() -> None:
    plugins = load_plugins(environ={DISABLE_ENV: "modelforge-strategy-dpo,task-summarization"})
    assert "dpo" not in plugins.registry.strategies
    assert "summarization" not in plugins.registry.tasks
    assert {(s.name, s.reason) for s in plugins.skipped} == {
        ("strategy-dpo", f"disabled by {DISABLE_ENV}"), ("task-summarization", f"disabled by {DISABLE_ENV}")}


def test_config_needing_a_disabled_plugin_says_which_and_why() -> None:
    from modelforge_core.readiness import environment_problems

    plugins = load_plugins(environ={DISABLE_ENV: "strategy-dpo"})
    why = f"strategy 'dpo' comes from modelforge-strategy-dpo, which is installed but disabled by {DISABLE_ENV}"
    # The name is canonical, so valid everywhere; its options are the plugin's schema fragment.
    assert environment_problems(resolve_config({**BASE, "strategy": "dpo"}, plugins=plugins), plugins) == [why]
    with pytest.raises(ValidationFailed) as failure:
        resolve_config({**BASE, "strategy": "dpo", "dpo": {"beta": 0.2}}, plugins=plugins)
    (problem,) = failure.value.problems
    assert (problem.path, problem.message, problem.hint) == ("dpo", "unknown field 'dpo'", why)


def test_config_needing_a_disabled_plugin_through_the_cli(modelforge: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**BASE, "strategy": "rlhf"}), "utf-8")
    result = modelforge("validate", path, extra_env={DISABLE_ENV: "modelforge-strategy-rlhf"})
    assert result.returncode == 0
    assert (f"warning: strategy 'rlhf' comes from modelforge-strategy-rlhf, which is installed but disabled by "
            f"{DISABLE_ENV}") in result.stdout
    assert "warning" not in modelforge("validate", path).stdout


def test_config_naming_a_builtin_that_is_not_installed_says_what_to_install() -> None:
    from modelforge_core.readiness import environment_problems

    plugins = load_plugins(extra=_builtin_modules(without=("strategy-dpo",)), entry_points=False)
    resolved = resolve_config({**BASE, "strategy": "dpo"}, plugins=plugins)  # valid: a canonical name
    assert environment_problems(resolved, plugins) == [
        "strategy 'dpo' is provided by modelforge-strategy-dpo, which is not installed "
        "(pip install modelforge-strategy-dpo)"]


def test_unknown_third_party_name_lists_what_is_installed(builtin_plugins: Plugins) -> None:
    with pytest.raises(ValidationFailed) as failure:
        resolve_config({**BASE, "strategy": "sft-frozen-embeddings"}, plugins=builtin_plugins)
    (problem,) = failure.value.problems
    assert problem.message == ("no installed plugin provides the strategy 'sft-frozen-embeddings' "
                               "(installed: dpo, grpo, qlora, rlhf, sft)")


def test_environment_check_is_a_readiness_problem_not_a_validation_error() -> None:
    from modelforge_core.errors import EnvironmentProblem
    from modelforge_core.readiness import environment_problems, require_runnable

    class NeedsDriver(Strategy):
        name: ClassVar[str] = "needs-driver"

        def check_environment(self) -> str | None:
            return "needs-driver needs the frobnicator driver: install it, or use strategy sft"

    plugins = _with_builtins(("driver", Registers(NeedsDriver())))
    resolved = resolve_config({**BASE, "strategy": "needs-driver"}, plugins=plugins)  # valid
    assert environment_problems(resolved, plugins) == [
        "needs-driver needs the frobnicator driver: install it, or use strategy sft"]
    with pytest.raises(EnvironmentProblem, match="frobnicator") as refused:
        require_runnable(resolved, plugins)
    assert refused.value.exit_code == 3


# --- capabilities and the canonical schema ----------------------------------------------------

def _allowed_by_schema(schema: Mapping[str, Any], tasks: list[str], strategies: list[str],
                       providers: list[str]) -> set[tuple[str, str, str]]:
    validator = Draft202012Validator(schema)
    allowed = set()
    for task, strategy, provider in itertools.product(tasks, strategies, providers):
        config = {**BASE, "task": task, "strategy": strategy, "provider": provider, "max_seq_length": 512}
        if validator.is_valid(config):
            allowed.add((task, strategy, provider))
    return allowed


def test_canonical_compatibility_rules_agree_with_declared_capabilities(builtin_plugins: Plugins) -> None:
    """Brute force over every (task, strategy, provider): the canonical schema file and the
    built-ins' capabilities allow exactly the same combinations."""
    schema = canonical_schema()
    names = [schema["properties"][kind]["enum"] for kind in ("task", "strategy", "provider")]
    registry = builtin_plugins.registry
    assert [sorted(n) for n in names] == [sorted(registry.of_kind(k)) for k in ("task", "strategy", "provider")]
    from_schema = _allowed_by_schema(schema, *names)
    from_capabilities = {combo for combo in itertools.product(*names) if not compatible(registry, *combo)}
    assert from_schema == from_capabilities
    assert len(from_schema) == 12  # 5 + 3 text-generation, 2 summarization, 2 QA
    effective = effective_schema(registry)
    assert _allowed_by_schema(effective, *names) == from_capabilities


def test_compatible_gives_reasons(builtin_plugins: Plugins) -> None:
    registry = builtin_plugins.registry
    assert compatible(registry, "text-generation", "dpo", "huggingface") == []
    assert compatible(registry, "summarization", "dpo", "unsloth") == [
        "strategy 'dpo' does not support task 'summarization'",
        "provider 'unsloth' does not support task 'summarization'",
    ]
    assert compatible(registry, "text-generation", "rlhf", "unsloth") == [
        "provider 'unsloth' does not support strategy 'rlhf'"]


# --- the effective schema with a third-party plugin ------------------------------------------

@pytest.fixture
def with_frozen() -> Plugins:
    return _with_builtins(("frozen", Registers(FrozenEmbeddingsSFT())))


def test_effective_schema_adds_names_options_and_rules(with_frozen: Plugins, builtin_plugins: Plugins) -> None:
    schema = effective_schema(with_frozen.registry)
    Draft202012Validator.check_schema(schema)
    assert schema["properties"]["strategy"]["enum"][-1] == "sft-frozen-embeddings"
    options = schema["properties"]["sft-frozen-embeddings"]
    assert (options["type"], options["additionalProperties"], options["default"]) == ("object", False, {})
    descriptions = [rule.get("description") for rule in schema["allOf"]]
    assert FrozenEmbeddingsSFT.schema_rules[0]["description"] in descriptions
    assert "Options under 'sft-frozen-embeddings' apply only when strategy is 'sft-frozen-embeddings'." in descriptions
    assert "sft-frozen-embeddings" not in effective_schema(builtin_plugins.registry)["properties"]


def test_third_party_strategy_validates_and_resolves(with_frozen: Plugins) -> None:
    config = {**BASE, "strategy": "sft-frozen-embeddings", "use_4bit": False,
              "sft-frozen-embeddings": {"unfreeze_after_steps": 50}}
    resolved = resolve_config(config, plugins=with_frozen)
    assert resolved.options("sft-frozen-embeddings") == {"unfreeze_after_steps": 50}
    defaults = resolve_config({**config, "sft-frozen-embeddings": {}}, plugins=with_frozen)
    assert defaults.options("sft-frozen-embeddings") == {"unfreeze_after_steps": None}


@pytest.mark.parametrize(("change", "path", "text"), [
    ({"use_4bit": True}, "use_4bit", "needs a 16-bit base"),
    ({"sft-frozen-embeddings": {"unfreeze_after_steps": 0}}, "sft-frozen-embeddings.unfreeze_after_steps",
     "below the minimum of 1"),
    ({"sft-frozen-embeddings": {"unfreeze": 3}}, "sft-frozen-embeddings.unfreeze", "unknown field"),
    ({"task": "summarization"}, "strategy", "The summarization task supports the strategies qlora, sft"),
    ({"provider": "unsloth", "max_seq_length": 512}, "strategy", "unsloth provider"),
    ({"strategy": "sft"}, "sft-frozen-embeddings", "apply only when strategy is 'sft-frozen-embeddings'"),
])
def test_third_party_rules_are_enforced(change: dict[str, Any], path: str, text: str, with_frozen: Plugins) -> None:
    config = {**BASE, "strategy": "sft-frozen-embeddings", "use_4bit": False,
              "sft-frozen-embeddings": {}, **change}
    problems = validate_instance(config, effective_schema(with_frozen.registry), with_frozen)
    assert [p.path for p in problems] == [path], problems
    assert text in problems[0].message


def test_third_party_effective_schema_gives_ajv_the_same_verdicts(with_frozen: Plugins, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is needed for the cross-language check"
    schema = effective_schema(with_frozen.registry)
    schema_file = tmp_path / "effective.json"
    schema_file.write_text(json.dumps(schema), "utf-8")
    configs = [
        {**BASE, "strategy": "sft-frozen-embeddings", "use_4bit": False},
        {**BASE, "strategy": "sft-frozen-embeddings", "use_4bit": True},
        {**BASE, "strategy": "sft-frozen-embeddings", "use_4bit": False, "sft-frozen-embeddings": {"x": 1}},
        {**BASE, "sft-frozen-embeddings": {}},
        {**BASE, "strategy": "dpo", "dpo": {"beta": 0.3}},
    ]
    items = [{"name": str(i), "config": c} for i, c in enumerate(configs)]
    result = subprocess.run([node, str(REPO / "schema/scripts/ajv-verdicts.mjs"), str(schema_file), "-"],
                            input=json.dumps(items), capture_output=True, text=True, check=True, timeout=60)
    ajv = [v["valid"] for v in json.loads(result.stdout)]
    python = [not validate_instance(c, schema, with_frozen) for c in configs]
    assert ajv == python == [True, False, False, False, True]


# --- every hook --------------------------------------------------------------------------------

def test_hook_register_providers() -> None:
    class Local(Provider):
        name: ClassVar[str] = "local-files"
        heads: ClassVar[frozenset[str]] = frozenset({"causal-lm"})

    plugins = _with_builtins(("local", Registers(Local())))
    provider = plugins.registry.providers["local-files"]
    assert isinstance(provider, Local)
    assert plugins.registry.owner_of(provider).name == "local"
    assert plugins.hook_names("local") == ["register_providers", "register_strategies", "register_tasks"]
    # A provider that loads causal LMs only serves text-generation, by its declared heads.
    assert compatible(plugins.registry, "summarization", "sft", "local-files") == []  # summarization has causal-lm
    assert compatible(plugins.registry, "extractive-question-answering", "sft", "local-files")


def test_hook_register_strategies(with_frozen: Plugins) -> None:
    strategy = with_frozen.registry.strategies["sft-frozen-embeddings"]
    assert isinstance(strategy, FrozenEmbeddingsSFT)
    assert with_frozen.registry.owner_of(strategy).distribution == "(registered directly)"


def test_hook_register_tasks() -> None:
    class Classification(Task):
        name: ClassVar[str] = "text-classification"
        heads: ClassVar[tuple[str, ...]] = ("sequence-classification",)

    plugins = _with_builtins(("classify", Registers(Classification())))
    assert isinstance(plugins.registry.tasks["text-classification"], Classification)
    schema = effective_schema(plugins.registry)
    assert "text-classification" in schema["properties"]["task"]["enum"]
    # No strategy declares support for it beyond the data shape; unsloth cannot load its head.
    assert compatible(plugins.registry, "text-classification", "sft", "unsloth")
    assert not compatible(plugins.registry, "text-classification", "sft", "huggingface")


class Greeter:
    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        @cli.command()
        @click.option("--name", default="world")
        def hello(name: str) -> None:
            """Say hello (a plugin command)."""
            click.echo(f"hello, {name}")


def test_hook_register_commands() -> None:
    plugins = load_plugins(extra=[("greeter", Greeter())], entry_points=False)
    group = click.Group("modelforge")
    plugins.hooks.register_commands(group)
    assert "hello" in group.commands
    result = click.testing.CliRunner().invoke(group, ["hello", "--name", "plugin author"])
    assert result.output == "hello, plugin author\n"


COMMAND_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from test_plugins import Greeter
from modelforge_core.cli import main
from modelforge_core.plugins import load_plugins, set_plugins

set_plugins(load_plugins(extra=[("greeter", Greeter())], entry_points=False))
main(sys.argv[2:], prog_name="modelforge", obj={})
"""


@pytest.mark.parametrize(("args", "expected"), [(["--help"], "  hello "), (["hello", "--name", "x"], "hello, x\n")])
def test_hook_register_commands_in_the_real_cli(args: list[str], expected: str, clean_env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-c", COMMAND_PROBE, str(Path(__file__).parent), *args],
                            capture_output=True, text=True, timeout=60, check=False, env=clean_env)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


class Recorder:
    """Records every lifecycle call with the arguments it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def on_run_start(self, run: RunInfo) -> None:
        self.calls.append(("on_run_start", {"run": run}))

    @hookimpl
    def on_log(self, run: RunInfo, step: int, logs: Mapping[str, float]) -> None:
        self.calls.append(("on_log", {"run": run, "step": step, "logs": logs}))

    @hookimpl
    def on_evaluate(self, run: RunInfo, stage: str, metrics: Mapping[str, float], step: int) -> None:
        self.calls.append(("on_evaluate", {"run": run, "stage": stage, "metrics": metrics, "step": step}))

    @hookimpl
    def on_run_end(self, run: RunInfo, status: str, metrics: Mapping[str, Any], error: str | None) -> None:
        self.calls.append(("on_run_end", {"run": run, "status": status, "metrics": metrics, "error": error}))


class StepsOnly:
    """Takes fewer arguments than the spec: pluggy passes only the ones it names."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl
    def on_run_start(self) -> None:
        self.seen.append("start")

    @hookimpl
    def on_log(self, step: int) -> None:
        self.seen.append(step)

    @hookimpl
    def on_evaluate(self, stage: str) -> None:
        self.seen.append(stage)

    @hookimpl
    def on_run_end(self, status: str) -> None:
        self.seen.append(status)


class Failing:
    @hookimpl
    def on_run_start(self, run: RunInfo) -> None:
        raise OSError("tracker unreachable")

    @hookimpl
    def on_log(self, run: RunInfo) -> None:
        raise OSError("tracker unreachable")

    @hookimpl
    def on_evaluate(self, run: RunInfo) -> None:
        raise OSError("tracker unreachable")

    @hookimpl
    def on_run_end(self, run: RunInfo) -> None:
        raise OSError("tracker unreachable")


RUN = RunInfo(name="tiny-sft", directory=Path("runs/tiny-sft"), config=dict(BASE))
LIFECYCLE: dict[str, dict[str, Any]] = {
    "on_run_start": {"run": RUN},
    "on_log": {"run": RUN, "step": 10, "logs": {"loss": 2.5, "learning_rate": 2e-4}},
    "on_evaluate": {"run": RUN, "stage": "after", "metrics": {"eval_loss": 1.9, "perplexity": 6.7}, "step": 12},
    "on_run_end": {"run": RUN, "status": "finished", "metrics": {"after": {"eval_loss": 1.9}}, "error": None},
}
STEPS_ONLY = {"on_run_start": "start", "on_log": 10, "on_evaluate": "after", "on_run_end": "finished"}


def _check_lifecycle_hook(hook: str) -> None:
    recorder, steps_only = Recorder(), StepsOnly()
    plugins = load_plugins(extra=[("recorder", recorder), ("steps-only", steps_only)], entry_points=False)
    getattr(plugins.hooks, hook)(**LIFECYCLE[hook])
    assert recorder.calls == [(hook, LIFECYCLE[hook])]
    assert steps_only.seen == [STEPS_ONLY[hook]]
    failing = load_plugins(extra=[("tracker", Failing())], entry_points=False)
    with pytest.raises(PluginError) as failure:
        getattr(failing.hooks, hook)(**LIFECYCLE[hook])
    assert str(failure.value) == (f"plugin 'tracker' (distribution (registered directly) ) failed in hook {hook}: "
                                  "OSError: tracker unreachable")


def test_hook_on_run_start() -> None:
    _check_lifecycle_hook("on_run_start")


def test_hook_on_log() -> None:
    _check_lifecycle_hook("on_log")


def test_hook_on_evaluate() -> None:
    _check_lifecycle_hook("on_evaluate")


def test_hook_register_loggers(tmp_path: Path) -> None:
    asked: list[str] = []

    class Tracker(Logger):
        name: ClassVar[str] = "tracker"
        options_schema: ClassVar[Mapping[str, Any] | None] = {"properties": {
            "url": {"type": "string", "default": "http://localhost", "description": "Where.", "examples": ["x"]}}}

        def check_environment(self) -> str | None:
            asked.append(self.name)
            return None

    class LoggerPlugin:
        @hookimpl
        def register_loggers(self, register: Callable[[Logger], None]) -> None:
            register(Tracker())

    plugins = _with_builtins(("tracking", LoggerPlugin()))
    assert isinstance(plugins.registry.loggers["tracker"], Tracker)
    assert plugins.hook_names("tracking") == ["register_loggers"]
    assert effective_schema(plugins.registry)["properties"]["tracker"]["additionalProperties"] is False
    # Not in the config: not enabled, no defaults, no environment check.
    plain = resolve_config(dict(BASE), plugins=plugins, base_dir=tmp_path)
    assert "tracker" not in plain and asked == []
    # Its object enables it, with any strategy, defaults filled in and the environment checked.
    enabled = resolve_config({**BASE, "strategy": "dpo", "tracker": {}}, plugins=plugins, base_dir=tmp_path)
    assert enabled["tracker"] == {"url": "http://localhost"} and Logger.enabled_in(enabled, "tracker")
    from modelforge_core.readiness import environment_problems

    assert asked == [] and environment_problems(enabled, plugins) == [] and asked == ["tracker"]
    with pytest.raises(ValidationFailed) as caught:
        resolve_config({**BASE, "tracker": {"url": 3}}, plugins=plugins, base_dir=tmp_path)
    assert [p.path for p in caught.value.problems] == ["tracker.url"]
    # A built-in logger's object without its plugin: the message says what to install.
    with pytest.raises(ValidationFailed) as caught:
        resolve_config({**BASE, "mlflow": {}}, base_dir=tmp_path,
                       plugins=load_plugins(extra=_builtin_modules(without=("logger-mlflow",)), entry_points=False))
    [problem] = caught.value.problems
    assert problem.message == "unknown field 'mlflow'"
    assert problem.hint == ("logger 'mlflow' is provided by modelforge-logger-mlflow, which is not installed "
                            "(pip install modelforge-logger-mlflow)")


def test_hook_on_run_end() -> None:
    _check_lifecycle_hook("on_run_end")
    recorder = Recorder()
    plugins = load_plugins(extra=[("recorder", recorder)], entry_points=False)
    plugins.hooks.on_run_end(RUN, "failed", {}, "CUDA out of memory")
    assert recorder.calls[-1][1]["error"] == "CUDA out of memory"


def test_lifecycle_hooks_call_every_plugin_in_pluggy_order() -> None:
    order: list[str] = []

    def plugin(label: str, **opts: bool) -> object:
        class Logger:
            @hookimpl(**opts)
            def on_log(self, step: int) -> None:
                order.append(label)

        return Logger()

    plugins = load_plugins(extra=[("a", plugin("a")), ("b", plugin("b", tryfirst=True)), ("c", plugin("c"))],
                           entry_points=False)
    plugins.hooks.on_log(RUN, 1, {})
    assert order == ["b", "c", "a"]
