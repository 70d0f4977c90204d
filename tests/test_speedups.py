"""The speed options: packing keeps examples apart (same loss and logits as each example alone),
and each option reaches the model and the trainer that train it (inspected, not just passed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelforge_core.testing.pytest_plugin import tiny_config

pytestmark = pytest.mark.slow

LENGTHS = (9, 14, 6)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def loaded(request: pytest.FixtureRequest, tiny_causal_lm: Path) -> tuple[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, attn_implementation=request.param,
                                                 dtype=torch.float32).eval()
    assert model.config._attn_implementation == request.param
    return request.param, model


def _sequences(seed: int = 0) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 900, (n,), generator=generator).tolist() for n in LENGTHS]


def _packed_forward(model: Any, sequences: list[list[int]]) -> tuple[Any, Any]:
    """Logits of the sequences packed as TRL's padding-free collator packs a batch for training."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": s} for s in sequences])
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, sum(LENGTHS))
    with torch.no_grad():
        # use_cache=False as TRL's compute_loss passes it: with a cache, transformers does not look
        # for packed sequences in the position ids (masking_utils._preprocess_mask_arguments).
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    return logits, batch


def _spans() -> list[tuple[int, int]]:
    starts = [sum(LENGTHS[:i]) for i in range(len(LENGTHS))]
    return [(start, start + n) for start, n in zip(starts, LENGTHS, strict=True)]


def _loss(logits: Any, ids: list[int]) -> float:
    import torch

    return float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])))


def test_a_packed_batch_gives_each_sequence_the_loss_it_has_alone(loaded: tuple[str, Any]) -> None:
    import torch

    implementation, model = loaded
    sequences = _sequences()
    logits, batch = _packed_forward(model, sequences)
    assert batch["position_ids"][0].tolist() == [p for n in LENGTHS for p in range(n)]
    for (start, end), ids in zip(_spans(), sequences, strict=True):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]))
        assert _loss(logits[start:end], ids) == pytest.approx(float(alone.loss), abs=1e-5), implementation
        torch.testing.assert_close(logits[start:end], alone.logits[0], atol=1e-4, rtol=1e-4)
    # The trainer's loss over the packed batch: the first token of each sequence is never a target.
    labels = batch["labels"][0]
    assert (labels[[start for start, _ in _spans()]] == -100).all()
    # The control: the same rows concatenated with running positions attend across the boundaries.
    with torch.no_grad():
        crossed = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    start, end = _spans()[1]
    assert _loss(crossed[start:end], sequences[1]) != pytest.approx(_loss(logits[start:end], sequences[1]), abs=1e-3)


def test_changing_one_packed_sequence_leaves_the_others_logits_unchanged(loaded: tuple[str, Any]) -> None:
    import torch

    _implementation, model = loaded
    sequences = _sequences()
    before, _ = _packed_forward(model, sequences)
    changed = [sequences[0], _sequences(seed=7)[1], sequences[2]]
    after, _ = _packed_forward(model, changed)
    spans = _spans()
    for index in (0, 2):
        start, end = spans[index]
        torch.testing.assert_close(after[start:end], before[start:end], atol=1e-5, rtol=1e-5)
    start, end = spans[1]
    assert not torch.allclose(after[start:end], before[start:end], atol=1e-3)


# --- the options reach the trainer and the model ------------------------------------------------

class _Captured(Exception):
    """Raised once the trainer is built, to inspect it without training."""


def _capture_trainer(monkeypatch: pytest.MonkeyPatch, *, stop: bool) -> list[Any]:
    from modelforge_core import trainer as kit

    seen: list[Any] = []
    original = kit.prepare_trainer

    def capture(trainer: Any) -> Any:
        seen.append(trainer)
        if stop:
            raise _Captured
        return original(trainer)

    monkeypatch.setattr(kit, "prepare_trainer", capture)
    return seen


