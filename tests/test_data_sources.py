"""Dataset sources and row formats (issue 18), light: no model, no tokenizer.

Every source kind (JSONL, JSON, parquet, CSV, TSV, arrow, a folder, ``save_to_disk``, a hub
dataset from a hub cache on disk) and every row format (ModelForge keys, alpaca, sharegpt,
OpenAI messages, a column mapping) gives the same checked rows as the JSONL equivalent; keys no
format uses and rows two formats match are refused; bad rows are named by source and line or
row index; mixtures follow their weights and fractions; plugins add sources through the hook.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from modelforge_core import hookimpl
from modelforge_core.api import DataSource, SourceRows, SourceSpec, Task
from modelforge_core.config import resolve_config
from modelforge_core.data import check_dataset
from modelforge_core.errors import Problem, ValidationFailed
from modelforge_core.plugins import Plugins, load_plugins
from modelforge_core.rowformats import native
from modelforge_core.schema import effective_schema
from modelforge_core.testing.datasets import capital_rows, write_jsonl
from modelforge_core.testing.sources import save_to_disk, write_arrow, write_delimited, write_hub_dataset, write_parquet

BASE = {"task": "text-generation", "model_name": "Qwen/Qwen2.5-0.5B-Instruct", "compute_specs": "low_end"}
ROWS = capital_rows()[:12]
ALPACA = [{"instruction": r["input"], "input": "", "output": r["output"]} for r in ROWS]


def _check(plugins: Plugins, dataset: Any, base_dir: Path | None = None, **config: Any) -> Any:
    resolved = resolve_config({**BASE, **config, "dataset": dataset}, plugins=plugins, base_dir=base_dir)
    return check_dataset(resolved, plugins=plugins)


def _problems(plugins: Plugins, dataset: Any, **config: Any) -> list[Problem]:
    with pytest.raises(ValidationFailed) as failure:
        _check(plugins, dataset, **config)
    return failure.value.problems


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache for this test, offline, as huggingface_hub reads it."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


# --- the defect: alpaca rows were read as input/output and the instruction dropped ------------

def test_alpaca_rows_keep_their_instruction(tmp_path: Path, builtin_plugins: Plugins) -> None:
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": "what is 2 + 9 ?", "input": "", "output": "2 + 9 = 11 ."},
                                {"instruction": "add", "input": "3 + 4", "output": "7"}]), "utf-8")
    dataset = _check(builtin_plugins, str(data))
    assert dataset.rows == [{"input": "what is 2 + 9 ?", "output": "2 + 9 = 11 ."},
                            {"input": "add\n\n3 + 4", "output": "7"}]
    assert dataset.formats == {"alpaca": 2}
    assert dataset.describe() == "2 rows OK (supervised: 2 alpaca)"


def test_a_key_no_format_uses_is_an_error_with_its_line(tmp_path: Path, builtin_plugins: Plugins) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {**ROWS[1], "instrution": "typo"}, ROWS[2],
                                              {**ROWS[3], "id": 7, "lang": "en"}])
    problems = _problems(builtin_plugins, str(data))
    assert [(p.line, p.path, p.code) for p in problems] == [
        (2, "instrution", "unknown_field"), (4, "id", "unknown_field"), (4, "lang", "unknown_field")]
    assert "not in the input_output row format (only in: sharegpt)" in problems[1].message
    assert "no text-generation row format" in problems[2].message
    assert problems[0].file == str(data) and "ignore_columns" in (problems[0].hint or "")
    # Dropped on purpose, they are fine.
    kept = _check(builtin_plugins, {"path": str(data), "ignore_columns": ["instrution", "id", "lang"]})
    assert kept.rows == ROWS[:4]


class _Overlapping(Task):
    """A task with two formats that a {"q", "a"} row both matches."""

    name: ClassVar[str] = "overlapping-task"
    heads: ClassVar[tuple[str, ...]] = ("causal-lm",)
    formats = (native("short", {"q", "a"}), native("long", {"q", "a"}, {"context"}))

    def row_shape(self, row: Any) -> str | None:
        return "supervised"

    def check_row(self, row: Any, shape: str) -> list[Problem]:
        return []


class _RegistersOverlapping:
    @hookimpl
    def register_tasks(self, register: Any) -> None:
        register(_Overlapping())


def test_a_row_two_formats_match_is_refused_never_guessed(tmp_path: Path) -> None:
    plugins = load_plugins(extra=[("overlapping", _RegistersOverlapping())], environ={})
    data = write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "a": "y"}, {"q": "x", "a": "y", "context": "c"}])
    problems = _problems(plugins, str(data), task="overlapping-task")
    assert [(p.line, p.code) for p in problems] == [(1, "ambiguous_format")]
    assert "short, long" in problems[0].message and '"format"' in (problems[0].hint or "")
    chosen = _check(plugins, {"path": str(data), "format": "long"}, task="overlapping-task")
    assert chosen.formats == {"long": 2}
    # The effective schema offers the task's formats.
    enum = effective_schema(plugins.registry)["$defs"]["dataSource"]["properties"]["format"]["enum"]
    assert {"short", "long", "alpaca", "sharegpt"} <= set(enum)


# --- every row format gives the ModelForge rows ----------------------------------------------

def test_row_formats_become_the_same_rows(tmp_path: Path, builtin_plugins: Plugins) -> None:
    chat = [{"role": "system", "content": "Answer briefly."}]
    expected = [{"messages": [*chat, {"role": "user", "content": r["input"]},
                              {"role": "assistant", "content": r["output"]}]} for r in ROWS]
    sharegpt = [{"system": "Answer briefly.", "conversations": [
        {"from": "human", "value": r["input"]}, {"from": "gpt", "value": r["output"]}]} for r in ROWS]
    assert _check(builtin_plugins, str(write_jsonl(tmp_path / "s.jsonl", sharegpt))).rows == expected
    openai = [{"messages": [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                            {"role": "user", "content": r["input"]},
                            {"role": "assistant", "content": r["output"]}]} for r in ROWS]
    dataset = _check(builtin_plugins, str(write_jsonl(tmp_path / "o.jsonl", openai)))
    assert dataset.rows == expected and dataset.formats == {"messages": 12}
    tool = [{"messages": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "calling"},
                          {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}]
    assert _check(builtin_plugins, str(write_jsonl(tmp_path / "t.jsonl", tool))).rows == tool
    mapped = [{"question": r["input"], "answer": r["output"]} for r in ROWS]
    dataset = _check(builtin_plugins, {"path": str(write_jsonl(tmp_path / "m.jsonl", mapped)),
                                       "columns": {"input": "question", "output": "answer"}})
    assert dataset.rows == ROWS and dataset.formats == {"input_output": 12}
    swapped = _check(builtin_plugins, {"path": str(write_jsonl(tmp_path / "w.jsonl", ROWS)),
                                       "columns": {"input": "output", "output": "input"}})
    assert swapped.rows[0] == {"input": ROWS[0]["output"], "output": ROWS[0]["input"]}


def test_a_missing_mapped_column_and_a_bad_speaker_are_reported(tmp_path: Path, builtin_plugins: Plugins) -> None:
    data = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a"}, {"question": "q"}])
    problems = _problems(builtin_plugins, {"path": str(data), "columns": {"input": "question", "output": "answer"}})
    assert [(p.line, p.path, p.code) for p in problems] == [(2, "answer", "missing_field")]
    bad = write_jsonl(tmp_path / "s.jsonl", [{"conversations": [{"from": "robot", "value": "hi"},
                                                                {"from": "gpt", "value": "x"}]}])
    problems = _problems(builtin_plugins, str(bad))
    assert [(p.line, p.path) for p in problems] == [(1, "messages[0].role")]


# --- every source kind gives the JSONL rows --------------------------------------------------

def _every_source(root: Path, hub_cache: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    (root / "d.json").write_text(json.dumps(rows), "utf-8")
    folder = root / "folder"
    write_parquet(folder / "part-0.parquet", rows[:5])
    write_jsonl(folder / "part-1.jsonl", rows[5:])
    commit = write_hub_dataset(hub_cache, "owner/harbours", {"data/train-00000-of-00001.parquet": rows,
                                                             "data/test-00000-of-00001.parquet": rows[:2]})
    return {
        "jsonl": str(write_jsonl(root / "d.jsonl", rows)),
        "json": str(root / "d.json"),
        "parquet": str(write_parquet(root / "d.parquet", rows)),
        "csv": str(write_delimited(root / "d.csv", rows)),
        "tsv": str(write_delimited(root / "d.tsv", rows)),
        "arrow": str(write_arrow(root / "d.arrow", rows)),
        "folder": str(folder),
        "save_to_disk": str(save_to_disk(root / "saved", rows)),
        "hub": "hf://owner/harbours",
        "hub-commit": f"hf://owner/harbours@{commit}:train",
    }


def test_every_source_kind_gives_the_jsonl_rows(tmp_path: Path, hub_cache: Path,
                                                builtin_plugins: Plugins) -> None:
    sources = _every_source(tmp_path, hub_cache, ALPACA)
    reference = _check(builtin_plugins, sources["jsonl"])
    assert reference.rows == ROWS
    for kind, location in sources.items():
        dataset = _check(builtin_plugins, location)
        assert dataset.rows == reference.rows, kind
        assert dataset.formats == {"alpaca": len(ROWS)}, kind
        assert dataset.fingerprint.startswith("sha256:"), kind
    hub = _check(builtin_plugins, sources["hub"])
    assert hub.sources[0]["kind"] == "hub" and len(hub.sources[0]["revision"]) == 40
    assert _check(builtin_plugins, "hf://owner/harbours:test").rows == ROWS[:2]
    # One file's fingerprint is the sha256 of its bytes, as before.
    import hashlib

    assert reference.fingerprint == "sha256:" + hashlib.sha256(Path(sources["jsonl"]).read_bytes()).hexdigest()


def test_hub_dataset_missing_from_the_offline_cache(hub_cache: Path, builtin_plugins: Plugins) -> None:
    problems = _problems(builtin_plugins, "hf://owner/absent")
    assert problems[0].code == "hub_missing" and "HF_HUB_OFFLINE" in problems[0].message
    write_hub_dataset(hub_cache, "owner/harbours", {"train.jsonl": ROWS})
    problems = _problems(builtin_plugins, "hf://owner/harbours:validation")
    assert problems[0].code == "missing_split"


def test_owner_name_is_a_local_folder_when_there_else_the_hub(tmp_path: Path, hub_cache: Path,
                                                              builtin_plugins: Plugins) -> None:
    write_hub_dataset(hub_cache, "owner/harbours", {"train.jsonl": ROWS})
    hub = _check(builtin_plugins, "owner/harbours", base_dir=tmp_path)
    assert hub.sources[0]["kind"] == "hub"
    assert "read as the hub dataset hf://owner/harbours" in hub.notes[0] and "./owner/harbours" in hub.notes[0]
    write_jsonl(tmp_path / "owner" / "harbours" / "mine.jsonl", ROWS[:3])
    local = _check(builtin_plugins, "owner/harbours", base_dir=tmp_path)
    assert local.rows == ROWS[:3] and local.sources[0]["kind"] == "folder"
    assert "write hf://owner/harbours for the hub" in local.notes[0]
    forced = _check(builtin_plugins, {"path": "owner/harbours", "source": "hub"}, base_dir=tmp_path)
    assert forced.rows == ROWS


# --- bad rows by source and row, all at once -------------------------------------------------

def test_bad_rows_in_parquet_and_hub_are_named_by_row_index(tmp_path: Path, hub_cache: Path,
                                                            builtin_plugins: Plugins) -> None:
    rows = [dict(r) for r in ALPACA]
    rows[3]["output"] = ""
    rows[7]["output"] = "   "
    parquet = write_parquet(tmp_path / "bad.parquet", rows)
    problems = _problems(builtin_plugins, str(parquet))
    assert [(p.file, p.row, p.path) for p in problems] == [(str(parquet), 3, "output"), (str(parquet), 7, "output")]
    assert problems[0].location() == f"{parquet} row 3"
    write_hub_dataset(hub_cache, "owner/bad", {"data/train-00000-of-00001.parquet": rows})
    problems = _problems(builtin_plugins, "hf://owner/bad")
    assert [(p.row, p.path) for p in problems] == [(3, "output"), (7, "output")]
    assert problems[0].file.startswith("hf://owner/bad@") and problems[0].file.endswith(":train")
    # Both sources of a mixture at once, and a CSV by line (its header is line 1).
    csv = write_delimited(tmp_path / "bad.csv", rows)
    problems = _problems(builtin_plugins, [str(parquet), {"path": str(csv)}])
    assert [(p.file, p.row or p.line) for p in problems] == [
        (str(parquet), 3), (str(parquet), 7), (str(csv), 5), (str(csv), 9)]


def test_non_regular_files_are_refused(tmp_path: Path, builtin_plugins: Plugins) -> None:
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    problems = _problems(builtin_plugins, str(fifo))
    assert problems[0].code == "not_regular"


def test_validate_cli_names_the_format_and_the_note(tmp_path: Path, hub_cache: Path,
                                                    builtin_plugins: Plugins, use_plugins: Any) -> None:
    from modelforge_core.cli import main

    use_plugins(builtin_plugins)
    write_hub_dataset(hub_cache, "owner/harbours", {"train.jsonl": ALPACA})
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**BASE, "dataset": "owner/harbours"}))
    result = CliRunner().invoke(main, ["validate", str(config), "--data"], obj={}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "12 rows OK (supervised: 12 alpaca)" in result.output
    assert "read as the hub dataset hf://owner/harbours" in result.output
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"instruction": "x", "input": "", "output": "y", "id": 1}])
    config.write_text(json.dumps({**BASE, "dataset": str(bad)}))
    result = CliRunner().invoke(main, ["validate", str(config), "--data"], obj={}, catch_exceptions=False)
    assert result.exit_code == 2
    assert f"{bad}:2" in result.output and "field 'id' is not in the alpaca row format" in result.output


# --- mixtures --------------------------------------------------------------------------------

def test_mixture_weights_and_fractions(tmp_path: Path, builtin_plugins: Plugins) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", ROWS)  # 12 rows
    b = write_parquet(tmp_path / "b.parquet", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(4)])
    both = _check(builtin_plugins, [str(a), str(b)])
    assert len(both.rows) == 16 and both.formats == {"input_output": 12, "prompt_completion": 4}
    weighted = _check(builtin_plugins, [{"path": str(a), "weight": 1}, {"path": str(b), "weight": 3}])
    assert [s["used_rows"] for s in weighted.sources] == [4, 12]  # 16 rows, 1:3; b repeated 3 times
    assert [s["fingerprint"] for s in weighted.sources] == [both.sources[0]["fingerprint"],
                                                            both.sources[1]["fingerprint"]]
    assert weighted.fingerprint != both.fingerprint
    again = _check(builtin_plugins, [{"path": str(a), "weight": 1}, {"path": str(b), "weight": 3}])
    assert again.rows == weighted.rows  # seeded
    other_seed = _check(builtin_plugins, [{"path": str(a), "weight": 1}, {"path": str(b), "weight": 3}], seed=7)
    assert other_seed.rows[:4] != weighted.rows[:4]
    half = _check(builtin_plugins, [{"path": str(a), "fraction": 0.5}, str(b)])
    assert [s["used_rows"] for s in half.sources] == [6, 4]


# --- the hook --------------------------------------------------------------------------------

class _Memory(DataSource):
    """Rows held in memory, under ``memory://<table>``."""

    name: ClassVar[str] = "memory"
    options_schema: ClassVar[dict[str, Any]] = {"properties": {"limit": {
        "type": "integer", "minimum": 1, "default": 100, "description": "Rows to read.", "examples": [10]}}}
    tables: ClassVar[dict[str, list[Any]]] = {}

    def claims(self, location: str) -> bool:
        return location.startswith("memory://")

    def read(self, spec: SourceSpec) -> SourceRows:
        limit = spec.options(self.name).get("limit", 100)
        table = self.tables[spec.path.removeprefix("memory://")][:limit]
        return SourceRows(spec.path, list(enumerate(table)), unit="row", fingerprint=f"memory:{len(table)}",
                          info={"kind": "memory"})


