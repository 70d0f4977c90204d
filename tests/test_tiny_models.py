"""Tests for ``modelforge_core.testing.tiny``: tiny offline models and tokenizers."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.testing import tiny

pytest.importorskip("torch")
pytest.importorskip("transformers")

TWO_TURN_CHAT: list[dict[str, str]] = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
]

MAX_FOLDER_BYTES = 3 * 1024 * 1024


def _timed_build(builder: Callable[..., Path], out: Path, **kwargs: Any) -> Path:
    """Run a builder, print how long it took and return its folder."""
    start = time.perf_counter()
    path = builder(out, **kwargs)
    elapsed = time.perf_counter() - start
    size_mb = _folder_bytes(path) / 1e6
    print(f"\n[tiny] {builder.__name__}({out.name}) built in {elapsed:.3f}s, {size_mb:.2f} MB")
    return path


def _folder_bytes(path: Path) -> int:
    """Total size of the regular files directly inside ``path``."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _timed_build(tiny.build_tiny_causal_lm, tmp_path_factory.mktemp("causal"))


@pytest.fixture(scope="module")
def causal_pad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _timed_build(tiny.build_tiny_causal_lm, tmp_path_factory.mktemp("causal_pad"), pad_token=True)


@pytest.fixture(scope="module")
def seq2seq_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _timed_build(tiny.build_tiny_seq2seq_lm, tmp_path_factory.mktemp("seq2seq"))


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _timed_build(tiny.build_tiny_qa_encoder, tmp_path_factory.mktemp("qa"))


# --------------------------------------------------------------------------- #
# Module hygiene and corpus
# --------------------------------------------------------------------------- #


