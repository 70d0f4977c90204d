"""Dataset sources and row formats with a tokenizer and a real training (issue 18).

The token ids and loss masks that training uses (the task's formatting, then the same
tokenization as TRL's SFTTrainer, as in ``modelforge_core.training``) are identical from every
source kind and row format to those from the JSONL equivalent; ``validate --show`` marks
exactly the assistant's tokens and the end of its turn; a weighted two-source mixture (parquet
and a hub dataset) trains through the CLI and the manifest records both fingerprints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge_core.config import resolve_config
from modelforge_core.data import check_dataset
from modelforge_core.plugins import Plugins
from modelforge_core.testing.datasets import capital_rows, write_jsonl
from modelforge_core.testing.pytest_plugin import tiny_config
from modelforge_core.testing.sources import save_to_disk, write_arrow, write_delimited, write_hub_dataset, write_parquet

pytestmark = pytest.mark.slow

ROWS = capital_rows()[:16]
SYSTEM = "Answer briefly."


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def tokenizer(tiny_causal_lm: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_causal_lm))


def _token_ids(plugins: Plugins, model: Path, dataset: Any, tokenizer: Any) -> tuple[list[Any], list[Any]]:
    """The ``input_ids`` and ``completion_mask`` training computes for ``dataset``."""
    from modelforge_core.datacache import prepare_sft_dataset

    config = resolve_config(tiny_config(model, dataset), plugins=plugins)
    data = check_dataset(config, plugins=plugins)
    task = plugins.registry.tasks["text-generation"]
    built = task.build_dataset(data.rows, shape="supervised", tokenizer=tokenizer, config=config, head="causal-lm")
    prepared = prepare_sft_dataset(built, tokenizer, config)
    return list(prepared["input_ids"]), list(prepared["completion_mask"])


def test_every_source_and_format_trains_on_the_jsonl_token_ids(tmp_path: Path, hub_cache: Path, tiny_causal_lm: Path,
                                                               tokenizer: Any, builtin_plugins: Plugins) -> None:
    io_rows = [{"system": SYSTEM, **r} for r in ROWS]
    reference = _token_ids(builtin_plugins, tiny_causal_lm, str(write_jsonl(tmp_path / "io.jsonl", io_rows)),
                           tokenizer)
    assert len(reference[0]) == len(ROWS) and all(sum(mask) > 0 for mask in reference[1])
    alpaca = [{"instruction": r["input"], "input": "", "output": r["output"], "system": SYSTEM} for r in ROWS]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca), "utf-8")
    commit = write_hub_dataset(hub_cache, "owner/harbours", {"data/train-00000-of-00001.parquet": alpaca})
    sources = {
        "json": str(tmp_path / "alpaca.json"),
        "parquet": str(write_parquet(tmp_path / "a.parquet", alpaca)),
        "csv": str(write_delimited(tmp_path / "a.csv", alpaca)),
        "arrow": str(write_arrow(tmp_path / "a.arrow", alpaca)),
        "save_to_disk": str(save_to_disk(tmp_path / "saved", alpaca)),
        "hub": f"hf://owner/harbours@{commit}:train",
    }
    formats = {
        "messages": [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["input"]},
                                   {"role": "assistant", "content": r["output"]}]} for r in ROWS],
        "sharegpt": [{"system": SYSTEM, "conversations": [{"from": "human", "value": r["input"]},
                                                          {"from": "gpt", "value": r["output"]}]} for r in ROWS],
    }
    for name, rows in formats.items():
        sources[name] = str(write_jsonl(tmp_path / f"{name}.jsonl", rows))
    mapped = [{"q": r["input"], "a": r["output"], "sys": SYSTEM} for r in ROWS]
    sources["columns"] = {"path": str(write_parquet(tmp_path / "mapped.parquet", mapped)),
                          "columns": {"input": "q", "output": "a", "system": "sys"}}
    for name, dataset in sources.items():
        assert _token_ids(builtin_plugins, tiny_causal_lm, dataset, tokenizer) == reference, name


def test_show_marks_exactly_the_assistant_tokens_and_the_end_of_turn(tmp_path: Path, tiny_causal_lm: Path,
                                                                     tokenizer: Any, builtin_plugins: Plugins,
                                                                     use_plugins: Any) -> None:
    from modelforge_core.cli import main

    use_plugins(builtin_plugins)
    answer = ROWS[0]["output"]
    chat = [{"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": r["input"]},
                               {"from": "gpt", "value": r["output"]}]} for r in ROWS]
    data = write_jsonl(tmp_path / "chat.jsonl", chat)
    config = tmp_path / "c.json"
    config.write_text(json.dumps(tiny_config(tiny_causal_lm, data, max_seq_length=40)))
    result = CliRunner().invoke(main, ["validate", str(config), "--data", "--show", str(len(ROWS)), "--json"], obj={},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    preview = json.loads(result.output)["preview"]
    first = preview["rows"][0]
    trained = [s["text"] for s in first["segments"] if s["trained"]]
    end_of_turn = "<|im_end|>"
    # One trained span: the answer, the end-of-turn token, and the newline the template puts after it.
    assert trained == [answer + end_of_turn + "\n"]
    untrained = "".join(s["text"] for s in first["segments"] if not s["trained"])
    assert untrained.endswith("<|im_start|>assistant\n") and answer not in untrained
    ids = [i for i, m in zip(first["input_ids"], first["loss_mask"], strict=True) if m]
    assert ids == tokenizer(answer + end_of_turn + "\n", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids(end_of_turn) in ids
    assert preview["max_seq_length"] == 40 and preview["total_rows"] == len(ROWS)
    assert preview["truncated_rows"] == sum(1 for row in preview["rows"] if row["tokens"] > 40)
    text = CliRunner().invoke(main, ["validate", str(config), "--data", "--show", "1"], obj={},
                              catch_exceptions=False).output
    assert f"[[{answer}{end_of_turn}\n]]" in text
    assert f"{preview['truncated_rows']} row" in text and "max_seq_length 40" in text


def test_weighted_two_source_mixture_trains_through_the_cli(tmp_path: Path, hub_cache: Path, tiny_causal_lm: Path,
                                                            builtin_plugins: Plugins, use_plugins: Any) -> None:
    from modelforge_core.cli import main

    use_plugins(builtin_plugins)
    parquet = write_parquet(tmp_path / "harbours.parquet",
                            [{"instruction": r["input"], "input": "", "output": r["output"]} for r in ROWS])
    chats = [{"conversations": [{"from": "human", "value": r["input"]}, {"from": "gpt", "value": r["output"]}]}
             for r in capital_rows()[16:24]]
    commit = write_hub_dataset(hub_cache, "owner/chats", {"data/train-00000-of-00001.parquet": chats})
    config = tmp_path / "c.json"
    mixture = [{"path": parquet.name, "weight": 1}, {"path": "hf://owner/chats", "weight": 1}]
    config.write_text(json.dumps(tiny_config(tiny_causal_lm, mixture, output_dir=str(tmp_path / "run"),
                                             num_train_epochs=1)))
    result = CliRunner().invoke(main, ["train", str(config), "--quiet"], obj={}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    data = json.loads((run / "manifest.json").read_text())["data"]
    parquet_source, hub_source = data["sources"]
    assert parquet_source["kind"] == "file" and parquet_source["fingerprint"].startswith("sha256:")
    assert hub_source["kind"] == "hub" and hub_source["revision"] == commit
    assert hub_source["fingerprint"].startswith("sha256:")
    assert hub_source["fingerprint"] != parquet_source["fingerprint"]
    assert [s["used_rows"] for s in data["sources"]] == [12, 12]  # 24 rows, weights 1:1, the hub repeated
    assert data["formats"] == {"alpaca": 16, "sharegpt": 8} and data["rows"] == 24
    # After training, the eval split is rebuilt from both sources (the hub one from the cache).
    evaluated = CliRunner().invoke(main, ["evaluate", str(run), "--json"], obj={}, catch_exceptions=False)
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    assert report["dataset"]["fingerprint"] == data["fingerprint"] and report["dataset"]["rows"] == data["eval_rows"]
    assert report["metrics"]["eval_loss"] > 0
