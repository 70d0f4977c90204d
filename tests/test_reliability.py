"""Bad input never crashes (issue 10): every case listed in docs/reliability.md, driven through
the real CLI, answers with one clear message and a non-zero exit, never a traceback.

Each case id below is the name used in the table of docs/reliability.md; a meta-test keeps
the two in step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelforge_core.cli import main
from modelforge_core.errors import ModelForgeError
from modelforge_core.plugins import load_plugins, set_plugins

REPO = Path(__file__).resolve().parents[1]
GOOD = {"task": "text-generation", "model_name": "./model", "dataset": "data.jsonl", "compute_specs": "low_end"}
GOOD_ROW = '{"input": "What is two plus two?", "output": "Four."}\n'


@dataclass
class Case:
    """One bad input: files to write, the command, what the user must see."""

    id: str
    files: dict[str, str | bytes]
    args: list[str]
    expect: list[str]
    exit_code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    #: Run in the case's folder after the files are written (FIFOs, symlinks to devices).
    setup: Callable[[Path], None] | None = None
    #: The whole output stays under this many characters (long values are cut).
    max_output: int = 20_000


def config(**changes: Any) -> str:
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None}, indent=2)


def data_case(case_id: str, content: str | bytes, expect: list[str], **config_changes: Any) -> Case:
    return Case(case_id, {"c.json": config(**config_changes), "data.jsonl": content},
                ["validate", "c.json", "--data"], expect)


def _with_setup(self: Case, setup: Callable[[Path], None]) -> Case:
    self.setup = setup
    return self


Case.with_setup = _with_setup  # type: ignore[attr-defined]


CONFIG_CASES = [
    Case("config-malformed-json", {"c.json": '{\n  "task": "text-generation",\n  "lora_r": 16,\n}\n'},
         ["validate", "c.json"], ["c.json:4:1: invalid JSON"]),
    Case("config-malformed-yaml", {"c.yaml": "task: text-generation\nlora_r: [16\n"},
         ["validate", "c.yaml"], ["c.yaml:", "invalid YAML"]),
    Case("config-empty-file", {"c.json": "  \n"}, ["validate", "c.json"], ["the config file is empty"]),
    Case("config-not-utf8", {"c.json": b'{"task": "\xff\xfe"}'}, ["validate", "c.json"], ["not UTF-8"]),
    Case("config-not-an-object", {"c.json": "[1, 2]"}, ["validate", "c.json"], ["must be a JSON object"]),
    Case("config-duplicate-key", {"c.json": '{"lora_r": 8,\n "lora_r": 16}'}, ["validate", "c.json"],
         ["duplicate key 'lora_r'"]),
    Case("config-missing-file", {}, ["validate", "nope.json"], ["nope.json", "not found"]),
    Case("config-is-a-folder", {"folder/x": ""}, ["validate", "folder"], ["folder"]),
    Case("config-missing-required", {"c.json": json.dumps({"task": "text-generation"})}, ["validate", "c.json"],
         ["model_name: required field is missing", "dataset: required field is missing",
          "compute_specs: required field is missing"]),
    Case("config-wrong-type", {"c.json": config(lora_r="16")}, ["validate", "c.json"], ["lora_r", "expected integer"]),
    Case("config-out-of-range", {"c.json": config(lora_r=300)}, ["validate", "c.json"],
         ["lora_r: 300 is above the maximum of 256"]),
    Case("config-learning-rate-zero", {"c.json": config(learning_rate=0)}, ["validate", "c.json"],
         ["learning_rate"]),
    Case("config-max-steps-zero", {"c.json": config(max_steps=0)}, ["validate", "c.json"], ["max_steps"]),
    Case("config-eval-split-one", {"c.json": config(eval_split=1)}, ["validate", "c.json"], ["eval_split"]),
    Case("config-empty-model-name", {"c.json": config(model_name=" ")}, ["validate", "c.json"],
         ["model_name: must not be empty"]),
    Case("config-unknown-key", {"c.json": config(lora_rank=8)}, ["validate", "c.json"],
         ["unknown field 'lora_rank'", "did you mean 'lora_r'?"]),
    Case("config-enum-typo", {"c.json": config(strategy="dpp")}, ["validate", "c.json"], ["strategy", "'dpo'"]),
    Case("config-4bit-and-8bit", {"c.json": config(use_8bit=True)}, ["validate", "c.json"],
         ["use_4bit", "mutually exclusive"]),
    Case("config-fp16-and-bf16", {"c.json": config(fp16=True, bf16=True)}, ["validate", "c.json"],
         ["bf16", "mutually exclusive"]),
    Case("config-qlora-without-4bit", {"c.json": config(strategy="qlora", use_4bit=False)},
         ["validate", "c.json"], ["use_4bit", "qlora"]),
    Case("config-unsloth-without-max-seq-length", {"c.json": config(provider="unsloth")},
         ["validate", "c.json"], ["max_seq_length"]),
    Case("config-incompatible-task-strategy", {"c.json": config(task="summarization", strategy="dpo")},
         ["validate", "c.json"], ["strategy"]),
    Case("config-plugin-disabled", {"c.json": config(strategy="dpo")}, ["train", "c.json"],
         ["modelforge-strategy-dpo", "MODELFORGE_DISABLE_PLUGINS"], exit_code=3,
         env={"MODELFORGE_DISABLE_PLUGINS": "strategy-dpo"}),
    Case("config-plugin-options-disabled", {"c.json": config(strategy="dpo", dpo={"beta": 0.2})},
         ["validate", "c.json"], ["unknown field 'dpo'", "modelforge-strategy-dpo", "MODELFORGE_DISABLE_PLUGINS"],
         env={"MODELFORGE_DISABLE_PLUGINS": "strategy-dpo"}),
    Case("config-bad-set-syntax", {"c.json": config()}, ["validate", "c.json", "--set", "lora_r"],
         ["expected KEY=VALUE"]),
    Case("config-set-wrong-type", {"c.json": config()}, ["validate", "c.json", "--set", "lora_r=many"],
         ["lora_r", "expected integer"]),
    Case("config-path-outside-data-root", {"c.json": config(dataset="/etc/passwd"), "root/x": ""},
         ["train", "c.json", "--data-root", "root"], ["outside the allowed data root"]),
]

DATA_CASES = [
    data_case("data-missing-file", "", ["dataset file not found"], dataset="missing.jsonl"),
    data_case("data-empty-file", "", ["the dataset file is empty"]),
    data_case("data-not-utf8", GOOD_ROW.encode() + b'{"input": "\xff", "output": "x"}\n',
              ["data.jsonl:2", "not UTF-8"]),
    data_case("data-malformed-json", GOOD_ROW + '{"input": "a", "output": }\n', ["data.jsonl:2", "invalid JSON"]),
    data_case("data-row-not-object", GOOD_ROW + '["a", "b"]\n', ["data.jsonl:2", "must be a JSON object"]),
    data_case("data-missing-field", GOOD_ROW + '{"input": "a"}\n', ["data.jsonl:2", "output: missing field"]),
    data_case("data-wrong-type", GOOD_ROW + '{"input": "a", "output": 5}\n',
              ["data.jsonl:2", "output: expected a string"]),
    data_case("data-empty-target", GOOD_ROW + '{"input": "a", "output": "  "}\n',
              ["data.jsonl:2", "output: must not be empty"]),
    data_case("data-unknown-shape", GOOD_ROW + '{"question": "a", "answer": "b"}\n', ["data.jsonl:2", "match no"]),
    data_case("data-chat-last-not-assistant",
              GOOD_ROW + '{"messages": [{"role": "user", "content": "hi"}]}\n', ["data.jsonl:2", "assistant"]),
    data_case("data-chat-bad-role",
              GOOD_ROW + '{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n',
              ["data.jsonl:2", "role must be one of"]),
    data_case("data-preference-rows-for-sft", GOOD_ROW + '{"prompt": "p", "chosen": "a", "rejected": "b"}\n',
              ["data.jsonl:2", "a preference row", "sft"]),
    data_case("data-supervised-rows-for-dpo", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n' + GOOD_ROW,
              ["data.jsonl:2", "a supervised row", "dpo"], strategy="dpo"),
    data_case("data-chosen-equals-rejected", '{"prompt": "p", "chosen": "same", "rejected": "same"}\n',
              ["data.jsonl:1", "identical"], strategy="dpo"),
    data_case("data-qa-answer-not-at-start",
              '{"context": "The harbour of Veloria is Quenlow.", "question": "Harbour?", '
              '"answers": {"text": ["Quenlow"], "answer_start": [3]}}\n',
              ["data.jsonl:1", "answers.answer_start[0]", "not at offset 3", "occurs at 26"],
              task="extractive-question-answering"),
    data_case("data-summary-missing", '{"document": "A long text."}\n', ["data.jsonl:1", "summary: missing field"],
              task="summarization"),
    data_case("data-too-many-errors", "".join('{"input": "a"}\n' for _ in range(60)),
              ["60 problems", "... and 40 more"]),
]

def fifo(name: str) -> Callable[[Path], None]:
    return lambda folder: os.mkfifo(folder / name)


def link(name: str, target: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).symlink_to(target)


def laughs(levels: int = 9) -> str:
    """A "billion laughs" YAML document: each anchor repeats the previous one nine times."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HUGE = "9" * 5000