def test_import_is_lightweight() -> None:
    code = (
        "import sys\n"
        "import modelforge_core.testing.tiny as t\n"
        "heavy = [m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert len(t.DEFAULT_CORPUS) >= 200\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_default_corpus_is_deterministic_text() -> None:
    assert isinstance(tiny.DEFAULT_CORPUS, tuple)
    assert 200 <= len(tiny.DEFAULT_CORPUS) <= 2000
    assert all(isinstance(line, str) and line for line in tiny.DEFAULT_CORPUS)
    assert tiny._generate_corpus() == tiny.DEFAULT_CORPUS
    assert any(line.startswith("summarize:") for line in tiny.DEFAULT_CORPUS)
    assert "The capital of France is Paris." in tiny.DEFAULT_CORPUS


# --------------------------------------------------------------------------- #
# Tokenizers
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("pad_token", [False, True])
def test_bpe_tokenizer(tmp_path: Path, pad_token: bool) -> None:
    from transformers import AutoTokenizer

    path = tiny.build_tokenizer(tmp_path / "tok", pad_token=pad_token)
    assert path == tmp_path / "tok"
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == 1000
    assert tok.convert_tokens_to_ids(list(tiny.BPE_SPECIAL_TOKENS)) == [0, 1, 2]
    assert (tok.bos_token, tok.bos_token_id) == ("<|endoftext|>", 0)
    assert (tok.unk_token, tok.unk_token_id) == ("<|endoftext|>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    if pad_token:
        assert (tok.pad_token, tok.pad_token_id) == ("<|pad|>", 3)
    else:
        assert tok.pad_token is None
        assert tok.pad_token_id is None
    # No bos/eos added around plain text, no token_type_ids.
    enc = tok("The capital of France is Paris.")
    assert set(enc.keys()) == {"input_ids", "attention_mask"}
    assert tok.eos_token_id not in enc["input_ids"]
    assert tok.bos_token_id not in enc["input_ids"]


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        "Hello, world!  Two  spaces, tabs\tand\nnew lines; 123 + 456 = 579.",
        " leading space and trailing space ",
        "Zebra quokka xylophone: unseen WORDS still round-trip (bytes) ~!@#$%^&*()",
    ],
)
def test_bpe_round_trip(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    from transformers import AutoTokenizer

    path = tmp_path_factory.getbasetemp() / "bpe_round_trip"
    if not (path / "tokenizer.json").exists():
        tiny.build_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_chat_template(causal_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(causal_dir)
    rendered = tok.apply_chat_template(TWO_TURN_CHAT, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert rendered.endswith("<|im_start|>assistant\n")
    closed = tok.apply_chat_template(TWO_TURN_CHAT[:2], tokenize=False)
    assert isinstance(closed, str)
    assert closed.endswith("Paris.<|im_end|>\n")
    with_system = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *TWO_TURN_CHAT], tokenize=False)
    assert isinstance(with_system, str)
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")

    # Special tokens are single ids, and the generation markers give an assistant mask.
    out: Any = tok.apply_chat_template(
        TWO_TURN_CHAT[:2], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(tok.eos_token_id) == 2
    assistant_text = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert assistant_text == "The capital of France is Paris.<|im_end|>"


def test_chat_template_can_be_disabled(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.build_tokenizer(tmp_path, chat_template=False))
    assert not tok.chat_template


def test_custom_corpus_and_vocab_size(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    corpus = [f"line number {i} about {w}" for i, w in enumerate(["cats", "dogs", "birds"] * 20)]
    tok = AutoTokenizer.from_pretrained(tiny.build_tokenizer(tmp_path, corpus=corpus, vocab_size=300))
    assert len(tok) <= 300
    assert tok.decode(tok("line number 7 about dogs")["input_ids"]) == "line number 7 about dogs"


def test_unknown_kind_and_empty_corpus(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tiny.build_tokenizer(tmp_path, kind="sentencepiece")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="corpus is empty"):
        tiny.build_tokenizer(tmp_path, corpus=[])


def test_wordpiece_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.build_tokenizer(tmp_path, kind="wordpiece"))
    assert tok.convert_tokens_to_ids(list(tiny.WORDPIECE_SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 1, 2, 3)
    assert (tok.mask_token, tok.mask_token_id) == ("[MASK]", 4)
    enc = tok("Who lives in Paris?", "Alice lives in Paris.")
    ids, types = enc["input_ids"], enc["token_type_ids"]
    assert ids[0] == tok.cls_token_id
    assert ids[-1] == tok.sep_token_id
    assert ids.count(tok.sep_token_id) == 2
    first_sep = ids.index(tok.sep_token_id)
    assert set(types[: first_sep + 1]) == {0}
    assert set(types[first_sep + 1 :]) == {1}
    assert tok.decode(ids, skip_special_tokens=True) == "who lives in paris? alice lives in paris."


def test_unigram_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.build_tokenizer(tmp_path, kind="unigram"))
    assert (tok.pad_token, tok.pad_token_id) == ("<pad>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("</s>", 1)
    assert (tok.unk_token, tok.unk_token_id) == ("<unk>", 2)
    text = "summarize: The cat ran to the river."
    ids = tok(text)["input_ids"]
    assert ids[-1] == tok.eos_token_id
    assert ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == text


# --------------------------------------------------------------------------- #
# Causal LM
# --------------------------------------------------------------------------- #


def test_causal_lm_folder(causal_dir: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        assert (causal_dir / name).is_file(), name
    assert _folder_bytes(causal_dir) < MAX_FOLDER_BYTES


def test_causal_lm_forward(causal_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(causal_dir)
    model = AutoModelForCausalLM.from_pretrained(causal_dir)
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert (cfg.num_key_value_heads, cfg.intermediate_size, cfg.max_position_embeddings) == (2, 128, 512)
    assert cfg.tie_word_embeddings is False
    assert cfg.vocab_size == len(tok)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (0, 2, None)
    assert model.generation_config.eos_token_id == tok.eos_token_id

    batch = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    seq = batch["input_ids"].shape[1]
    assert out.logits.shape == (1, seq, len(tok))
    assert torch.isfinite(out.loss)
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, seq + 3)


def test_causal_tokenizer_has_no_pad_unless_asked(causal_dir: Path, causal_pad_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    assert AutoTokenizer.from_pretrained(causal_dir).pad_token is None
    assert AutoConfig.from_pretrained(causal_dir).pad_token_id is None
    padded = AutoTokenizer.from_pretrained(causal_pad_dir)
    assert (padded.pad_token, padded.pad_token_id) == ("<|pad|>", 3)
    assert AutoConfig.from_pretrained(causal_pad_dir).pad_token_id == 3
    batch = padded(["short", "a somewhat longer sentence"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == 3
    assert batch["attention_mask"][0, -1].item() == 0


def test_causal_lm_as_reward_model(causal_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(causal_dir)
    model = AutoModelForSequenceClassification.from_pretrained(causal_dir, num_labels=1)
    batch = tok("A good answer.", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, 1)


def test_causal_lm_custom_size(tmp_path: Path) -> None:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny.build_tiny_causal_lm(tmp_path, hidden_size=32, num_layers=1))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (32, 1, 64)


def test_causal_lm_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        tiny.build_tiny_causal_lm(tmp_path, hidden_size=30)
    with pytest.raises(ValueError, match="num_layers"):
        tiny.build_tiny_causal_lm(tmp_path, num_layers=0)
    with pytest.raises(ValueError, match="architecture"):
        tiny.build_tiny_causal_lm(tmp_path, architecture="gpt2")  # type: ignore[arg-type]


def test_qwen2_variant_has_biased_attention_projections_and_generates(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny.build_tiny_causal_lm(tmp_path, architecture="qwen2")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "qwen2"
    attention = model.model.layers[0].self_attn
    assert all(getattr(attention, name).bias is not None for name in ("q_proj", "k_proj", "v_proj"))
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3 or out[0, -1].item() == tok.eos_token_id


@pytest.mark.parametrize("builder", [tiny.build_tiny_seq2seq_lm, tiny.build_tiny_qa_encoder])
def test_other_builders_are_deterministic(builder: Callable[..., Path], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    first = load_file(str(builder(tmp_path / "a", seed=3) / "model.safetensors"))
    second = load_file(str(builder(tmp_path / "b", seed=3) / "model.safetensors"))
    third = load_file(str(builder(tmp_path / "c", seed=4) / "model.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], third[k]) for k in first)


def test_same_seed_same_weights(causal_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    before = torch.get_rng_state()
    again = tiny.build_tiny_causal_lm(tmp_path / "same", seed=0)
    assert torch.equal(before, torch.get_rng_state()), "builder must not disturb the global RNG"
    other = tiny.build_tiny_causal_lm(tmp_path / "other", seed=1)
    ref = load_file(str(causal_dir / "model.safetensors"))
    same = load_file(str(again / "model.safetensors"))
    diff = load_file(str(other / "model.safetensors"))
    assert ref.keys() == same.keys() == diff.keys()
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert any(not torch.equal(ref[k], diff[k]) for k in ref)
    assert (causal_dir / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


# --------------------------------------------------------------------------- #
# Seq2seq
# --------------------------------------------------------------------------- #


def test_seq2seq_forward(seq2seq_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5ForConditionalGeneration

    assert _folder_bytes(seq2seq_dir) < MAX_FOLDER_BYTES
    tok = AutoTokenizer.from_pretrained(seq2seq_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(seq2seq_dir)
    assert isinstance(model, T5ForConditionalGeneration)
    cfg = model.config
    assert (cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.num_decoder_layers) == (64, 128, 2, 2)
    assert (cfg.num_heads, cfg.d_kv) == (4, 16)
    assert cfg.decoder_start_token_id == cfg.pad_token_id == tok.pad_token_id == 0
    assert cfg.eos_token_id == tok.eos_token_id
    assert cfg.vocab_size == len(tok)

    batch = tok(
        ["summarize: The cat walked to the river to eat fish.", "summarize: A dog sleeps."],
        text_target=["A cat ate fish.", "A dog rests."],
        padding=True,
        return_tensors="pt",
    )
    labels = batch["labels"].masked_fill(batch["labels"] == tok.pad_token_id, -100)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    assert math.isfinite(out.loss.item())
    assert out.logits.shape == (*labels.shape, len(tok))
    generated = model.generate(**{k: batch[k] for k in ("input_ids", "attention_mask")}, max_new_tokens=4)
    assert generated[0, 0].item() == tok.pad_token_id


# --------------------------------------------------------------------------- #
# Extractive QA encoder
# --------------------------------------------------------------------------- #


def test_qa_encoder_loads(qa_dir: Path) -> None:
    import torch
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertForQuestionAnswering,
    )

    assert _folder_bytes(qa_dir) < MAX_FOLDER_BYTES
    tok = AutoTokenizer.from_pretrained(qa_dir)
    assert tok.model_max_length == 512
    model = AutoModelForQuestionAnswering.from_pretrained(qa_dir)
    assert isinstance(model, BertForQuestionAnswering)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert (cfg.intermediate_size, cfg.max_position_embeddings, cfg.vocab_size) == (128, 512, len(tok))
    batch = tok("Who lives in Paris?", "Alice lives in Paris.", return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    assert out.start_logits.shape == out.end_logits.shape == batch["input_ids"].shape

    clf = AutoModelForSequenceClassification.from_pretrained(qa_dir, num_labels=3)
    with torch.no_grad():
        assert clf(**batch).logits.shape == (1, 3)


def test_qa_tokenizer_offsets_and_overflow(qa_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qa_dir)
    question = "What is the capital of Norway?"
    context = " ".join(line for line in tiny.DEFAULT_CORPUS if "capital" in line)
    answer = "Oslo"
    answer_start = context.index(answer)
    max_length, stride = 64, 16
    enc = tok(
        [question],
        [context],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    n_windows = len(enc["input_ids"])
    assert n_windows > 2
    assert enc["overflow_to_sample_mapping"] == [0] * n_windows
    assert all(len(ids) == max_length for ids in enc["input_ids"])

    found = False
    previous_last: int | None = None
    for i in range(n_windows):
        seq_ids = enc.sequence_ids(i)
        offsets = enc["offset_mapping"][i]
        ctx = [j for j, s in enumerate(seq_ids) if s == 1]
        assert ctx, "every window must contain context tokens"
        assert all(enc["token_type_ids"][i][j] == 1 for j in ctx)
        # The question is repeated in full in every window.
        q_tokens = [j for j, s in enumerate(seq_ids) if s == 0]
        assert tok.decode([enc["input_ids"][i][j] for j in q_tokens]) == question.lower()
        # Offsets index into the original (cased) context.
        start, end = offsets[ctx[0]][0], offsets[ctx[-1]][1]
        assert 0 <= start < end <= len(context)
        if previous_last is not None:
            assert start < previous_last, "consecutive windows must overlap (stride)"
        previous_last = end
        for j in ctx:
            s, e = offsets[j]
            if s == answer_start and context[s:e] == answer:
                found = True
    assert found, "the answer span must be recoverable from the offsets"


# --------------------------------------------------------------------------- #
# LoRA
# --------------------------------------------------------------------------- #


# peft 0.21 calls PreTrainedModel.is_gradient_checkpointing, deprecated in transformers 5.x.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    ("fixture", "auto_class"),
    [
        ("causal_dir", "AutoModelForCausalLM"),
        ("seq2seq_dir", "AutoModelForSeq2SeqLM"),
        ("qa_dir", "AutoModelForQuestionAnswering"),
    ],
)
def test_lora_attaches(request: pytest.FixtureRequest, fixture: str, auto_class: str) -> None:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    path: Path = request.getfixturevalue(fixture)
    model = getattr(transformers, auto_class).from_pretrained(path)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n for n in trainable)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    batch = dict(tok("The capital of France is Paris.", return_tensors="pt"))
    if auto_class == "AutoModelForSeq2SeqLM":
        batch["labels"] = tok("Paris", return_tensors="pt")["input_ids"]
    elif auto_class == "AutoModelForCausalLM":
        batch["labels"] = batch["input_ids"]
    else:
        batch["start_positions"] = torch.tensor([1])
        batch["end_positions"] = torch.tensor([2])
    loss = peft_model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_B" in n)
