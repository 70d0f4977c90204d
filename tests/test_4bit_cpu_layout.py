"""4-bit training on every CPU (issue 16): bitsandbytes repacks ``Linear4bit`` weights into an
inference-only layout after an eval-mode forward without gradients on CPUs with AVX-512 BF16.

Both branches run on any machine: ``force_bnb_cpu_repack`` turns on bitsandbytes' own switch
(the repack is plain torch), ``machine`` leaves it as the CPU sets it. What the forced branch
cannot run here is bitsandbytes' AVX-512 BF16 inference kernel itself (see CONTRIBUTING.md).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.quantization import (
    CPU_REPACK_SWITCH,
    check_4bit_training,
    four_bit_guard_callback,
    is_packed_for_cpu_inference,
    keep_4bit_trainable,
    packed_4bit_layers,
)
from modelforge_core.testing.pytest_plugin import tiny_config


def _layer(bias: bool, nested: bool) -> Any:
    import torch
    from bitsandbytes.nn import Linear4bit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = torch.nn.Linear(64, 32, bias=bias)
    layer = Linear4bit(64, 32, bias=bias, quant_type="nf4", compute_dtype=torch.float32,
                       compress_statistics=nested)
    layer.load_state_dict(plain.state_dict())
    layer = layer.to("cpu")
    if layer.bias is not None:
        layer.bias.requires_grad_(False)
    setattr(layer, CPU_REPACK_SWITCH, True)  # as bitsandbytes sets it on a CPU with AVX-512 BF16
    return layer


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_the_guard_undoes_the_cpu_inference_layout_and_keeps_gradients_exact(bias: bool, nested: bool) -> None:
    import torch
    from bitsandbytes.functional import dequantize_4bit

    layer = _layer(bias, nested)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    original_weight = layer.weight.data.clone()
    expected = torch.nn.functional.linear(x, dequantize_4bit(layer.weight.data, layer.weight.quant_state), layer.bias)
    layer.eval()
    with torch.no_grad():
        layer(x)
    # bitsandbytes' own switch repacked the weight: the branch a CPU with AVX-512 BF16 takes.
    assert is_packed_for_cpu_inference(layer)
    assert layer.weight.data.shape != original_weight.shape

    assert keep_4bit_trainable(layer) == 1
    assert not is_packed_for_cpu_inference(layer)
    assert getattr(layer, CPU_REPACK_SWITCH) is False
    if not nested:  # bitsandbytes' inverse is exact; with nested statistics it re-quantizes absmax
        assert torch.equal(layer.weight.data, original_weight)
    with torch.no_grad():
        again = layer(x)  # another evaluation: no repack any more
    assert not is_packed_for_cpu_inference(layer)
    torch.testing.assert_close(again, expected, rtol=1e-2, atol=1e-2)

    layer.train()
    scale = torch.ones(64, requires_grad=True)
    layer(x * scale).square().sum().backward()  # filterwarnings=error: no kernel without autograd ran
    reference = torch.ones(64, requires_grad=True)
    weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    torch.nn.functional.linear(x * reference, weight, layer.bias).square().sum().backward()
    assert scale.grad is not None and reference.grad is not None
    torch.testing.assert_close(scale.grad, reference.grad, rtol=1e-3, atol=1e-3)


def test_training_through_the_repacked_layout_is_what_the_guard_prevents() -> None:
    """Without the guard, the layer left packed trains through ``gemv_4bit``, which has no
    autograd kernel (the warning the suite turns into an error)."""
    import torch

    layer = _layer(bias=False, nested=False)
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 64))
    layer.train()
    x = torch.randn(2, 64, requires_grad=True)
    with pytest.warns(UserWarning, match="autograd kernel was not registered"):
        layer(x).sum().backward()


def test_doctor_check_trains_through_4bit_layers_and_fails_without_the_guard() -> None:
    machine = check_4bit_training("cpu")
    assert machine.works, machine.reason
    forced = check_4bit_training("cpu", force_cpu_repack=True)
    assert forced.works and forced.cpu_repack, forced.reason
    unguarded = check_4bit_training("cpu", force_cpu_repack=True, guard=False)
    assert not unguarded.works
    assert "inference-only" in unguarded.reason


def test_the_trainer_callback_unpacks_a_layer_packed_by_an_evaluation() -> None:
    import torch

    model = torch.nn.ModuleList([_layer(True, True), _layer(False, False)])
    model.eval()
    with torch.no_grad():
        for layer in model:
            layer(torch.randn(2, 64))
    assert packed_4bit_layers(model) == ["0", "1"]
    callback = four_bit_guard_callback()
    callback.on_evaluate(None, None, None, model=model)
    assert packed_4bit_layers(model) == []
    model[0](torch.randn(2, 64))
    assert packed_4bit_layers(model) == []
    # A provider's own wrapper that is not a torch module is left alone.
    assert keep_4bit_trainable(object()) == 0
    assert packed_4bit_layers(object()) == []


def test_the_missing_hub_kernel_notice_stays_out_of_the_output() -> None:
    """On a CPU with AVX-512 BF16, importing bitsandbytes logs that the ``kernels`` package (hub
    download) is missing. Simulated here by answering bitsandbytes' CPU probe with yes."""
    script = (
        "import importlib, logging, sys\n"
        "import bitsandbytes.functional, bitsandbytes.backends.cpu.ops as ops\n"
        "from modelforge_core.quantization import quiet_kernel_notice\n"
        "bitsandbytes.functional.has_avx512bf16 = lambda: True\n"
        "def import_on_such_a_cpu():\n"
        "    try:\n"
        "        importlib.reload(ops)  # what importing bitsandbytes runs there\n"
        "    except Exception:\n"
        "        pass  # registering its kernels twice in one process: not what is tested\n"
        "import_on_such_a_cpu()\n"
        "print('--- quiet', file=sys.stderr, flush=True)\n"
        "quiet_kernel_notice()\n"
        "import_on_such_a_cpu()\n"
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('another warning stays visible')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    library, quiet = result.stderr.split("--- quiet")
    assert "Failed to load CPU gemm_4bit_forward from kernels-community" in library
    assert "Failed to load CPU gemm_4bit_forward" not in quiet
    assert "another warning stays visible" in quiet


def test_quiet_kernel_notice_is_installed_once() -> None:
    from modelforge_core.quantization import KERNEL_NOTICE_LOGGER, quiet_kernel_notice

    quiet_kernel_notice()
    quiet_kernel_notice()
    assert len(logging.getLogger(KERNEL_NOTICE_LOGGER).filters) == 1


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["machine", "avx512bf16-forced"])
def test_qlora_on_biased_4bit_layers_evaluates_before_during_after_saves_reloads_and_merges(
        layout: str, tiny_qwen2_lm: Path, sample_dataset: Any, run_training: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    import torch
    from bitsandbytes.nn import Linear4bit
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modelforge_core.export import export_merged

    if layout == "avx512bf16-forced":
        request.getfixturevalue("force_bnb_cpu_repack")
    calls: list[tuple[bool, bool, bool, bool]] = []
    forward = Linear4bit.forward

    def recording_forward(self: Any, x: Any) -> Any:
        packed_before = is_packed_for_cpu_inference(self)
        out = forward(self, x)
        calls.append((self.training, torch.is_grad_enabled(), packed_before, self.bias is not None))
        return out

    monkeypatch.setattr(Linear4bit, "forward", recording_forward)
    outcome = run_training(tiny_config(
        tiny_qwen2_lm, sample_dataset("text-generation"), strategy="qlora", use_4bit=True,
        bnb_4bit_quant_type="nf4", use_nested_quant=True, bnb_4bit_compute_dtype="float32",
        max_steps=8, eval_steps=4, logging_steps=2))

    evaluations = [c for c in calls if not c[0] and not c[1]]
    training = [c for c in calls if c[0] and c[1]]
    assert evaluations and training
    assert any(c[3] for c in training), "the Qwen2 q/k/v projections carry a bias"
    assert not [c for c in training if c[2]], "a training forward ran on the inference-only layout"
    assert not [c for c in evaluations if c[2]], "an evaluation left a layer repacked"
    log = [json.loads(line) for line in (outcome.run_dir / "log.jsonl").read_text().splitlines()]
    steps = outcome.metrics["global_step"]
    assert any("eval_loss" in record and 0 < record["step"] < steps for record in log if "step" in record), \
        "no evaluation during training"
    assert outcome.metrics["after"]["eval_loss"] < outcome.metrics["before"]["eval_loss"]

    adapter = outcome.run_dir / "adapter"
    ids = torch.tensor([[1, 20, 30, 40, 2]])
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2_lm, dtype=torch.float32)
    with torch.no_grad():
        plain = base(ids).logits
        tuned = PeftModel.from_pretrained(base, adapter)
        adapted = tuned(ids).logits
        merged = tuned.merge_and_unload()(ids).logits
    assert not torch.allclose(plain, adapted, atol=1e-4)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    result = export_merged(outcome.run_dir, out=tmp_path / "merged", say=lambda _text: None)
    assert result.parity.passed, result.parity.describe()
