"""Every example config under ``schema/examples`` gets the same verdict from Python (jsonschema,
and the config engine) and from JavaScript (Ajv, Draft 2020-12), on the canonical schema and on
the effective schema of the built-in plugins; and the schema files themselves are sound.

Layout: ``examples/valid/*.json`` and ``examples/invalid/*.json`` are checked against the
canonical schema; ``examples/plugins/{valid,invalid}/*.json`` use plugin options and are checked
against the effective schema. Each invalid example has a ``NAME.expected.json`` sidecar:
``{"rule": ..., "errors": [{"path", "message", "hint"?}], "effective_schema"?: "valid"}``; the
problems' paths must be exactly those paths, and each message (and hint) must contain its text.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from modelforge_core.config import load_document, resolve_config
from modelforge_core.errors import Problem, ValidationFailed
from modelforge_core.plugins import Plugins
from modelforge_core.schema import canonical_schema, effective_schema, validate_instance

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO / "schema"
SCHEMA_FILE = SCHEMA_DIR / "training-config.schema.json"
EXAMPLES = SCHEMA_DIR / "examples"
AJV_SCRIPT = SCHEMA_DIR / "scripts" / "ajv-verdicts.mjs"
SIDECAR = ".expected.json"


@dataclass(frozen=True)
class Example:
    path: Path

    @property
    def name(self) -> str:
        return self.path.relative_to(EXAMPLES).as_posix()

    @property
    def uses_plugins(self) -> bool:
        return self.name.startswith("plugins/")

    @property
    def valid(self) -> bool:
        return self.path.parent.name == "valid"

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name[: -len(".json")] + SIDECAR)

    def config(self) -> Any:
        return json.loads(self.path.read_text("utf-8"))

    def expected(self) -> dict[str, Any]:
        return json.loads(self.sidecar.read_text("utf-8")) if not self.valid else {"errors": []}

    def expected_paths(self) -> set[str]:
        return {e["path"] for e in self.expected()["errors"]}

    def valid_under_effective_schema(self) -> bool:
        """Plugin options are unknown keys to the canonical schema but fine with the built-ins."""
        return self.valid or self.expected().get("effective_schema") == "valid"


def _examples() -> list[Example]:
    return [Example(p) for p in sorted(EXAMPLES.rglob("*.json")) if not p.name.endswith(SIDECAR)]


ALL = _examples()
CANONICAL = [ex for ex in ALL if not ex.uses_plugins]


def _ids(examples: list[Example]) -> list[str]:
    return [ex.name for ex in examples]


def _pointer(path: str) -> str:
    """``dpo.beta`` -> ``/dpo/beta``; ``(root)`` -> the empty pointer."""
    return "" if path == "(root)" else "/" + path.replace(".", "/")


def _assert_matches(example: Example, problems: list[Problem], *, check_messages: bool = True) -> None:
    """``problems`` are exactly the expected paths, each with the expected message (and hint)."""
    found = {p.path for p in problems}
    assert found == example.expected_paths(), "\n".join(f"{p.path}: {p.message}" for p in problems)
    if not check_messages:
        return
    for want in example.expected()["errors"]:
        at_path = [p for p in problems if p.path == want["path"]]
        assert any(want["message"] in p.message for p in at_path), (want, at_path)
        if "hint" in want:
            assert any(want["hint"] in (p.hint or "") for p in at_path), (want, at_path)


# --- the example folders ---------------------------------------------------------------------

def test_example_folders_are_populated_and_sidecars_match() -> None:
    names = {ex.name for ex in ALL}
    for folder in ("valid", "invalid", "plugins/valid", "plugins/invalid"):
        assert any(name.startswith(folder + "/") for name in names), folder
    for example in ALL:
        assert example.path.parent.name in ("valid", "invalid"), example.name
        assert example.sidecar.exists() != example.valid, f"{example.name}: sidecar only for invalid examples"
        if not example.valid:
            expected = example.expected()
            assert expected["errors"], example.name
            assert expected["rule"], example.name
    orphans = [p for p in EXAMPLES.rglob("*" + SIDECAR)
               if not p.with_name(p.name[: -len(SIDECAR)] + ".json").exists()]
    assert not orphans


def test_reference_examples_are_included() -> None:
    names = {ex.name for ex in CANONICAL if ex.valid}
    assert {"valid/reference-1-huggingface-qlora-low-end.json", "valid/reference-2-unsloth-qlora-mid-range.json",
            "valid/reference-3-unsloth-sft-high-end.json"} <= names


# --- Python: canonical schema, and the config engine -----------------------------------------

@pytest.mark.parametrize("example", CANONICAL, ids=_ids(CANONICAL))
def test_canonical_schema_verdict_in_python(example: Example) -> None:
    problems = validate_instance(example.config(), canonical_schema())
    assert (not problems) == example.valid, [f"{p.path}: {p.message}" for p in problems]
    _assert_matches(example, problems)


@pytest.mark.parametrize("example", ALL, ids=_ids(ALL))
def test_resolve_config_verdict(example: Example, builtin_plugins: Plugins) -> None:
    """The engine behind `modelforge validate` agrees (the machine's environment aside: unsloth
    need not be installed to validate an unsloth config here)."""
    document = load_document(example.path)
    if not example.valid_under_effective_schema():
        with pytest.raises(ValidationFailed) as failure:
            resolve_config(document, plugins=builtin_plugins)
        problems = failure.value.problems
        # Messages name installed plugins here (see the effective-schema test): paths only.
        _assert_matches(example, problems, check_messages=False)
        assert all(p.line for p in problems if p.path != "(root)"), problems
        return
    resolved = resolve_config(document, plugins=builtin_plugins)
    # The resolved config is complete and valid on its own.
    assert not validate_instance(resolved.data, effective_schema(builtin_plugins.registry), builtin_plugins)
    assert set(canonical_schema()["required"]) <= set(resolved)


# --- Python: effective schema ----------------------------------------------------------------

@pytest.mark.parametrize("example", ALL, ids=_ids(ALL))
def test_effective_schema_verdict_in_python(example: Example, builtin_plugins: Plugins) -> None:
    schema = effective_schema(builtin_plugins.registry)
    problems = validate_instance(example.config(), schema, builtin_plugins)
    assert (not problems) == example.valid_under_effective_schema(), [f"{p.path}: {p.message}" for p in problems]
    if problems:
        _assert_matches(example, problems, check_messages=example.uses_plugins)


# --- Ajv ---------------------------------------------------------------------------------------

@cache
def _node() -> str:
    node = shutil.which("node")
    if node is None or not (SCHEMA_DIR / "node_modules" / "ajv").is_dir():
        pytest.fail("node and schema/node_modules/ajv are needed for the cross-language check: run `make setup`")
    return node


def _ajv_verdicts(schema_path: Path, examples: list[Example]) -> dict[str, dict[str, Any]]:
    """One node process validates every example (Ajv, Draft 2020-12, strict mode, allErrors)."""
    items = [{"name": ex.name, "config": ex.config()} for ex in examples]
    result = subprocess.run([_node(), str(AJV_SCRIPT), str(schema_path), "-"], input=json.dumps(items),
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return {v["name"]: v for v in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def ajv_canonical() -> dict[str, dict[str, Any]]:
    return _ajv_verdicts(SCHEMA_FILE, CANONICAL)


@pytest.fixture(scope="module")
def effective_schema_file(tmp_path_factory: pytest.TempPathFactory, builtin_plugins: Plugins) -> Path:
    path = tmp_path_factory.mktemp("schema") / "effective.schema.json"
    path.write_text(json.dumps(effective_schema(builtin_plugins.registry)), "utf-8")
    return path


@pytest.fixture(scope="module")
def ajv_effective(effective_schema_file: Path) -> dict[str, dict[str, Any]]:
    return _ajv_verdicts(effective_schema_file, ALL)


def _ajv_paths(verdict: Mapping[str, Any], expected: set[str]) -> set[str]:
    # Ajv also reports a failed `if` at the object that holds it; drop it unless the root is meant.
    return {p for p in verdict["paths"] if p or "(root)" in expected}


@pytest.mark.parametrize("example", CANONICAL, ids=_ids(CANONICAL))
def test_canonical_schema_verdict_in_ajv(example: Example, ajv_canonical: dict[str, dict[str, Any]]) -> None:
    verdict = ajv_canonical[example.name]
    assert verdict["valid"] == example.valid, verdict
    expected = example.expected_paths()
    assert _ajv_paths(verdict, expected) == {_pointer(p) for p in expected}


@pytest.mark.parametrize("example", ALL, ids=_ids(ALL))
def test_effective_schema_verdict_in_ajv(example: Example, ajv_effective: dict[str, dict[str, Any]],
                                         builtin_plugins: Plugins) -> None:
    verdict = ajv_effective[example.name]
    problems = validate_instance(example.config(), effective_schema(builtin_plugins.registry), builtin_plugins)
    assert verdict["valid"] == (not problems) == example.valid_under_effective_schema(), verdict
    paths = {p.path for p in problems}
    assert _ajv_paths(verdict, paths) == {_pointer(p) for p in paths}


def test_ajv_refuses_what_it_should(tmp_path: Path) -> None:
    """The harness itself can say "invalid": a schema Ajv's strict mode rejects fails loudly."""
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema",
                                  "type": "object", "required": ["x"]}), "utf-8")
    result = subprocess.run([_node(), str(AJV_SCRIPT), str(broken), "-"], input="[]", capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode != 0
    assert "strict mode" in result.stderr


# --- the schema files --------------------------------------------------------------------------

def test_canonical_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads(SCHEMA_FILE.read_text("utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_effective_schema_is_valid_draft_2020_12(builtin_plugins: Plugins) -> None:
    schema = effective_schema(builtin_plugins.registry)
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] != canonical_schema()["$id"], "both must load side by side in one validator"


def test_schema_version_is_in_id_and_matches_npm_package() -> None:
    schema = canonical_schema()
    version = schema["$id"].split("/")[-2]
    major, model, revision = (int(part) for part in version.split("."))
    assert (major, model, revision) >= (1, 0, 0)
    package = json.loads((SCHEMA_DIR / "package.json").read_text("utf-8"))
    assert package["version"] == version
    assert schema["properties"]["$schema"]["examples"] == [schema["$id"]]


def _properties(schema: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield from schema["properties"].items()


#: Not a setting: an editor hint. A default would put it into every resolved config.
ANNOTATION_ONLY = {"$schema"}


def test_every_property_has_description_examples_and_default() -> None:
    schema = canonical_schema()
    required = set(schema["required"])
    for name, declared in _properties(schema):
        prop = {**declared, "$defs": schema.get("$defs", {})}  # so a local $ref resolves
        assert prop.get("description"), name
        assert prop.get("examples"), name
        if name not in required | ANNOTATION_ONLY:
            assert "default" in prop, name
            # The default is itself a valid value of the field.
            assert not list(Draft202012Validator(prop).iter_errors(prop["default"])), name
        else:
            assert "default" not in prop, name
        for example in prop["examples"]:
            assert not list(Draft202012Validator(prop).iter_errors(example)), (name, example)


def test_every_plugin_option_has_description_examples_and_default(builtin_plugins: Plugins) -> None:
    options = [c for c in builtin_plugins.registry.components() if c.options_schema is not None]
    assert {c.name for c in options} >= {"dpo", "rlhf", "summarization", "extractive-question-answering"}
    for component in options:
        for name, prop in component.options_schema["properties"].items():  # type: ignore[index]
            where = f"{component.name}.{name}"
            assert prop.get("description"), where
            assert prop.get("examples"), where
            if name in component.options_schema.get("required", ()):  # type: ignore[union-attr]
                assert "default" not in prop, f"{where} is required: a default would never apply"
                continue
            assert "default" in prop, where
            assert not list(Draft202012Validator(prop).iter_errors(prop["default"])), where


def _defaults_under_alternatives(node: Any, inside: bool = False, where: str = "#") -> Iterator[str]:
    if isinstance(node, Mapping):
        if inside and "default" in node:
            yield where
        for key, value in node.items():
            yield from _defaults_under_alternatives(value, inside or key in ("oneOf", "anyOf"), f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _defaults_under_alternatives(item, inside, f"{where}/{index}")


def test_no_default_inside_oneof_or_anyof(builtin_plugins: Plugins) -> None:
    assert not list(_defaults_under_alternatives(canonical_schema()))
    assert not list(_defaults_under_alternatives(effective_schema(builtin_plugins.registry)))


def test_cross_field_rules_are_described_if_then() -> None:
    for rule in canonical_schema()["allOf"]:
        assert rule.get("description"), rule
        assert set(rule) >= {"if", "then"}, rule


def test_package_copy_is_the_canonical_file() -> None:
    shipped = resources.files("modelforge_core").joinpath("data").joinpath("training-config.schema.json")
    assert shipped.read_bytes() == SCHEMA_FILE.read_bytes()
    assert (REPO / "modelforge_core" / "data" / "training-config.schema.json").resolve() == SCHEMA_FILE.resolve()


#: The reference's fields and defaults (None: required, no default).
REFERENCE_DEFAULTS: dict[str, Any] = {
    "task": None, "model_name": None, "provider": "huggingface", "strategy": "sft", "dataset": None,
    "compute_specs": None, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "use_4bit": True,
    "use_8bit": False, "bnb_4bit_compute_dtype": "float16", "bnb_4bit_quant_type": "nf4",
    "use_nested_quant": False, "fp16": False, "bf16": False, "num_train_epochs": 1,
    "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1, "gradient_accumulation_steps": 4,
    "gradient_checkpointing": True, "max_grad_norm": 0.3, "learning_rate": 2e-4, "weight_decay": 0.001,
    "optim": "paged_adamw_32bit", "lr_scheduler_type": "cosine", "max_steps": -1, "warmup_ratio": 0.03,
    "group_by_length": True, "packing": False, "max_seq_length": None, "eval_split": 0.2, "eval_steps": 100,
}


def test_every_reference_field_has_the_reference_default() -> None:
    schema = canonical_schema()
    for name, default in REFERENCE_DEFAULTS.items():
        prop = schema["properties"][name]
        if name in schema["required"]:
            assert default is None, name
        else:
            assert prop["default"] == default, name
            assert type(prop["default"]) is type(default), name


# --- the verdict does not depend on which built-ins are installed (issue 16) -----------------------

#: Installations that lack plugins: the core alone (what a CI linter or a frontend's back end
#: installs), and the built-ins without the unsloth provider and the dpo strategy.
PARTIAL_INSTALLS: dict[str, dict[str, Any]] = {
    "core-alone": {"entry_points": False},
    "without-unsloth-and-dpo": {"environ": {"MODELFORGE_DISABLE_PLUGINS": "provider-unsloth,strategy-dpo"}},
}


@pytest.mark.parametrize("install", sorted(PARTIAL_INSTALLS))
def test_partial_installs_give_the_canonical_verdict_in_python_and_ajv(install: str, tmp_path: Path) -> None:
    """Names the canonical schema accepts are valid without their plugin; Ajv on that
    installation's effective schema agrees with Python on every example, paths included."""
    from modelforge_core.plugins import load_plugins

    plugins = load_plugins(**PARTIAL_INSTALLS[install])
    assert set(plugins.registry.providers) != {"huggingface", "unsloth"}, "the install must lack something"
    schema = effective_schema(plugins.registry)
    Draft202012Validator.check_schema(schema)
    path = tmp_path / "effective.schema.json"
    path.write_text(json.dumps(schema), "utf-8")
    ajv = _ajv_verdicts(path, ALL)
    for example in ALL:
        problems = validate_instance(example.config(), schema, plugins)
        verdict = ajv[example.name]
        assert verdict["valid"] == (not problems), (example.name, verdict, problems)
        paths = {p.path for p in problems}
        assert _ajv_paths(verdict, paths) == {_pointer(p) for p in paths}, example.name
        if not example.uses_plugins:
            assert (not problems) == example.valid, (example.name, [f"{p.path}: {p.message}" for p in problems])
            _assert_matches(example, problems, check_messages=False)
