"""Training with the unsloth provider on a tiny local Llama, on the CPU (issue 7).

Runs in ``.venv-unsloth`` only (``make test-unsloth``; see conftest.py). sft goes through the
real ``modelforge train --json`` in a fresh process, the way users run it; qlora (a 4-bit base,
unsloth's gradient checkpointing) and dpo go through the API in this process. Both adapters are then
loaded with plain peft by the MAIN ``.venv`` Python, which has no unsloth at all: the result of
an unsloth training must be usable without unsloth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.testing.pytest_plugin import tiny_config

pytestmark = [pytest.mark.unsloth, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
#: The main environment's Python: transformers 5.24 + peft, no unsloth.
MAIN_PYTHON = REPO / ".venv" / "bin" / "python"
QUESTION = "What is the harbour of Veloria?"

#: Run by MAIN_PYTHON: each adapter on its base with plain transformers + peft, through the
#: text-generation task's own prompt format, compared with the base alone.
RELOAD_SCRIPT = r"""
import json, sys
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer
from modelforge_core.api import LoadedModel
from modelforge_core.plugins import load_plugins

question, base_path, adapters = sys.argv[1], sys.argv[2], sys.argv[3:]
task = load_plugins(environ={}).registry.tasks["text-generation"]
base = AutoModelForCausalLM.from_pretrained(base_path).eval()
out = {}
for adapter in adapters:
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    tuned = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        tuned_logits = tuned(**encoded).logits[0, -1]
        base_logits = base(**encoded).logits[0, -1]
    answer = task.predict(LoadedModel(tuned, tokenizer, "causal-lm", "peft"), {"input": question}, config={},
                          max_new_tokens=12)
    out[adapter] = {"difference": (tuned_logits - base_logits).abs().max().item(),
                    "finite": bool(torch.isfinite(tuned_logits).all()),
                    "logits": tuned_logits.tolist(), "answer": answer}
out["unsloth_imported"] = "unsloth" in sys.modules
print(json.dumps(out))
"""


def _environment() -> dict[str, str]:
    """The caller's environment without plugin selection, so every built-in plugin loads."""
    return {k: v for k, v in os.environ.items()
            if k not in ("MODELFORGE_LOAD_PLUGINS", "MODELFORGE_DISABLE_PLUGINS", "MODELFORGE_DEBUG")}


def _unsloth_config(model: Path, data: Path, **overrides: Any) -> dict[str, Any]:
    return tiny_config(model, data, **{"provider": "unsloth", "num_train_epochs": 3, "eval_steps": 1000, **overrides})