DEEP = "[" * 100_000 + "]" * 100_000
BIG_VALUE = "x" * 3_000_000

# Issue 22: hostile and unlucky files, parser edge cases, long values.
ROUND_TWO_CASES = [
    Case("config-fifo", {}, ["validate", "c.json"], ["c.json", "is a FIFO (named pipe), not a regular file"],
         setup=fifo("c.json")),
    Case("config-dev-zero", {}, ["validate", "c.json"], ["c.json", "character device, not a regular file"],
         setup=link("c.json", "/dev/zero")),
    Case("config-dev-urandom", {}, ["validate", "c.yaml"], ["c.yaml", "not a regular file"],
         setup=link("c.yaml", "/dev/urandom")),
    Case("config-dev-zero-train", {}, ["train", "c.json"], ["not a regular file"],
         setup=link("c.json", "/dev/zero")),
    Case("config-too-large", {"c.json": '{"task": "text-generation"}' + " " * (5 << 20)}, ["validate", "c.json"],
         ["cannot read the config file", "bytes allowed"]),
    Case("config-yaml-billion-laughs", {"c.yaml": laughs()}, ["validate", "c.yaml"],
         ["c.yaml", "aliases expand the document beyond"]),
    Case("config-yaml-alias-fan-out", {"c.yaml": laughs(5) + "task: *a4\n"}, ["validate", "c.yaml"],
         ["aliases expand the document beyond"]),
    Case("config-yaml-recursive-alias", {"c.yaml": "x: &x [*x]\n"}, ["validate", "c.yaml"], ["nested too deeply"]),
    Case("config-huge-integer", {"c.json": config().replace('"low_end"', f'"low_end", "lora_r": {HUGE}')},
         ["validate", "c.json"], ["c.json:5:41:", "a number of 5,000 characters is too long"]),
    Case("config-huge-integer-yaml", {"c.yaml": f"task: text-generation\nlora_r: {HUGE}\n"}, ["validate", "c.yaml"],
         ["c.yaml:2:", "a number of 5,000 characters is too long"]),
    Case("config-huge-float-exponent", {"c.json": config().replace('"low_end"', '"low_end", "learning_rate": 1e999')},
         ["validate", "c.json"], ["out of range"]),
    Case("config-deep-nesting", {"c.json": DEEP}, ["validate", "c.json"], ["nested too deeply"]),
    Case("config-deep-nesting-yaml", {"c.yaml": "a: " + "[" * 5000 + "]" * 5000 + "\n"}, ["validate", "c.yaml"],
         ["nested too deeply"]),
    Case("config-lone-surrogate", {"c.json": config(run_name="\ud800")}, ["validate", "c.json"],
         ["lone surrogate"]),
    Case("config-nul-in-path", {"c.json": config(dataset="data\u0000.jsonl")}, ["validate", "c.json", "--data"],
         ["dataset: the path contains a NUL byte"]),
    Case("config-nul-in-output-dir", {"c.json": config(output_dir="out\u0000")}, ["train", "c.json"],
         ["output_dir: the path contains a NUL byte"]),
    Case("config-overlong-path", {"c.json": config(model_name="./" + "m" * 5000)}, ["validate", "c.json"],
         ["model_name: the path is 5,002 characters long"]),
    Case("config-huge-invalid-value", {"c.json": config(strategy=BIG_VALUE)}, ["validate", "c.json"],
         ["strategy", "characters cut"], max_output=3000),
    Case("config-huge-unknown-key", {"c.json": config(**{BIG_VALUE: 1})}, ["validate", "c.json", "--json"],
         ["unknown field", "characters cut"], max_output=4000),
    Case("config-set-huge-value", {"c.json": config()}, ["validate", "c.json", "--set", "strategy=" + "y" * 200_000],
         ["strategy", "characters cut"], max_output=3000),
    Case("config-seed-too-large", {"c.json": config(seed=2**32)}, ["validate", "c.json"],
         ["seed: 4294967296 is above the maximum of 4294967295"]),
    Case("config-output-dir-under-a-file", {"c.json": config(output_dir="file/run"), "file": "x",
                                            "data.jsonl": GOOD_ROW, "model/config.json": "{}"},
         ["train", "c.json"], ["output_dir", "is a file, not a folder"], exit_code=1),
    Case("config-output-dir-is-a-file", {"c.json": config(output_dir="file"), "file": "x",
                                         "data.jsonl": GOOD_ROW, "model/config.json": "{}"},
         ["train", "c.json"], ["output_dir", "is a file, not a folder"], exit_code=1),
    data_case("data-fifo", "", ["pipe.jsonl", "FIFO (named pipe)"], dataset="pipe.jsonl")
    .with_setup(fifo("pipe.jsonl")),
    data_case("data-dev-zero", "", ["not a regular file"], dataset="zero.jsonl")
    .with_setup(link("zero.jsonl", "/dev/zero")),
    data_case("data-dev-urandom", "", ["not a regular file"], dataset="/dev/urandom"),
    data_case("data-huge-integer", GOOD_ROW + '{"input": "a", "output": "b", "n": ' + HUGE + "}\n",
              ["data.jsonl:2", "invalid JSON", "digits"]),
    data_case("data-deep-row", GOOD_ROW + '{"input": "a", "output": "b", "n": ' + DEEP + "}\n",
              ["data.jsonl:2", "nested too deeply"]),
    data_case("data-nested-150", GOOD_ROW + '{"input": "a", "output": "b", "n": ' + "[" * 150 + "]" * 150 + "}\n",
              ["data.jsonl:2", "nested too deeply"]),
    data_case("data-lone-surrogate", GOOD_ROW + '{"input": "a\\udc80", "output": "b"}\n',
              ["data.jsonl:2", "lone surrogate"]),
    data_case("data-lone-surrogate-in-key", GOOD_ROW + '{"input": "a", "output": "b", "\\ud800": 1}\n',
              ["data.jsonl:2", "lone surrogate"]),
    data_case("data-huge-field-names", GOOD_ROW + json.dumps({BIG_VALUE: 1}) + "\n",
              ["data.jsonl:2", "characters cut"]),
]
for _case in ROUND_TWO_CASES:
    if _case.id == "data-huge-field-names":
        _case.max_output = 3000

