"""After training: generate, chat, evaluate, export (with its parity check) and the list of runs.

One tiny Llama is given some language (``pretrain_causal_lm``) and fine-tuned once for the
whole module on the invented harbour facts, so the trained model really answers; every test
then uses that run the way a user would, mostly through the ``modelforge`` command itself.

The base is the demo's (hidden size 128, built like ``tiny_causal_lm``): with the kit's hidden
size of 64 the adapter learns the sentence but garbles some harbour names, and a test that checks
answers needs the answers right.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.plugins import DISABLE_ENV, LOAD_ENV, Plugins

pytestmark = pytest.mark.slow

MODELFORGE = Path(sys.executable).with_name("modelforge")


def run_cli(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The installed ``modelforge`` console script, without the caller's plugin selection."""
    env = {k: v for k, v in os.environ.items() if k not in (LOAD_ENV, DISABLE_ENV, "MODELFORGE_DEBUG")}
    return subprocess.run([str(MODELFORGE), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def run_in_process(*args: str | Path) -> Any:
    """The same command through click's test runner: no new process, so no second ~10 s of
    library imports (the subprocess runs above show the real console script works)."""
    from click.testing import CliRunner

    from modelforge_core.cli import main

    return CliRunner().invoke(main, [str(arg) for arg in args], obj={}, catch_exceptions=False)


@dataclass
class TrainedHarbours:
    run_dir: Path
    metrics: dict[str, Any]
    rows: list[dict[str, str]]
    eval_indices: list[int]
    workdir: Path
    #: What the trained model answers (through the Python API) to each held-out question.
    answers: dict[str, str]

    def held_out_answered(self, n: int) -> Mapping[str, str]:
        """The ``n``-th held-out row (a phrasing never trained on) that the trained model gets right.

        A tiny model fine-tuned for 200 steps misspells an island now and then; which rows it
        gets right is measured once here, so the command-line tests check the commands, not luck.
        """
        return self.answered_right()[n]

    def answered_right(self) -> list[Mapping[str, str]]:
        held_out = [self.rows[i] for i in self.eval_indices]
        return [row for row in held_out if self.answers[row["input"]] == row["output"]]


@pytest.fixture(scope="module")
def trained(builtin_plugins: Plugins, pretrained_causal_lm: Path,
            tmp_path_factory: pytest.TempPathFactory) -> TrainedHarbours:
    """The demo's tiny Llama, pre-trained, then LoRA-fine-tuned on the harbour facts (300 steps)."""
    from modelforge_core.config import resolve_config
    from modelforge_core.demo import DEMO_SETTINGS
    from modelforge_core.inference import load_trained
    from modelforge_core.orchestrate import split_rows, train
    from modelforge_core.testing.datasets import capital_rows, write_jsonl
    from modelforge_core.testing.pytest_plugin import tiny_config
    from modelforge_core.training import Display

    workdir = tmp_path_factory.mktemp("after-training")
    base = workdir / "base-model"
    shutil.copytree(pretrained_causal_lm, base)  # the kit's session-wide pre-trained base
    rows = capital_rows()
    data = write_jsonl(workdir / "harbours.jsonl", rows)
    # The demo's settings, a little longer and faster: 10/10 held-out answers right instead of ~7/10.
    config = tiny_config(base, data, run_name="harbours", **{**DEMO_SETTINGS, "num_train_epochs": 30,
                                                               "learning_rate": 8e-3})
    resolved = resolve_config(config, plugins=builtin_plugins, base_dir=workdir)
    outcome = train(resolved, plugins=builtin_plugins, display=Display(enabled=False), runs_root=workdir / "runs")
    _, eval_indices = split_rows(rows, resolved["eval_split"], resolved["seed"], str(data))
    model = load_trained(outcome.run_dir, plugins=builtin_plugins)
    answers = {rows[i]["input"]: model.predict({"input": rows[i]["input"]}, max_new_tokens=24) for i in eval_indices}
    return TrainedHarbours(outcome.run_dir, outcome.metrics, rows, eval_indices, workdir, answers)


def test_the_trained_model_answers_most_held_out_questions(trained: TrainedHarbours) -> None:
    assert len(trained.answered_right()) >= 0.7 * len(trained.eval_indices), trained.answers


# --- generate ------------------------------------------------------------------------------

def test_generate_answers_a_held_out_question_as_trained_and_the_base_does_not(trained: TrainedHarbours) -> None:
    row = trained.held_out_answered(0)
    result = run_cli("generate", trained.run_dir, "--prompt", row["input"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == row["output"]

    other = trained.held_out_answered(1)
    compared = run_in_process("generate", trained.run_dir, "--prompt", other["input"], "--base", "--json")
    assert compared.exit_code == 0, compared.stderr
    answer = json.loads(compared.stdout)
    assert answer["answer"] == other["output"]
    assert answer["base_answer"] != answer["answer"]  # the knowledge is in the adapter


def test_generate_refuses_options_of_another_task_before_loading_anything(trained: TrainedHarbours,
                                                                          tmp_path: Path) -> None:
    result = run_cli("generate", trained.run_dir, "--document", "a report", "--max-new-tokens", "8")
    assert result.returncode == 2
    assert "text-generation run" in result.stderr and "--document does not apply" in result.stderr
    assert "--prompt TEXT" in result.stderr and "Traceback" not in result.stderr

    missing = run_cli("generate", trained.run_dir, "--prompt", f"@{tmp_path / 'absent.txt'}")
    assert missing.returncode == 2
    assert "absent.txt" in missing.stderr and "Traceback" not in missing.stderr


# --- chat ------------------------------------------------------------------------------------

def _read_until(fd: int, buffer: bytearray, marker: bytes, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while buffer.count(marker) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        buffer.extend(chunk)
    return buffer.count(marker) >= count


def test_chat_holds_a_two_turn_conversation_in_a_terminal(trained: TrainedHarbours) -> None:
    """Driven through a pseudo-terminal, like a user typing: two turns, /reset, then Ctrl-D."""
    first, second = trained.held_out_answered(0), trained.held_out_answered(1)
    controller, terminal = os.openpty()
    env = {k: v for k, v in os.environ.items() if k not in (LOAD_ENV, DISABLE_ENV, "MODELFORGE_DEBUG")}
    process = subprocess.Popen([str(MODELFORGE), "chat", str(trained.run_dir)], stdin=terminal, stdout=terminal,
                               stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    screen = bytearray()
    try:
        assert _read_until(controller, screen, b"you> ", 1, 300), screen.decode(errors="replace")
        os.write(controller, first["input"].encode() + b"\n")
        assert _read_until(controller, screen, b"you> ", 2, 300), screen.decode(errors="replace")
        os.write(controller, second["input"].encode() + b"\n")
        assert _read_until(controller, screen, b"you> ", 3, 300), screen.decode(errors="replace")
        os.write(controller, b"/reset\n")
        assert _read_until(controller, screen, b"you> ", 4, 60), screen.decode(errors="replace")
        os.write(controller, second["input"].encode() + b"\n")
        assert _read_until(controller, screen, b"you> ", 5, 300), screen.decode(errors="replace")
        os.write(controller, b"\x04")  # Ctrl-D
        assert process.wait(timeout=60) == 0
        _read_until(controller, screen, b"never printed", 1, 1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    text = screen.decode(errors="replace").replace("\r\n", "\n")
    answers = [line.removeprefix("model> ") for line in text.splitlines() if line.startswith("model> ")]
    assert len(answers) == 3, text
    assert answers[0] == first["output"]
    assert answers[1].strip()  # the second turn is answered, with the first turn in its context
    assert "(new conversation)" in text
    assert answers[2] == second["output"]  # after /reset, the question alone again
    assert "Traceback" not in text


def test_chat_needs_a_text_generation_run(trained: TrainedHarbours, tmp_path: Path) -> None:
    other = tmp_path / "summaries-run"
    other.mkdir()
    document = json.loads((trained.run_dir / "config.json").read_text("utf-8"))
    document["config"]["task"] = "summarization"
    (other / "config.json").write_text(json.dumps(document), encoding="utf-8")
    result = run_cli("chat", other)
    assert result.returncode == 2
    assert "summarization task" in result.stderr and "modelforge generate" in result.stderr


# --- evaluate --------------------------------------------------------------------------------

def test_evaluate_reproduces_the_eval_loss_written_at_the_end_of_training(trained: TrainedHarbours) -> None:
    metrics_file = trained.run_dir / "metrics.json"
    recorded = metrics_file.read_bytes()
    result = run_in_process("evaluate", trained.run_dir, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    after = trained.metrics["after"]
    assert report["metrics"]["eval_loss"] == pytest.approx(after["eval_loss"], rel=1e-3)
    assert report["metrics"]["eval_perplexity"] == pytest.approx(after["eval_perplexity"], rel=1e-3)
    assert report["dataset"]["split"] == "eval" and report["dataset"]["rows"] == len(trained.eval_indices)
    saved = json.loads(Path(report["file"]).read_text("utf-8"))
    assert Path(report["file"]).parent == trained.run_dir / "evaluations"
    assert saved["metrics"]["eval_loss"] == report["metrics"]["eval_loss"]
    assert metrics_file.read_bytes() == recorded  # the training's own record is never rewritten


def test_evaluate_on_another_file_and_refuses_a_changed_dataset(trained: TrainedHarbours, tmp_path: Path) -> None:
    from modelforge_core.errors import RunError
    from modelforge_core.evaluation import evaluate_run

    everything = evaluate_run(trained.run_dir, dataset=trained.workdir / "harbours.jsonl")
    assert everything.dataset["split"] == "all" and everything.dataset["rows"] == len(trained.rows)
    assert everything.training_metrics == {}  # other rows than the end-of-training evaluation: no comparison
    # Mostly rows it trained on: a lower loss than on the held-out split alone.
    assert everything.metrics["eval_loss"] < trained.metrics["before"]["eval_loss"]

    # A copy of the run whose dataset was edited after training: its eval split is gone.
    copy = tmp_path / "run-copy"
    shutil.copytree(trained.run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "logs", "evaluations"))
    data = tmp_path / "edited.jsonl"
    shutil.copy(trained.workdir / "harbours.jsonl", data)
    for name, key in (("config.json", "config"), ("manifest.json", "data")):
        document = json.loads((copy / name).read_text("utf-8"))
        document[key]["dataset" if key == "config" else "file"] = str(data)
        (copy / name).write_text(json.dumps(document), encoding="utf-8")
    with open(data, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"input": "What is new?", "output": "An edit."}) + "\n")
    with pytest.raises(RunError, match=r"changed since .* was trained"):
        evaluate_run(copy)


# --- export ----------------------------------------------------------------------------------

LOAD_WITHOUT_PEFT = """
import json, sys
sys.modules["peft"] = None  # any import of peft now fails: the folder must not need it
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, question = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
print(json.dumps({"answer": tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True),
                  "class": type(model).__name__}))
"""


@pytest.fixture(scope="module")
def exported(trained: TrainedHarbours) -> Path:
    out = trained.workdir / "exports" / "harbours-merged"
    result = run_cli("export", trained.run_dir, "--merge", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "parity check passed" in result.stdout
    return out


def test_export_loads_with_transformers_alone_and_answers_as_trained(trained: TrainedHarbours,
                                                                    exported: Path) -> None:
    assert (exported / "model.safetensors").is_file()
    assert not (exported / "adapter_config.json").exists()
    row = trained.held_out_answered(2)
    loaded = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PEFT, str(exported), row["input"]],
                            capture_output=True, text=True, timeout=300, check=False)
    assert loaded.returncode == 0, loaded.stderr
    answer = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert answer["class"] == "LlamaForCausalLM"
    assert answer["answer"].strip() == row["output"]


def test_export_records_parity_and_a_model_card(trained: TrainedHarbours, exported: Path) -> None:
    report = json.loads((exported / "export.json").read_text("utf-8"))
    parity = report["parity"]
    assert parity["passed"] and parity["dtype"] == "float32"
    assert parity["max_abs_diff"] <= parity["tolerance"] == 1e-3
    assert parity["prompts"] >= 1 and parity["top1_agreement"] == 1.0
    assert parity["adapter_effect"] > 100 * parity["max_abs_diff"]  # the check can see a broken merge
    card = (exported / "README.md").read_text("utf-8")
    manifest = json.loads((trained.run_dir / "manifest.json").read_text("utf-8"))
    assert manifest["data"]["fingerprint"] in card
    assert str(trained.workdir / "base-model") in card
    assert f"{trained.metrics['after']['eval_loss']:.4g}" in card
    assert "AutoModelForCausalLM.from_pretrained" in card and '"lora_r": 16' in card
    # The chat template travels with the tokenizer, so the prompt format is the trained one.
    assert (exported / "chat_template.jinja").is_file() or "chat_template" in (
        exported / "tokenizer_config.json").read_text("utf-8")

    again = run_cli("export", trained.run_dir, "--merge", "--out", exported)
    assert again.returncode != 0 and "exists already" in again.stderr


def test_a_tampered_merge_fails_the_parity_check(trained: TrainedHarbours, exported: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tampered = tmp_path / "tampered"
    shutil.copytree(exported, tampered)
    weights = load_file(tampered / "model.safetensors")
    name = next(key for key in weights if key.endswith("layers.0.self_attn.v_proj.weight"))
    weights[name] = weights[name] * 1.5  # what a wrongly scaled merge of one module looks like
    save_file(weights, tampered / "model.safetensors", metadata={"format": "pt"})

    result = run_cli("export", trained.run_dir, "--verify", tampered)
    assert result.returncode == 1
    assert "parity check FAILED" in result.stderr and "Traceback" not in result.stderr

    untouched = run_in_process("export", trained.run_dir, "--verify", exported, "--json")
    assert untouched.exit_code == 0, untouched.stderr
    assert json.loads(untouched.stdout)["parity"]["passed"]


def test_an_export_that_fails_its_check_is_set_aside(trained: TrainedHarbours, tmp_path: Path) -> None:
    """With a zero tolerance even float32 rounding fails: the folder is kept as .failed, not as the export."""
    from modelforge_core.export import ExportFailed, export_merged

    out = tmp_path / "strict"
    with pytest.raises(ExportFailed, match="parity check FAILED") as failure:
        export_merged(trained.run_dir, out=out, tolerance=0.0, say=lambda _: None)
    assert failure.value.exit_code == 1
    assert not out.exists()
    assert (tmp_path / "strict.failed" / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".strict.tmp-*"))


def test_a_4bit_run_is_merged_into_the_base_reloaded_unquantized(tiny_causal_lm: Path, sample_dataset: Any,
                                                                  run_training: Any, tmp_path: Path) -> None:
    from modelforge_core.export import export_merged
    from modelforge_core.testing.pytest_plugin import tiny_config

    outcome = run_training(tiny_config(tiny_causal_lm, sample_dataset("text-generation"), strategy="qlora",
                                       use_4bit=True, max_steps=8, eval_steps=1000))
    messages: list[str] = []
    result = export_merged(outcome.run_dir, out=tmp_path / "merged", say=messages.append)
    assert result.dequantized == "4-bit (nf4)"
    assert any("reloaded unquantized in float16" in message for message in messages)
    assert result.dtype == "float16"  # the run's compute dtype
    assert result.parity.passed, result.parity.describe()
    saved = json.loads((result.out_dir / "config.json").read_text("utf-8"))
    assert "quantization_config" not in saved and saved["dtype"] == "float16"
    assert "reloaded unquantized" in (result.out_dir / "README.md").read_text("utf-8")


# --- runs ------------------------------------------------------------------------------------

def _copy_run(source: Path, target: Path, **status: Any) -> None:
    target.mkdir(parents=True)
    for name in ("config.json", "manifest.json", "metrics.json", "status.json"):
        shutil.copy(source / name, target / name)
    if status:
        document = json.loads((target / "status.json").read_text("utf-8"))
        document.update(status)
        (target / "status.json").write_text(json.dumps(document), encoding="utf-8")


def test_runs_lists_every_run_with_its_status(trained: TrainedHarbours, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    finished = trained.run_dir
    _copy_run(finished, root / "a-finished")
    _copy_run(finished, root / "b-interrupted", status="interrupted", note="training interrupted at step 12")
    _copy_run(finished, root / "c-failed", status="failed", error="RuntimeError: out of memory")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    _copy_run(finished, root / "d-killed", status="running", pid=int(gone.stdout))
    _copy_run(finished, root / "e-running", status="running", pid=os.getpid())
    (root / "not-a-run").mkdir()

    listed = run_cli("runs", "--root", root, "--json")
    assert listed.returncode == 0, listed.stderr
    runs = {run["name"]: run for run in json.loads(listed.stdout)["runs"]}
    assert {name: run["status"] for name, run in runs.items()} == {
        "a-finished": "finished", "b-interrupted": "interrupted", "c-failed": "failed",
        "d-killed": "stale", "e-running": "running"}
    first = runs["a-finished"]
    assert (first["task"], first["strategy"], first["provider"]) == ("text-generation", "sft", "huggingface")
    assert first["model"] == str(trained.workdir / "base-model")
    assert first["metrics"]["after"]["eval_loss"] == trained.metrics["after"]["eval_loss"]
    assert first["duration_s"] is not None and first["duration_s"] >= 0
    assert runs["c-failed"]["error"] == "RuntimeError: out of memory"
    assert "resume" in runs["d-killed"]["note"]

    table = run_cli("runs", "--root", root)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["RUN", "STATUS", "TASK"]
    assert any(line.startswith("d-killed") and " stale " in line for line in lines)
    assert "eval_loss" in table.stdout and "RuntimeError: out of memory" in table.stdout
    assert run_cli("runs", "--root", tmp_path / "nothing-here").stdout.startswith("no runs under")


# --- summarization and question answering ------------------------------------------------------

def _train_small(model: Path, task: str, rows: list[dict[str, Any]], root: Path, plugins: Plugins,
                 **overrides: Any) -> Path:
    from modelforge_core.config import resolve_config
    from modelforge_core.orchestrate import train
    from modelforge_core.testing.datasets import write_jsonl
    from modelforge_core.testing.pytest_plugin import tiny_config
    from modelforge_core.training import Display

    data = write_jsonl(root / f"{task}.jsonl", rows)
    resolved = resolve_config(tiny_config(model, data, task=task, **overrides), plugins=plugins, base_dir=root)
    return train(resolved, plugins=plugins, display=Display(enabled=False), runs_root=root / "runs").run_dir


@pytest.fixture(scope="module")
def summarizer(tiny_seq2seq_lm: Path, builtin_plugins: Plugins, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny T5 fine-tuned for a few steps on the report summaries (seq2seq head)."""
    from modelforge_core.testing.datasets import summarization_rows

    return _train_small(tiny_seq2seq_lm, "summarization", summarization_rows(), tmp_path_factory.mktemp("summaries"),
                        builtin_plugins, num_train_epochs=4, learning_rate=5e-3,
                        summarization={"max_new_tokens": 24, "max_eval_samples": 4})


@pytest.fixture(scope="module")
def reader(tiny_qa_encoder: Path, builtin_plugins: Plugins, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT fine-tuned for a few steps on the harbour questions (span head)."""
    from modelforge_core.testing.datasets import qa_rows

    return _train_small(tiny_qa_encoder, "extractive-question-answering", qa_rows(), tmp_path_factory.mktemp("qa"),
                        builtin_plugins, per_device_train_batch_size=8, num_train_epochs=3, max_seq_length=64)


def test_summarization_goes_through_generate_evaluate_and_export(summarizer: Path, builtin_plugins: Plugins,
                                                                 tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    from modelforge_core.evaluation import evaluate_run
    from modelforge_core.export import export_merged
    from modelforge_core.inference import load_trained
    from modelforge_core.testing.datasets import summarization_rows

    document = tmp_path / "report.txt"
    document.write_text(summarization_rows()[0]["document"], encoding="utf-8")
    result = run_cli("generate", summarizer, "--document", f"@{document}", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr
    expected = load_trained(summarizer, plugins=builtin_plugins).predict(
        {"document": document.read_text("utf-8")}, max_new_tokens=24)
    assert result.stdout.strip() == expected

    wrong = run_cli("generate", summarizer, "--prompt", "Summarize this")
    assert wrong.returncode == 2 and "--document TEXT" in wrong.stderr

    after = json.loads((summarizer / "metrics.json").read_text("utf-8"))["after"]
    measured = evaluate_run(summarizer, plugins=builtin_plugins).metrics
    assert measured["eval_loss"] == pytest.approx(after["eval_loss"], rel=1e-3)
    assert {"rouge1", "rouge2", "rougeL"} <= set(measured)

    exported = export_merged(summarizer, out=tmp_path / "merged", plugins=builtin_plugins, say=lambda _: None)
    assert exported.parity.passed and exported.parity.max_abs_diff <= 1e-3
    assert type(AutoModelForSeq2SeqLM.from_pretrained(exported.out_dir)).__name__ == "T5ForConditionalGeneration"
    assert "AutoModelForSeq2SeqLM" in (exported.out_dir / "README.md").read_text("utf-8")


def test_question_answering_goes_through_generate_evaluate_and_export(reader: Path, builtin_plugins: Plugins,
                                                                      tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from modelforge_core.evaluation import evaluate_run
    from modelforge_core.export import export_merged
    from modelforge_core.inference import load_trained
    from modelforge_core.testing.datasets import qa_rows

    row = qa_rows()[0]
    result = run_cli("generate", reader, "--context", row["context"], "--question", row["question"], "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)["answer"]
    assert answer in row["context"]
    trained = load_trained(reader, plugins=builtin_plugins)
    assert answer == trained.predict({"context": row["context"], "question": row["question"]})

    sampling = run_cli("generate", reader, "--context", "c", "--question", "q?", "--temperature", "0.7")
    assert sampling.returncode == 2 and "--temperature do not apply to a span answer" in sampling.stderr

    after = json.loads((reader / "metrics.json").read_text("utf-8"))["after"]
    measured = evaluate_run(reader, plugins=builtin_plugins).metrics
    assert measured["eval_loss"] == pytest.approx(after["eval_loss"], rel=1e-3)
    assert measured["exact_match"] == pytest.approx(after["exact_match"])

    exported = export_merged(reader, out=tmp_path / "merged", plugins=builtin_plugins, say=lambda _: None)
    assert exported.parity.passed and exported.parity.max_abs_diff <= 1e-3
    # The merged model, loaded as any transformers user would, scores spans like base + adapter.
    merged = AutoModelForQuestionAnswering.from_pretrained(exported.out_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported.out_dir)
    inputs = tokenizer(row["question"], row["context"], return_tensors="pt")
    with torch.no_grad():
        plain = merged(**inputs)
        reference = trained.loaded.model(**inputs)
    assert torch.allclose(plain.start_logits, reference.start_logits, atol=1e-4)
    assert torch.allclose(plain.end_logits, reference.end_logits, atol=1e-4)