@pytest.fixture(scope="module")
def sft_cli(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """``modelforge train --json`` with provider unsloth and strategy sft, in a fresh process."""
    from modelforge_core.testing.datasets import text_generation_rows, write_jsonl

    root = tmp_path_factory.mktemp("unsloth-sft")
    data = write_jsonl(root / "io.jsonl", text_generation_rows("io"))
    (root / "config.json").write_text(json.dumps(_unsloth_config(tiny_causal_lm, data, strategy="sft")))
    script = Path(sys.executable).with_name("modelforge")
    done = subprocess.run([str(script), "train", "config.json", "--json"], cwd=root, env=_environment(),
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout), done.stderr


@pytest.fixture(scope="module")
def qlora_run(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """qlora (4-bit nf4 base, unsloth gradient checkpointing) through the API, in this process."""
    from modelforge_core.testing import train_config
    from modelforge_core.testing.datasets import text_generation_rows, write_jsonl

    root = tmp_path_factory.mktemp("unsloth-qlora")
    data = write_jsonl(root / "io.jsonl", text_generation_rows("io"))
    config = _unsloth_config(tiny_causal_lm, data, strategy="qlora", use_4bit=True, gradient_checkpointing=True)
    return train_config(config, root)


@pytest.fixture(scope="module")
def dpo_run(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """dpo on preference pairs through the API: the dpo strategy, unchanged, on unsloth's model."""
    from modelforge_core.testing import train_config
    from modelforge_core.testing.datasets import preference_rows, write_jsonl

    root = tmp_path_factory.mktemp("unsloth-dpo")
    data = write_jsonl(root / "pairs.jsonl", preference_rows())
    config = _unsloth_config(tiny_causal_lm, data, strategy="dpo", num_train_epochs=2, learning_rate=1e-3)
    return train_config(config, root)


@pytest.fixture(scope="module")
def reloaded(sft_cli: tuple[dict[str, Any], str], qlora_run: Any, tiny_causal_lm: Path) -> dict[str, Any]:
    """Both adapters loaded by plain peft in the main ``.venv`` (one process for both)."""
    assert MAIN_PYTHON.exists(), f"{MAIN_PYTHON} is missing: run `make setup` (the main environment)"
    adapters = [str(Path(sft_cli[0]["run_dir"]) / "adapter"), str(qlora_run.run_dir / "adapter")]
    env = {**_environment(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(MAIN_PYTHON), "-c", RELOAD_SCRIPT, QUESTION, str(tiny_causal_lm), *adapters],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["sft"], result["qlora"] = result.pop(adapters[0]), result.pop(adapters[1])
    return result


def test_sft_through_the_cli_lowers_the_loss(sft_cli: tuple[dict[str, Any], str]) -> None:
    outcome, stderr = sft_cli
    before, after = outcome["metrics"]["before"], outcome["metrics"]["after"]
    assert outcome["status"] == "finished"
    assert outcome["metrics"]["global_step"] >= 20
    assert after["eval_loss"] < before["eval_loss"] - 0.3, (before, after)
    assert after["train_loss"] < before["eval_loss"]
    # The provider imported unsloth before the core imported transformers (its on_run_start hook).
    assert "should be imported before" not in stderr
    run = Path(outcome["run_dir"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["components"]["provider"]["name"] == "unsloth"
    assert manifest["libraries"]["unsloth"] == "2026.10.9"
    assert manifest["libraries"]["trl"] == "1.15.0"


def test_qlora_trains_a_4bit_base(qlora_run: Any) -> None:
    before, after = qlora_run.metrics["before"], qlora_run.metrics["after"]
    assert qlora_run.status == "finished"
    assert after["eval_loss"] < before["eval_loss"] - 0.3, (before, after)
    assert after["train_loss"] < before["eval_loss"]
    log = [json.loads(line) for line in (qlora_run.run_dir / "log.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in log if "loss" in record]
    assert losses[-1] < losses[0]


def test_dpo_runs_unchanged_on_the_unsloth_model(dpo_run: Any) -> None:
    before, after = dpo_run.metrics["before"], dpo_run.metrics["after"]
    assert dpo_run.status == "finished"
    assert after["eval_loss"] < before["eval_loss"] - 0.02, (before, after)
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"]
    assert (dpo_run.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_loading_for_training_applies_the_config(tiny_causal_lm: Path, tmp_path: Path) -> None:
    """4-bit layers, unsloth's LoRA on the standard projections, the seed and the pad token."""
    from modelforge_core.api import LoadRequest
    from modelforge_core.plugins import load_plugins
    from modelforge_core.testing import resolved_config

    provider = load_plugins(environ={}).registry.providers["unsloth"]
    config = resolved_config(_unsloth_config(tiny_causal_lm, tmp_path / "unused.jsonl", strategy="qlora",
                                             use_4bit=True, lora_r=4), base_dir=tmp_path)

    def lora_a(seed: int) -> Any:
        loaded = provider.load(LoadRequest(model_name=str(tiny_causal_lm), head="causal-lm",
                                           config={**config, "seed": seed}))
        return loaded, dict(loaded.model.named_parameters())

    loaded, weights = lora_a(7)
    assert loaded.provider == "unsloth"
    assert loaded.info["quantization"] == "4bit-nf4"
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    assert 0 < loaded.info["trainable_parameters"] < loaded.info["total_parameters"]
    trained = sorted({name.split(".")[-4] for name, p in weights.items() if p.requires_grad})
    assert trained == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert any(type(m).__name__ == "Linear4bit" for m in loaded.model.modules())
    name = next(n for n in weights if n.endswith("q_proj.lora_A.default.weight"))
    _, same_seed = lora_a(7)
    _, other_seed = lora_a(8)
    assert weights[name].equal(same_seed[name])
    assert not weights[name].equal(other_seed[name])


def test_8bit_is_refused_on_the_cpu_instead_of_silently_training_16bit(tiny_causal_lm: Path,
                                                                     tmp_path: Path) -> None:
    from modelforge_core.api import LoadRequest
    from modelforge_core.errors import EnvironmentProblem
    from modelforge_core.plugins import load_plugins
    from modelforge_core.testing import resolved_config

    provider = load_plugins(environ={}).registry.providers["unsloth"]
    config = resolved_config(_unsloth_config(tiny_causal_lm, tmp_path / "unused.jsonl", use_4bit=False,
                                             use_8bit=True), base_dir=tmp_path)
    with pytest.raises(EnvironmentProblem, match=r"unsloth loads 8-bit weights only on a GPU.*set use_8bit to false"):
        provider.load(LoadRequest(model_name=str(tiny_causal_lm), head="causal-lm", config=config))


def test_adapters_reload_with_plain_peft_without_unsloth(reloaded: dict[str, Any]) -> None:
    assert reloaded["unsloth_imported"] is False
    for name in ("sft", "qlora"):
        assert reloaded[name]["finite"], name
        assert reloaded[name]["difference"] > 1e-2, name


def test_inference_through_the_provider_matches_plain_peft(sft_cli: tuple[dict[str, Any], str],
                                                          reloaded: dict[str, Any]) -> None:
    """``load_trained`` with provider unsloth (FastLanguageModel.for_inference + the saved
    adapter) computes the same model, and gives the same answer, as plain peft without unsloth."""
    import torch

    from modelforge_core.inference import load_trained

    trained = load_trained(Path(sft_cli[0]["run_dir"]))
    assert trained.loaded.provider == "unsloth"
    tokenizer, model = trained.loaded.tokenizer, trained.loaded.model
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                         add_generation_prompt=True)
    with torch.no_grad():
        logits = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, -1].float()
    expected = torch.tensor(reloaded["sft"]["logits"])
    tolerance = 1e-4 if trained.loaded.info["dtype"] == "float32" else 5e-2
    assert (logits - expected).abs().max().item() < tolerance
    assert trained.predict({"input": QUESTION}, max_new_tokens=12) == reloaded["sft"]["answer"]