CASES = {case.id: case for case in CONFIG_CASES + DATA_CASES + ROUND_TWO_CASES}


def run_cli(tmp_path: Path, case: Case, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    if case.setup is not None:
        case.setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    for key in ("MODELFORGE_LOAD_PLUGINS", "MODELFORGE_DISABLE_PLUGINS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    set_plugins(load_plugins())
    try:
        return CliRunner().invoke(main, case.args, obj={})
    finally:
        set_plugins(None)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input_gets_one_clear_message(case_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[case_id]
    result = run_cli(tmp_path, case, monkeypatch)
    output = result.output
    assert result.exit_code == case.exit_code, output
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}"
    assert "Traceback" not in output
    assert len(output) < case.max_output, f"{len(output)} characters of output"
    for text in case.expect:
        assert text in output, f"{text!r} not in:\n{output[:3000]}"


def test_reliability_doc_lists_every_case_with_its_test() -> None:
    doc = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|.*\| `(tests/[^`]+)` \|$", doc, flags=re.M)
    assert len(rows) >= 40
    stated = re.search(r"The table lists \*\*(\d+) cases\*\*", doc)
    assert stated and int(stated.group(1)) == len(rows), "update the count of cases in docs/reliability.md"
    documented = {case_id for case_id, _ in rows}
    assert set(CASES) <= documented, set(CASES) - documented
    for case_id, test in rows:
        file, _, name = test.partition("::")
        assert (REPO / file).is_file(), test
        source = (REPO / file).read_text(encoding="utf-8")
        if case_id in CASES:
            assert file == "tests/test_reliability.py"
        else:
            assert f"def {name.split('[')[0]}(" in source, f"{test} does not exist"


# --- generated input -----------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
KEYS = st.sampled_from(["task", "model_name", "dataset", "compute_specs", "strategy", "provider", "lora_r",
                        "use_4bit", "use_8bit", "fp16", "bf16", "max_steps", "eval_split", "max_seq_length",
                        "lora_target_modules", "dpo", "rlhf", "summarization", "unknown"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=10) | JSON_VALUES)
def test_generated_configs_raise_only_our_errors(builtin_plugins: Any, data: Any) -> None:
    from modelforge_core.config import resolve_config

    with contextlib.suppress(ModelForgeError):
        resolve_config(data if isinstance(data, dict) else {"value": data}, plugins=builtin_plugins)


ROW_VALUES = st.dictionaries(
    st.sampled_from(["input", "output", "messages", "prompt", "completion", "chosen", "rejected", "system",
                     "document", "summary", "context", "question", "answers", "x"]),
    JSON_VALUES | st.lists(st.fixed_dictionaries({"role": st.text(max_size=10), "content": JSON_VALUES}),
                           max_size=3),
    max_size=5,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW_VALUES | JSON_VALUES, min_size=0, max_size=5),
       task=st.sampled_from(["text-generation", "summarization", "extractive-question-answering"]),
       strategy=st.sampled_from(["sft", "dpo"]))
def test_generated_rows_raise_only_our_errors(builtin_plugins: Any, tmp_path_factory: Any, rows: list[Any],
                                              task: str, strategy: str) -> None:
    from modelforge_core.data import check_dataset

    path = tmp_path_factory.mktemp("rows") / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with contextlib.suppress(ModelForgeError):
        check_dataset({"task": task, "strategy": strategy, "dataset": str(path)}, plugins=builtin_plugins)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_config_bytes_raise_only_our_errors(content: bytes) -> None:
    import tempfile

    from modelforge_core.config import load_document

    with tempfile.TemporaryDirectory() as folder:
        for name in ("c.json", "c.yaml"):
            path = Path(folder) / name
            path.write_bytes(content)
            with contextlib.suppress(ModelForgeError):
                load_document(path)