def test_packing_sdpa_and_neftune_reach_the_model_during_training(
        tiny_causal_lm: Path, sample_dataset: Any, run_training: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import TrainerCallback

    seen = _capture_trainer(monkeypatch, stop=False)
    during: dict[str, Any] = {"batches": []}

    class Probe(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            embeddings = model.get_input_embeddings()
            during["neftune"] = getattr(embeddings, "neftune_noise_alpha", None)
            during["hooks"] = len(embeddings._forward_hooks)

    def record_inputs(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        during["batches"].append((kwargs.get("position_ids"), kwargs.get("attention_mask"),
                                  tuple(kwargs["input_ids"].shape), kwargs.get("use_cache")))

    original_train = None

    def train_with_probe(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.add_callback(Probe())
        self.model.get_base_model().model.register_forward_pre_hook(record_inputs, with_kwargs=True)
        return original_train(self, *args, **kwargs)

    from trl import SFTTrainer

    original_train = SFTTrainer.train
    monkeypatch.setattr(SFTTrainer, "train", train_with_probe)
    config = tiny_config(tiny_causal_lm, sample_dataset("text-generation"), packing=True,
                         attention_implementation="sdpa", neftune_noise_alpha=5.0, max_steps=2, eval_split=0)
    outcome = run_training(config)
    assert outcome.status == "finished"
    trainer = seen[0]
    base = trainer.model.get_base_model()
    assert base.config._attn_implementation == "sdpa"
    assert all(layer.self_attn.config._attn_implementation == "sdpa" for layer in base.model.layers)
    assert (trainer.args.packing, trainer.args.packing_strategy, trainer.padding_free) == (True, "bfd", True)
    # The model saw padding-free packed rows: one row, no attention mask, positions restarting per example.
    # use_cache=False too: with a cache, transformers would not build the per-example mask.
    position_ids, attention_mask, shape, use_cache = during["batches"][0]
    assert attention_mask is None and shape[0] == 1 and use_cache is False
    restarts = int((position_ids[0] == 0).sum())
    assert restarts == config["per_device_train_batch_size"] or restarts > 1
    # NEFTune's hook was on the embeddings while training ran, and is gone afterwards.
    assert during["neftune"] == 5.0 and during["hooks"] >= 1
    assert trainer.args.neftune_noise_alpha == 5.0
    assert not base.get_input_embeddings()._forward_hooks


# torch.compile imports a torch module that warns at import time
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
# Dynamo traces TRL's fused loss (a custom autograd Function); depending on what ran before in the
# process it warns about the Function's instantiation, and the suite's `error` filter would turn
# that library-internal warning into a failure inside dynamo.
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_eager_attention_and_torch_compile_reach_the_model_and_the_trainer(
        tiny_causal_lm: Path, sample_dataset: Any, run_training: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    seen = _capture_trainer(monkeypatch, stop=True)
    config = tiny_config(tiny_causal_lm, sample_dataset("text-generation"), attention_implementation="eager",
                         torch_compile=True, max_steps=1, eval_split=0)
    with pytest.raises(_Captured):
        run_training(config)
    trainer = seen[0]
    base = trainer.model.get_base_model()
    assert base.config._attn_implementation == "eager"
    assert trainer.args.torch_compile is True and trainer.padding_free is False
    # What the training loop runs: the model the accelerator prepares, compiled (lazily: no compile here).
    prepared = trainer.accelerator.prepare_model(trainer.model)
    assert isinstance(prepared, torch._dynamo.eval_frame.OptimizedModule)
    assert prepared._orig_mod is trainer.model


def test_packing_refuses_a_model_that_loads_with_eager_attention(tiny_causal_lm: Path, sample_dataset: Any,
                                                                  run_training: Any, tmp_path: Path) -> None:
    """A model whose own default is eager (attention_implementation null) would let packed
    examples attend to each other: refused once the model reports its attention."""
    import json
    import shutil

    from modelforge_core.errors import UsageError

    model = tmp_path / "eager-model"
    shutil.copytree(tiny_causal_lm, model)
    settings = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**settings, "attn_implementation": "eager"}))
    config = tiny_config(model, sample_dataset("text-generation"), packing=True, max_steps=1, eval_split=0)
    with pytest.raises(UsageError, match=r"packing needs sdpa or flash_attention_2 attention.*loaded with eager"):
        run_training(config)


def test_liger_and_flash_attention_are_refused_on_a_machine_without_them(
        tiny_causal_lm: Path, sample_dataset: Any, run_training: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from modelforge_core.errors import EnvironmentProblem
    from modelforge_core.speedups import machine_problems

    data = sample_dataset("text-generation")
    with pytest.raises(EnvironmentProblem, match="liger_kernel needs an NVIDIA GPU") as raised:
        run_training(tiny_config(tiny_causal_lm, data, liger_kernel=True, max_steps=1))
    assert raised.value.exit_code == 3
    with pytest.raises(EnvironmentProblem, match="flash_attention_2 needs an NVIDIA GPU"):
        run_training(tiny_config(tiny_causal_lm, data, attention_implementation="flash_attention_2", max_steps=1))
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("liger_kernel", "flash_attn") else found(name, *a))
    problems = machine_problems({"liger_kernel": True, "attention_implementation": "flash_attention_2"}, "cuda")
    assert [p.split(" needs ")[1][:12] for p in problems] == ["the liger-ke", "the flash-at"]
    assert machine_problems({"liger_kernel": False, "torch_compile": False}, "cpu") == []