class _RegistersMemory:
    @hookimpl
    def register_data_sources(self, register: Any) -> None:
        register(_Memory())


@pytest.fixture
def memory_plugins() -> Plugins:
    _Memory.tables = {"harbours": [*ALPACA[:3], {"instruction": "x", "output": ""}]}
    return load_plugins(extra=[("memory", _RegistersMemory())], environ={})


def test_hook_register_data_sources(memory_plugins: Plugins, builtin_plugins: Plugins) -> None:
    assert set(builtin_plugins.registry.sources) == {"local", "hub"}  # the built-ins come through the hook
    assert builtin_plugins.registry.owner_of(builtin_plugins.registry.sources["hub"]).distribution == "modelforge-core"
    registry = memory_plugins.registry
    assert isinstance(registry.sources["memory"], _Memory)
    source_schema = effective_schema(registry)["$defs"]["dataSource"]["properties"]
    assert "memory" in source_schema["source"]["enum"] and source_schema["memory"]["type"] == "object"
    problems = _problems(memory_plugins, "memory://harbours")
    assert [(p.file, p.row, p.path) for p in problems] == [("memory://harbours", 3, "output")]
    dataset = _check(memory_plugins, {"path": "memory://harbours", "memory": {"limit": 3}})
    assert dataset.rows == ROWS[:3] and dataset.sources[0]["kind"] == "memory"
    with pytest.raises(ValidationFailed) as failure:
        _check(memory_plugins, {"path": "memory://harbours", "memory": {"limit": 0}})
    assert failure.value.problems[0].path == "dataset.memory.limit"


