"""Models from strangers, runs that break (issue 10): nothing runs that should not, nothing
finished is lost, and every failure is one message and a non-zero exit."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge_core.cli import main
from modelforge_core.errors import RunError
from modelforge_core.plugins import set_plugins
from modelforge_core.runs import RunDir
from modelforge_core.testing.pytest_plugin import tiny_config


def invoke(args: list[str], plugins: Any) -> Any:
    set_plugins(plugins)
    try:
        return CliRunner().invoke(main, args, obj={})
    finally:
        set_plugins(None)


def write_config(tmp_path: Path, model: Path | str, dataset: Path, **overrides: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config(model, dataset, output_dir=str(tmp_path / "run"), **overrides)))
    return path


def test_model_missing_path(tmp_path: Path, sample_dataset: Any, builtin_plugins: Any) -> None:
    result = invoke(["train", str(write_config(tmp_path, "./missing-model", sample_dataset()))], builtin_plugins)
    assert result.exit_code == 2 and "model folder" in result.output and "does not exist" in result.output
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "does not exist" in status["error"]
    assert (tmp_path / "run" / "error.txt").is_file()


def test_model_folder_that_is_not_a_model(tmp_path: Path, sample_dataset: Any, builtin_plugins: Any) -> None:
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "notes.txt").write_text("hello")
    result = invoke(["train", str(write_config(tmp_path, tmp_path / "not-a-model", sample_dataset()))],
                    builtin_plugins)
    assert result.exit_code == 2 and "is not a model folder (no config.json" in result.output


def test_model_needing_remote_code_is_refused(tmp_path: Path, tiny_causal_lm: Path, sample_dataset: Any,
                                              builtin_plugins: Any) -> None:
    model = tmp_path / "remote-code-model"
    shutil.copytree(tiny_causal_lm, model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "evilnet"  # unknown to transformers: only its own code could load it
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    (model / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    result = invoke(["train", str(write_config(tmp_path, model, sample_dataset()))], builtin_plugins)
    assert result.exit_code != 0 and "trust_remote_code" in result.output
    assert not marker.exists(), "the model's code must not run"


def test_pickle_weights_are_refused_unless_allowed(tmp_path: Path, tiny_causal_lm: Path, sample_dataset: Any,
                                                   builtin_plugins: Any) -> None:
    from transformers import AutoModelForCausalLM

    model = tmp_path / "pickle-model"
    shutil.copytree(tiny_causal_lm, model)
    import torch

    (model / "model.safetensors").unlink()
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_causal_lm).state_dict(), model / "pytorch_model.bin")
    assert (model / "pytorch_model.bin").is_file() and not (model / "model.safetensors").exists()
    result = invoke(["train", str(write_config(tmp_path, model, sample_dataset()))], builtin_plugins)
    assert result.exit_code == 2 and "allow_pickle_weights" in result.output


def test_fp16_on_a_cpu_is_refused_before_anything_loads(tmp_path: Path, sample_dataset: Any,
                                                        builtin_plugins: Any) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 is supported")
    result = invoke(["train", str(write_config(tmp_path, "./missing-model", sample_dataset(), fp16=True))],
                    builtin_plugins)
    assert result.exit_code == 3 and "fp16 mixed precision needs a GPU" in result.output
    assert not (tmp_path / "run").exists()


def test_crash_marks_the_run_failed_and_keeps_the_error(tmp_path: Path, tiny_causal_lm: Path,
                                                        sample_dataset: Any, builtin_plugins: Any) -> None:
    model = tmp_path / "broken-model"
    shutil.copytree(tiny_causal_lm, model)
    (model / "model.safetensors").write_bytes(b"this is not a safetensors file")
    result = invoke(["train", str(write_config(tmp_path, model, sample_dataset()))], builtin_plugins)
    assert result.exit_code != 0 and "Traceback" not in result.output
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and status["error"]
    assert "Traceback" in (tmp_path / "run" / "error.txt").read_text()


def test_disk_full_while_saving_leaves_no_partial_folder(tmp_path: Path) -> None:
    run = RunDir(tmp_path)

    def writer(folder: Path) -> None:
        (folder / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        run.save_directory("adapter", writer)
    assert not (tmp_path / "adapter").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter")]


def test_save_never_overwrites_an_adapter(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.save_directory("adapter", lambda folder: (folder / "weights").write_text("first"))
    with pytest.raises(RunError, match="nothing is overwritten"):
        run.save_directory("adapter", lambda folder: (folder / "weights").write_text("second"))
    assert (tmp_path / "adapter" / "weights").read_text() == "first"


def test_resume_without_a_checkpoint(tmp_path: Path, sample_dataset: Any, builtin_plugins: Any) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": tiny_config("./m", sample_dataset())}))
    (run / "status.json").write_text(json.dumps({"status": "interrupted"}))
    result = invoke(["train", "--resume", str(run)], builtin_plugins)
    assert result.exit_code != 0 and "no complete checkpoint" in result.output


def test_resume_with_a_changed_dataset(tmp_path: Path, sample_dataset: Any, builtin_plugins: Any) -> None:
    data = sample_dataset()
    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({"config": tiny_config("./m", data)}))
    (run / "status.json").write_text(json.dumps({"status": "interrupted"}))
    (run / "manifest.json").write_text(json.dumps({"data": {"fingerprint": "sha256:old"}}))
    result = invoke(["train", "--resume", str(run)], builtin_plugins)
    assert result.exit_code != 0 and "changed since" in result.output


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path, builtin_plugins: Any) -> None:
    result = invoke(["train", "--resume", str(tmp_path)], builtin_plugins)
    assert result.exit_code != 0 and "is not a ModelForge run folder" in result.output


def test_local_model_means_offline_and_no_telemetry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelforge_core.orchestrate import set_offline_environment

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.delenv(key, raising=False)
    set_offline_environment("org/hub-model")
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and "HF_HUB_OFFLINE" not in os.environ
    set_offline_environment(str(tmp_path))
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_dataset_text_is_never_run_as_a_template(tiny_causal_lm: Path) -> None:
    """Chat templates are rendered by transformers' sandboxed Jinja; a row's text is data."""
    from transformers import AutoTokenizer

    from modelforge_core.plugins import get_plugins

    task = get_plugins().registry.tasks["text-generation"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    row = {"input": "{{ 7 * 7 }} {% for x in range(3) %}loop{% endfor %}", "output": "{{ ''.__class__ }}"}
    dataset = task.build_dataset([row], shape="supervised", tokenizer=tokenizer, config={}, head="causal-lm")
    rendered = tokenizer.apply_chat_template(dataset[0]["prompt"] + dataset[0]["completion"], tokenize=False)
    assert "{{ 7 * 7 }}" in rendered and "49" not in rendered and "looploop" not in rendered
    assert "{{ ''.__class__ }}" in rendered