def test_data_root_covers_source_objects_mixtures_and_hub_datasets(tmp_path: Path, builtin_plugins: Plugins) -> None:
    root = tmp_path / "root"
    inside = write_jsonl(root / "ok.jsonl", ROWS)
    write_jsonl(root / "team" / "data" / "rows.jsonl", ROWS)

    def refused(dataset: Any) -> list[str]:
        try:
            resolve_config({**BASE, "dataset": dataset}, plugins=builtin_plugins, base_dir=root, data_root=root)
        except ValidationFailed as failure:
            return [p.code for p in failure.problems]
        return []

    assert refused([{"path": "ok.jsonl"}, "team/data"]) == []
    assert refused({"path": str(inside)}) == []
    assert refused({"path": "/etc/passwd"}) == ["outside_root"]
    assert refused([str(inside), {"path": "../outside.jsonl", "weight": 2}]) == ["outside_root"]
    assert refused("hf://owner/name") == ["outside_root"]
    assert refused("owner/name") == ["outside_root"]  # not under the root, so it would be the hub


def test_a_saved_dataset_dict_reads_its_split(tmp_path: Path, builtin_plugins: Plugins) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ALPACA), "test": Dataset.from_list(ALPACA[:2])}).save_to_disk(
        str(tmp_path / "dict"))
    assert _check(builtin_plugins, str(tmp_path / "dict")).rows == ROWS
    assert _check(builtin_plugins, {"path": str(tmp_path / "dict"), "split": "test"}).rows == ROWS[:2]
    problems = _problems(builtin_plugins, {"path": str(tmp_path / "dict"), "split": "validation"})
    assert problems[0].code == "missing_split" and "train" in problems[0].message
