"""The memory plan: how much memory a training config needs, from the model's ``config.json``
alone (no weights loaded), compared with the machine, with what to change when it does not fit.

The estimate follows what the huggingface provider and TRL's trainers really keep in memory
(docs/profiles.md has the formula and the measurements it was checked against):

- **weights**: the linear layers of the transformer blocks at their quantized size (4-bit:
  half a byte a parameter plus one fp32 scale per 64 (nested: one 8-bit scale per 64 and an fp32
  one per 16384); 8-bit: a byte plus an fp32 scale per output row); everything else
  (embeddings, norms, an untied LM head) at the dtype it trains in: fp32 on a quantized base,
  because peft's k-bit preparation casts them up, else the precision's 2 or 4 bytes.
- **LoRA**: ``r x (in + out)`` per targeted linear layer, in fp32, with fp32 gradients and the
  optimizer's state (AdamW 8 bytes a parameter, 8-bit AdamW 2, SGD none).
- **activations**: per token and block, what autograd keeps for the backward pass: the inputs
  of the adapted linear layers, the attention inputs and output, the MLP's intermediate tensors,
  the norms' fp32 inputs, LoRA dropout's masks and copies; attention scores only for models
  whose attention is not fused (T5, DeBERTa). With gradient checkpointing only each block's
  input is kept, plus one block recomputed during the backward pass.
- **logits**: ``tokens x vocabulary x (element size + 10)`` bytes (the logits, their fp32 copy,
  the log-softmax and its gradient), except under TRL's SFT and DPO trainers, whose fused LM
  head computes the loss in tiles and never holds the full logits.
- **the speed options**: ``attention_implementation: eager`` materializes each layer's attention
  scores; ``packing`` (padding-free) makes a batch one row of batch x sequence tokens, which with
  sdpa needs a block-diagonal mask of that length squared (flash attention needs none) and with
  eager scores of that length squared; ``liger_kernel``'s fused SwiGLU and RMSNorm keep fewer
  MLP and norm tensors; ``neftune_noise_alpha`` keeps a noisy copy of the embeddings;
  ``torch_compile`` is not counted (its fusions save memory, so the plan errs on the safe side).
- **overhead**: the CUDA context and workspaces (0.75 GiB) or, on a CPU, the Python process
  with torch and transformers loaded (1.5 GiB), plus 5% for allocator fragmentation.

Importing this module is cheap: no torch. Only :func:`check_fits` and the CLI look at the
machine (through :mod:`modelforge_core.hardware`).

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import EnvironmentProblem
from .hardware import GIB, MemoryTarget, auto_precision, config_precision, memory_target, precision_is_automatic
from .modelconfig import find_model_config

if TYPE_CHECKING:
    from .api import Provider, Strategy, Task
    from .plugins import Plugins

# --- the model's shape ---------------------------------------------------------------------


@dataclass(frozen=True)
class Linear:
    """One linear layer of a block: its module name (what ``lora_target_modules`` matches) and size."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False

    @property
    def parameters(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class Block:
    """One kind of transformer block and how many the model has.

    ``mlp_width`` is the intermediate width a token goes through (for a mixture of experts, the
    active experts' widths added up); ``eager_heads`` is the number of heads whose attention
    scores are materialized (models without fused attention), 0 otherwise.
    """

    count: int
    hidden: int
    q_dim: int
    kv_dim: int
    mlp_width: int
    gated: bool
    linears: tuple[Linear, ...]
    other_parameters: int  # norms and other non-linear parameters of one block
    cross_attention: bool = False
    eager_heads: int = 0
    heads: int = 0  # attention heads (query), for attention_implementation eager


@dataclass(frozen=True)
class Architecture:
    """What the plan needs to know about a model, read from its ``config.json``."""

    model_type: str
    family: str  # "decoder", "encoder" or "encoder-decoder"
    hidden: int
    vocab: int
    blocks: tuple[Block, ...]
    embedding_parameters: int  # token (and position) embeddings, embedding norms
    final_parameters: int  # final norms
    tied_embeddings: bool
    max_positions: int | None
    learned_positions: bool = False  # inputs are cut at max_positions (BERT, BART, GPT-2)

    @property
    def layers(self) -> int:
        return sum(b.count for b in self.blocks)

    @property
    def linear_parameters(self) -> int:
        """Parameters in the blocks' linear layers: what bitsandbytes quantizes."""
        return sum(b.count * sum(lin.parameters for lin in b.linears) for b in self.blocks)

    def head_parameters(self, head: str) -> int:
        if head in ("causal-lm", "seq2seq-lm"):
            return 0 if self.tied_embeddings else self.vocab * self.hidden
        if head == "question-answering":
            return 2 * self.hidden + 2
        if head == "sequence-classification":
            return self.hidden + (self.hidden * self.hidden + self.hidden if self.family == "encoder" else 0)
        return 0

    def parameters(self, head: str | None = None) -> int:
        """All parameters of the model with ``head`` (its natural LM head when ``None``)."""
        head = head or {"decoder": "causal-lm", "encoder-decoder": "seq2seq-lm"}.get(self.family, "question-answering")
        blocks = sum(b.count * b.other_parameters for b in self.blocks)
        return (self.embedding_parameters + self.linear_parameters + blocks + self.final_parameters
                + self.head_parameters(head))


class UnknownArchitecture(ValueError):
    """The ``config.json`` does not describe a transformer this module can size."""


def _int(cfg: Mapping[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
    if default is not None:
        return default
    raise UnknownArchitecture(f"config.json has none of {', '.join(keys)}")


#: Decoder model types whose MLP is a plain two-layer one (no gate).
PLAIN_MLP = frozenset({"gpt_neox", "phi", "opt", "falcon", "starcoder2", "bloom", "gpt_bigcode", "gptj", "gpt2"})
#: Decoder model types whose config ties the LM head to the embeddings when config.json says nothing.
TIED_BY_DEFAULT = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text", "gpt2", "opt", "bloom", "falcon"})
#: Encoders of the BERT layout (query/key/value, dense, intermediate, output).
BERT_LIKE = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta", "deberta-v2",
                       "mpnet", "ernie", "xlm-roberta-xl", "modernbert"})


def architecture_from_config(config: Mapping[str, Any]) -> Architecture:
    """Read the shape of a model from its ``config.json`` dict.

    Decoders of the Llama family (Llama, Qwen, Mistral, Gemma, Phi-3, mixtures of experts) and
    GPT-2, BERT-like encoders (BERT, RoBERTa, DeBERTa, DistilBERT), T5 and BART. Raises
    :class:`UnknownArchitecture` for anything else.
    """
    cfg: Mapping[str, Any] = config
    if "text_config" in cfg and isinstance(cfg["text_config"], Mapping) and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings",
                                                                   cfg["text_config"].get("tie_word_embeddings"))}
    model_type = str(cfg.get("model_type", ""))
    if model_type in ("t5", "mt5", "umt5") or ("d_kv" in cfg and "d_model" in cfg):
        return _t5(cfg, model_type or "t5")
    if "encoder_layers" in cfg and "decoder_layers" in cfg:
        return _bart(cfg, model_type or "bart")
    if model_type == "distilbert" or ("n_layers" in cfg and "dim" in cfg):
        return _distilbert(cfg)
    if model_type in BERT_LIKE:
        return _bert(cfg, model_type)
    if model_type == "gpt2" or "n_embd" in cfg:
        return _gpt2(cfg)
    if cfg.get("is_encoder_decoder"):
        raise UnknownArchitecture(f"encoder-decoder model type {model_type!r} is not known to the planner")
    return _decoder(cfg, model_type)


def _decoder(cfg: Mapping[str, Any], model_type: str) -> Architecture:
    hidden = _int(cfg, "hidden_size")
    layers = _int(cfg, "num_hidden_layers")
    heads = _int(cfg, "num_attention_heads")
    kv_heads = _int(cfg, "num_key_value_heads", default=heads)
    head_dim = _int(cfg, "head_dim", default=hidden // heads)
    vocab = _int(cfg, "vocab_size")
    intermediate = _int(cfg, "intermediate_size", default=4 * hidden)
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    all_bias = bool(cfg.get("attention_bias"))
    qkv_bias = all_bias or model_type.startswith("qwen2")
    gated = model_type not in PLAIN_MLP
    attention: tuple[Linear, ...]
    if model_type == "phi3":
        attention = (Linear("qkv_proj", hidden, q_dim + 2 * kv_dim), Linear("o_proj", q_dim, hidden))
    else:
        attention = (Linear("q_proj", hidden, q_dim, qkv_bias), Linear("k_proj", hidden, kv_dim, qkv_bias),
                     Linear("v_proj", hidden, kv_dim, qkv_bias), Linear("o_proj", q_dim, hidden, all_bias))
    mlp_bias = bool(cfg.get("mlp_bias"))

    def mlp(width: int) -> tuple[Linear, ...]:
        if model_type == "phi3":
            return (Linear("gate_up_proj", hidden, 2 * width), Linear("down_proj", width, hidden))
        if gated:
            return (Linear("gate_proj", hidden, width, mlp_bias), Linear("up_proj", hidden, width, mlp_bias),
                    Linear("down_proj", width, hidden, mlp_bias))
        return (Linear("fc1", hidden, width, True), Linear("fc2", width, hidden, True))

    experts = _int(cfg, "num_local_experts", "num_experts", default=0)
    if experts > 1:
        width = _int(cfg, "moe_intermediate_size", default=intermediate)
        active = _int(cfg, "num_experts_per_tok", default=2)
        shared = _int(cfg, "shared_expert_intermediate_size", default=0)
        router = Linear("gate", hidden, experts)
        linears = (*attention, router, *(mlp(width) * experts), *(mlp(shared) if shared else ()))
        mlp_width = active * width + shared
    else:
        linears = attention + mlp(intermediate)
        mlp_width = intermediate
    norm = hidden if gated else 2 * hidden  # RMSNorm has a weight; LayerNorm a weight and a bias
    per_block = 2 * norm + (2 * head_dim if model_type.startswith("qwen3") else 0)
    tied = cfg.get("tie_word_embeddings")
    if tied is None:
        tied = model_type in TIED_BY_DEFAULT
    block = Block(layers, hidden, q_dim, kv_dim, mlp_width, gated, linears, per_block, heads=heads)
    return Architecture(model_type or "decoder", "decoder", hidden, vocab, (block,), vocab * hidden, norm,
                        bool(tied), cfg.get("max_position_embeddings"))


def _gpt2(cfg: Mapping[str, Any]) -> Architecture:
    hidden = _int(cfg, "n_embd", "hidden_size")
    layers = _int(cfg, "n_layer", "num_hidden_layers")
    vocab = _int(cfg, "vocab_size")
    positions = _int(cfg, "n_positions", "max_position_embeddings", default=1024)
    inner = _int(cfg, "n_inner", default=4 * hidden)
    linears = (Linear("c_attn", hidden, 3 * hidden, True), Linear("c_proj", hidden, hidden, True),
               Linear("c_fc", hidden, inner, True), Linear("c_proj", inner, hidden, True))
    block = Block(layers, hidden, hidden, hidden, inner, False, linears, 4 * hidden)
    return Architecture("gpt2", "decoder", hidden, vocab, (block,), (vocab + positions) * hidden, 2 * hidden,
                        bool(cfg.get("tie_word_embeddings", True)), positions, learned_positions=True)


def _bert(cfg: Mapping[str, Any], model_type: str) -> Architecture:
    hidden = _int(cfg, "hidden_size")
    layers = _int(cfg, "num_hidden_layers")
    heads = _int(cfg, "num_attention_heads")
    vocab = _int(cfg, "vocab_size")
    inter = _int(cfg, "intermediate_size", default=4 * hidden)
    positions = _int(cfg, "max_position_embeddings", default=512)
    types = cfg.get("type_vocab_size", 2)
    types = int(types) if isinstance(types, int) else 0
    deberta = model_type.startswith("deberta")
    names = ("query_proj", "key_proj", "value_proj") if model_type == "deberta-v2" else ("query", "key", "value")
    linears = (*(Linear(n, hidden, hidden, True) for n in names), Linear("dense", hidden, hidden, True),
               Linear("dense", hidden, inter, True), Linear("dense", inter, hidden, True))
    if deberta and cfg.get("relative_attention") and not cfg.get("share_att_key", False):
        linears += (Linear("pos_key_proj", hidden, hidden, True), Linear("pos_query_proj", hidden, hidden, True))
    embeddings = vocab * hidden + types * hidden + 2 * hidden
    if not deberta or cfg.get("position_biased_input", True):
        embeddings += positions * hidden
    if deberta and cfg.get("relative_attention"):
        buckets = _int(cfg, "position_buckets", default=0) or _int(cfg, "max_relative_positions", default=positions)
        embeddings += 2 * buckets * hidden + (2 * hidden if "layer_norm" in str(cfg.get("norm_rel_ebd", "")) else 0)
    block = Block(layers, hidden, hidden, hidden, inter, False, linears, 4 * hidden,
                  eager_heads=heads if deberta else 0)
    usable = positions - 2 if model_type in ("roberta", "xlm-roberta", "camembert") else positions
    return Architecture(model_type, "encoder", hidden, vocab, (block,), embeddings, 0, True, usable,
                        learned_positions=True)


def _distilbert(cfg: Mapping[str, Any]) -> Architecture:
    hidden = _int(cfg, "dim", "hidden_size")
    layers = _int(cfg, "n_layers", "num_hidden_layers")
    vocab = _int(cfg, "vocab_size")
    inter = _int(cfg, "hidden_dim", "intermediate_size", default=4 * hidden)
    positions = _int(cfg, "max_position_embeddings", default=512)
    linears = (Linear("q_lin", hidden, hidden, True), Linear("k_lin", hidden, hidden, True),
               Linear("v_lin", hidden, hidden, True), Linear("out_lin", hidden, hidden, True),
               Linear("lin1", hidden, inter, True), Linear("lin2", inter, hidden, True))
    block = Block(layers, hidden, hidden, hidden, inter, False, linears, 4 * hidden)
    return Architecture("distilbert", "encoder", hidden, vocab, (block,), (vocab + positions + 2) * hidden, 0,
                        True, positions, learned_positions=True)


def _t5(cfg: Mapping[str, Any], model_type: str) -> Architecture:
    d = _int(cfg, "d_model")
    d_kv = _int(cfg, "d_kv", default=64)
    heads = _int(cfg, "num_heads")
    d_ff = _int(cfg, "d_ff")
    enc_layers = _int(cfg, "num_layers")
    dec_layers = _int(cfg, "num_decoder_layers", default=enc_layers)
    vocab = _int(cfg, "vocab_size")
    gated = str(cfg.get("feed_forward_proj", "relu")).startswith("gated")
    inner = heads * d_kv
    attention = (Linear("q", d, inner), Linear("k", d, inner), Linear("v", d, inner), Linear("o", inner, d))
    mlp = ((Linear("wi_0", d, d_ff), Linear("wi_1", d, d_ff)) if gated else (Linear("wi", d, d_ff),)) + (
        Linear("wo", d_ff, d),)
    buckets = _int(cfg, "relative_attention_num_buckets", default=32)
    encoder = Block(enc_layers, d, inner, inner, d_ff, gated, attention + mlp, 2 * d, eager_heads=heads)
    decoder = Block(dec_layers, d, inner, inner, d_ff, gated, attention * 2 + mlp, 3 * d, cross_attention=True,
                    eager_heads=heads)
    # transformers 5 ties T5's LM head to the embeddings always (v1.1 and FLAN-T5 included:
    # their config's tie_word_embeddings=false now only turns off the output scaling).
    return Architecture(model_type, "encoder-decoder", d, vocab, (encoder, decoder),
                        vocab * d + 2 * buckets * heads, 2 * d, True, cfg.get("n_positions"))


def _bart(cfg: Mapping[str, Any], model_type: str) -> Architecture:
    d = _int(cfg, "d_model")
    enc_layers, dec_layers = _int(cfg, "encoder_layers"), _int(cfg, "decoder_layers")
    enc_ff = _int(cfg, "encoder_ffn_dim", default=4 * d)
    dec_ff = _int(cfg, "decoder_ffn_dim", default=enc_ff)
    vocab = _int(cfg, "vocab_size")
    positions = _int(cfg, "max_position_embeddings", default=1024)
    attention = tuple(Linear(n, d, d, True) for n in ("q_proj", "k_proj", "v_proj", "out_proj"))
    encoder = Block(enc_layers, d, d, d, enc_ff, False,
                    (*attention, Linear("fc1", d, enc_ff, True), Linear("fc2", enc_ff, d, True)), 4 * d)
    decoder = Block(dec_layers, d, d, d, dec_ff, False,
                    (*attention, *attention, Linear("fc1", d, dec_ff, True), Linear("fc2", dec_ff, d, True)), 6 * d,
                    cross_attention=True)
    # Learned positions (with BART's offset of 2) for each stack, and an embedding LayerNorm each.
    embeddings = vocab * d + 2 * (positions + 2) * d + 2 * 2 * d
    return Architecture(model_type, "encoder-decoder", d, vocab, (encoder, decoder), embeddings, 0,
                        bool(cfg.get("tie_word_embeddings", True)), positions, learned_positions=True)


# --- the estimate --------------------------------------------------------------------------

#: Memory the runtime takes besides the tensors: the CUDA context and workspaces on a GPU, the
#: Python process with torch, transformers and TRL loaded on a CPU (GiB).
RUNTIME_OVERHEAD_GB = {"cuda": 0.75, "mps": 1.0, "cpu": 1.5}
#: Share added to the tensors for the allocator's fragmentation.
FRAGMENTATION = 0.05
#: Optimizer state in bytes per trainable parameter.
OPTIMIZER_BYTES = {"adamw_torch": 8, "paged_adamw_32bit": 8, "adamw_8bit": 2, "sgd": 0}
#: The shortest max_seq_length the advice suggests.
SHORTEST_SEQUENCE = 256


@dataclass(frozen=True)
class Settings:
    """The config fields that decide the memory, with the precision resolved for the target."""

    head: str
    precision: str
    quantization: str | None  # "4bit", "8bit" or None
    nested_quant: bool
    provider: str
    strategy: str
    batch: int
    sequence: int
    gradient_checkpointing: bool
    lora_r: int
    lora_targets: Any
    lora_dropout: float
    optimizer: str
    #: From the strategy (:attr:`Strategy.sequences_per_example`, :attr:`Strategy.fused_loss`).
    sequences_per_example: int = 1
    fused_loss: bool = False
    #: From the provider (:attr:`Provider.kbit_upcasts_to_fp32`).
    kbit_upcast: bool = True
    attention: str | None = None  # attention_implementation; None: the model's default (sdpa)
    packing: bool = False
    liger_kernel: bool = False
    torch_compile: bool = False
    neftune: bool = False


@dataclass(frozen=True)
class Estimate:
    """The memory of each part, in bytes."""

    weights: float
    lora: float
    activations: float
    logits: float
    overhead: float
    lora_parameters: int

    @property
    def allocated(self) -> float:
        """The tensors' peak: comparable with ``torch.cuda.max_memory_allocated()``."""
        return self.weights + self.lora + self.activations + self.logits

    @property
    def total(self) -> float:
        return self.allocated + self.overhead


def _targeted(linear: Linear, targets: Any) -> bool:
    if targets in (None, "all-linear"):
        return True
    if isinstance(targets, str):
        return linear.name == targets
    return linear.name in set(targets)


def _quantized_bytes(arch: Architecture, settings: Settings) -> float:
    params = arch.linear_parameters
    if settings.quantization == "4bit":
        scales = (1 / 64 + 4 / (64 * 256)) if settings.nested_quant else 4 / 64
        return params * (0.5 + scales)
    if settings.quantization == "8bit":
        rows = sum(b.count * sum(lin.out_features for lin in b.linears) for b in arch.blocks)
        return params + 4 * rows
    return params * (2 if settings.precision in ("bf16", "fp16") else 4)


def _element_size(settings: Settings) -> int:
    """Bytes of an activation: fp32 on a k-bit base (peft casts the embeddings and norms up, so
    the residual stream is fp32) and in fp32 training, else 2."""
    if settings.quantization and settings.kbit_upcast:
        return 4
    return 2 if settings.precision in ("bf16", "fp16") else 4


def _block_bytes(block: Block, settings: Settings, size: int) -> float:
    """Bytes autograd keeps per token for one block (no checkpointing)."""
    elements = block.hidden + 3 * block.q_dim + 2 * block.kv_dim  # q/k/v input, q, k, v, output, o input
    if block.cross_attention:
        elements += block.hidden + 3 * block.q_dim + 2 * block.kv_dim
    # Liger's fused SwiGLU keeps its two inputs only, its RMSNorm the input and one scale per row.
    gated_kept = 2 if settings.liger_kernel else 4
    elements += block.hidden + (gated_kept if block.gated else 2) * block.mlp_width
    norm_bytes = size if settings.liger_kernel else 4
    norms = (3 if block.cross_attention else 2) * block.hidden * norm_bytes  # norms keep an fp32 copy of their input
    dropout = 0.0
    if settings.lora_dropout > 0:  # each adapted layer's dropout keeps a mask and the dropped input
        dropout = sum(lin.in_features for lin in block.linears if _targeted(lin, settings.lora_targets)) * (size + 1)
    return elements * size + norms + dropout


def _scores_bytes(block: Block, settings: Settings, size: int) -> float:
    """Bytes per sequence of materialized attention scores (scores, softmax in fp32, dropout mask);
    a padding-free packed batch is one sequence of batch x sequence tokens."""
    heads = block.eager_heads or (block.heads if settings.attention == "eager" else 0)
    if not heads:
        return 0.0
    maps = 2 if block.cross_attention else 1
    length = settings.sequence * (settings.batch if settings.packing else 1)
    return maps * heads * length ** 2 * (size + 4 + 1)


def _packing_mask_bytes(settings: Settings, size: int) -> float:
    """sdpa on a padding-free packed batch: the block-diagonal mask transformers builds from the
    position ids, (batch x sequence) squared booleans, and the additive bias sdpa makes of it.
    flash attention needs none (it reads the sequence boundaries)."""
    if not settings.packing or (settings.attention or "sdpa").startswith("flash"):
        return 0.0
    return float((settings.batch * settings.sequence) ** 2 * (1 + size))


def estimate(arch: Architecture, settings: Settings, device: str) -> Estimate:
    """The memory a training step needs at its peak, part by part."""
    size = _element_size(settings)
    tokens = settings.batch * settings.sequence * settings.sequences_per_example
    sequences = settings.batch * settings.sequences_per_example
    if settings.packing:
        sequences = 1  # padding-free: the batch's examples laid end to end in one row
    # Weights.
    other = arch.parameters(settings.head) - arch.linear_parameters
    if settings.quantization and settings.kbit_upcast:
        other_bytes = 4  # prepare_model_for_kbit_training casts every unquantized parameter to fp32
    else:
        other_bytes = 2 if settings.precision in ("bf16", "fp16") or settings.quantization else 4
    weights = _quantized_bytes(arch, settings) + other * other_bytes
    # LoRA: fp32 parameters, fp32 gradients, optimizer state.
    lora_params = sum(b.count * sum(settings.lora_r * (lin.in_features + lin.out_features)
                                    for lin in b.linears if _targeted(lin, settings.lora_targets))
                      for b in arch.blocks)
    lora = lora_params * (4 + 4 + OPTIMIZER_BYTES.get(settings.optimizer, 8))
    # Activations.
    per_block = [(b, _block_bytes(b, settings, size) * tokens + _scores_bytes(b, settings, size) * sequences)
                 for b in arch.blocks]
    largest = max(one for _b, one in per_block)
    if settings.gradient_checkpointing:
        kept = sum(b.count * tokens * b.hidden * size for b, _one in per_block)
        activations = kept + 2 * largest  # one block recomputed in the backward pass, and its gradients
    else:
        activations = sum(b.count * one for b, one in per_block) + largest
    activations += tokens * arch.hidden * (size + 4)  # embedding output, final norm
    if settings.neftune:
        activations += tokens * arch.hidden * size  # NEFTune's noisy copy of the embeddings
    activations += _packing_mask_bytes(settings, size)
    # Logits.
    if settings.head in ("causal-lm", "seq2seq-lm"):
        if settings.head == "causal-lm" and settings.fused_loss:
            logits = min(tokens, 4096) * min(arch.vocab, 32768) * 2 + tokens * 32  # one tile, per-token outputs
        else:
            logits = tokens * arch.vocab * (size + 10 if size == 2 else 12)
    else:
        logits = tokens * 2 * 4 * 3
    allocated = weights + lora + activations + logits
    overhead = RUNTIME_OVERHEAD_GB.get(device, 1.0) * GIB + FRAGMENTATION * allocated
    return Estimate(weights, lora, activations, logits, overhead, lora_params)


# --- the plan ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Advice:
    """One change to the config, and the total it leads to (with the changes before it)."""

    change: dict[str, Any]
    why: str
    total_gb: float
    label: str = ""

    def as_set(self) -> str:
        return " ".join(f"--set {k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.change.items())


@dataclass
class Plan:
    """The memory plan of a config on a machine."""

    model: str
    model_config: str | None
    target: MemoryTarget | None
    architecture: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    parts_gb: dict[str, float] = field(default_factory=dict)
    allocated_gb: float | None = None
    total_gb: float | None = None
    fits: bool | None = None
    advice: list[Advice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def memory_gb(self) -> float | None:
        return self.target.memory_gb if self.target else None

    def verdict(self) -> str:
        if self.fits is None:
            return "cannot tell"
        if not self.fits:
            return "does not fit"
        assert self.total_gb is not None
        assert self.memory_gb is not None
        return "fits, but tightly" if self.total_gb > 0.9 * self.memory_gb else "fits"

    def headline(self) -> str:
        if self.total_gb is None:
            return f"memory plan: {self.notes[0] if self.notes else 'not available'}"
        where = f" of {self.memory_gb:.1f} GiB ({self.target.name}, {self.target.source})" \
            if self.target and self.memory_gb else ""
        return f"memory plan: about {self.total_gb:.1f} GiB{where}: {self.verdict()}"

    def refusal(self) -> str:
        """The one-paragraph message ``modelforge train`` stops with."""
        assert self.target is not None
        assert self.total_gb is not None
        assert self.memory_gb is not None
        text = (f"{self.model} needs about {self.total_gb:.1f} GiB to train with this config, and the "
                f"{self.target.name} has {self.memory_gb:.1f} GiB ({self.target.source})")
        changes = [a for a in self.advice if a.change]
        last = self.advice[-1] if self.advice else None
        if last is not None and not last.change and changes:
            labels = ", ".join(a.label for a in changes)
            text += (f": even with {labels} it needs about {last.total_gb:.1f} GiB; choose a smaller model or a "
                     "machine with more memory")
        elif last is not None and not last.change:
            text += f": {last.why}"
        elif changes:
            text += ": to fit, " + "; then ".join(f"{a.why} ({a.as_set()})" for a in changes)
        return text + " (`modelforge plan CONFIG` shows the details; `modelforge train --force` tries anyway)"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "model_config": self.model_config,
            "target": self.target.to_json() if self.target else None,
            "architecture": self.architecture, "settings": self.settings, "parts_gb": self.parts_gb,
            "allocated_gb": self.allocated_gb, "total_gb": self.total_gb,
            "memory_gb": self.memory_gb, "fits": self.fits, "verdict": self.verdict(),
            "advice": [asdict(a) for a in self.advice], "notes": self.notes,
        }


@dataclass(frozen=True)
class Components:
    """The config's task, strategy and provider, each ``None`` when not installed here."""

    task: Task | None = None
    strategy: Strategy | None = None
    provider: Provider | None = None


def components_of(config: Mapping[str, Any], plugins: Plugins | None = None) -> Components:
    """The installed components the config names; the plan asks them what it needs to know."""
    try:
        from .plugins import get_plugins

        registry = (plugins or get_plugins()).registry
    except Exception:  # plugins cannot load here: plan with the defaults of the API
        return Components()
    return Components(registry.tasks.get(str(config.get("task"))),
                      registry.strategies.get(str(config.get("strategy"))),
                      registry.providers.get(str(config.get("provider"))))


def choose_head(config: Mapping[str, Any], arch: Architecture, model_config: Mapping[str, Any],
                plugins: Plugins | None = None, *, task: Task | None = None) -> str:
    """The head the task would load: asked from the task plugin, else by the model's family."""
    task = task or components_of(config, plugins).task
    with contextlib.suppress(Exception):  # a plugin's failure must not stop a plan
        if task is not None:
            return str(task.choose_head(config, model_config))
    return {"decoder": "causal-lm", "encoder-decoder": "seq2seq-lm"}.get(arch.family, "question-answering")


def sequence_length(config: Mapping[str, Any], arch: Architecture, head: str,
                    task: Task | None = None) -> tuple[int, str | None]:
    """``max_seq_length``, or an estimate from the dataset's longest line when it is null.

    A null ``max_seq_length`` makes the trainer use the longest example (capped by the model),
    unless the task declares a :attr:`Task.default_sequence_length` (fixed windows); a JSONL
    line's characters / 3 over-counts its tokens a little, which suits a plan.
    """
    cap = int(arch.max_positions or 4096)
    if config.get("max_seq_length"):
        wanted = int(config["max_seq_length"])
        if arch.learned_positions and wanted > cap:
            return cap, f"max_seq_length {wanted} exceeds {arch.model_type}'s {cap} positions: planned with {cap}"
        return wanted, None
    if task is not None and task.default_sequence_length:
        length = min(int(task.default_sequence_length), cap)
        return length, f"max_seq_length is null: planned with the {length}-token windows the {task.name} task uses"
    longest = 0
    dataset = config.get("dataset")
    try:
        with open(str(dataset), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                longest = max(longest, len(line))
    except (OSError, TypeError):
        length = min(cap, 2048)
        return length, f"max_seq_length is null and the dataset is not readable: planned with {length} tokens"
    length = min(cap, max(8, math.ceil((longest / 3 + 16) / 8) * 8))
    return length, (f"max_seq_length is null: planned with {length} tokens, estimated from the dataset's longest "
                    "line (set max_seq_length for an exact plan)")


def settings_for(config: Mapping[str, Any], arch: Architecture, head: str,
                 target: MemoryTarget | None, components: Components | None = None) -> tuple[Settings, list[str]]:
    """The memory-relevant settings of ``config``; precision resolved for ``target`` when automatic.

    What depends on a component is asked from it (``components``; the API's defaults for one
    that is not installed).
    """
    parts = components or Components()
    notes = []
    precision = config_precision(config)
    if precision_is_automatic(config) and target is not None:
        precision = auto_precision(target.device, target.bf16)
        notes.append(f"precision: the profile's \"auto\" gives {precision} on {target.device}")
    sequence, note = sequence_length(config, arch, head, parts.task)
    if note:
        notes.append(note)
    quant = "4bit" if config.get("use_4bit") else "8bit" if config.get("use_8bit") else None
    return Settings(
        head=head, precision=precision, quantization=quant, nested_quant=bool(config.get("use_nested_quant")),
        provider=str(config.get("provider", "")), strategy=str(config.get("strategy", "")),
        batch=int(config.get("per_device_train_batch_size", 1)), sequence=sequence,
        gradient_checkpointing=bool(config.get("gradient_checkpointing")), lora_r=int(config.get("lora_r", 16)),
        lora_targets=config.get("lora_target_modules", "all-linear"),
        lora_dropout=float(config.get("lora_dropout", 0.0)), optimizer=str(config.get("optim", "adamw_torch")),
        sequences_per_example=max(1, int(parts.strategy.sequences_per_example)) if parts.strategy else 1,
        fused_loss=bool(parts.strategy and parts.strategy.fused_loss),
        kbit_upcast=bool(parts.provider.kbit_upcasts_to_fp32) if parts.provider else True,
        attention=config.get("attention_implementation"), packing=bool(config.get("packing")),
        liger_kernel=bool(config.get("liger_kernel")), torch_compile=bool(config.get("torch_compile")),
        neftune=config.get("neftune_noise_alpha") is not None,
    ), notes


def _advice(arch: Architecture, settings: Settings, config: Mapping[str, Any], device: str,
            memory: float) -> list[Advice]:
    """Changes, in order of least harm, applied one after another until the estimate fits."""
    steps: list[Advice] = []
    current = settings

    def fits(s: Settings) -> bool:
        return estimate(arch, s, device).total <= memory * GIB

    def add(change: dict[str, Any], why: str, label: str, new: Settings) -> Settings:
        steps.append(Advice(change, why, round(estimate(arch, new, device).total / GIB, 2), label))
        return new

    if not current.gradient_checkpointing and not fits(current):
        current = add({"gradient_checkpointing": True},
                      "enable gradient checkpointing (recomputes activations: about 30% slower, far less memory)",
                      "gradient checkpointing", replace(current, gradient_checkpointing=True))
    if current.quantization != "4bit" and not fits(current):
        change: dict[str, Any] = {"use_4bit": True}
        if current.quantization == "8bit":
            change["use_8bit"] = False
        current = add(change, "load the base model in 4-bit (QLoRA)", "a 4-bit base",
                      replace(current, quantization="4bit"))
    if current.batch > 1 and not fits(current):
        accumulation = int(config.get("gradient_accumulation_steps", 1)) * current.batch
        current = add({"per_device_train_batch_size": 1, "gradient_accumulation_steps": accumulation},
                      f"train with batch 1 and {accumulation} accumulation steps (the same effective batch)",
                      "batch 1", replace(current, batch=1))
    if current.sequence > SHORTEST_SEQUENCE and not fits(current):
        length = current.sequence
        while length > SHORTEST_SEQUENCE and not fits(replace(current, sequence=length)):
            length = max(SHORTEST_SEQUENCE, length // 2)
        current = add({"max_seq_length": length}, f"shorten max_seq_length to {length} tokens "
                      "(longer examples are truncated)", f"max_seq_length {length}", replace(current, sequence=length))
    if OPTIMIZER_BYTES.get(current.optimizer, 8) > 2 and not fits(current):
        current = add({"optim": "adamw_8bit"}, "use the 8-bit AdamW optimizer", "8-bit AdamW",
                      replace(current, optimizer="adamw_8bit"))
    if not fits(current):
        need = estimate(arch, current, device).total / GIB
        steps.append(Advice({}, f"even then it needs about {need:.1f} GiB: choose a smaller model or a machine with "
                                "more memory", round(need, 2), "a smaller model"))
    return steps


def make_plan(config: Mapping[str, Any], target: MemoryTarget | None, *,
              model_config: tuple[dict[str, Any], str] | None = None, plugins: Plugins | None = None) -> Plan:
    """The plan of a resolved config on ``target`` (``None``: estimate only, no verdict).

    ``model_config`` (the ``config.json`` dict and where it came from) is looked up from
    ``config["model_name"]`` when not given. A model whose shape cannot be found or read gives a
    plan without figures (``fits`` is ``None``) and a note that says why.
    """
    model = str(config.get("model_name", ""))
    found = model_config or find_model_config(model)
    plan = Plan(model=model, model_config=found[1] if found else None, target=target)
    if found is None:
        plan.notes.append(f"no config.json for {model} here (not a local folder, not in the Hugging Face cache, "
                          "not a known model): the memory cannot be planned")
        return plan
    try:
        arch = architecture_from_config(found[0])
    except UnknownArchitecture as exc:
        plan.notes.append(f"the shape of {model} cannot be read ({exc}): the memory cannot be planned")
        return plan
    components = components_of(config, plugins)
    head = choose_head(config, arch, found[0], plugins, task=components.task)
    settings, notes = settings_for(config, arch, head, target, components)
    plan.notes.extend(notes)
    for component in (components.task, components.strategy, components.provider):
        if component is not None and component.memory_note:
            plan.notes.append(component.memory_note)
    if settings.torch_compile:
        plan.notes.append("torch_compile: not counted; inductor's fused kernels usually keep fewer activations, "
                          "so the estimate stays on the safe side")
    if settings.packing and settings.attention != "flash_attention_2":
        plan.notes.append("packing with sdpa: counts the (batch x max_seq_length)-squared mask of a padding-free "
                          "batch; flash_attention_2 needs none")
    device = target.device if target else "cuda"
    result = estimate(arch, settings, device)
    plan.architecture = {
        "model_type": arch.model_type, "family": arch.family, "head": head,
        "parameters": arch.parameters(head), "layers": arch.layers, "hidden_size": arch.hidden,
        "vocab_size": arch.vocab, "tied_embeddings": arch.tied_embeddings,
    }
    plan.settings = {**asdict(settings), "lora_parameters": result.lora_parameters,
                     "fused_loss": settings.head == "causal-lm" and settings.fused_loss}
    plan.parts_gb = {name: round(value / GIB, 3) for name, value in (
        ("weights", result.weights), ("lora", result.lora), ("activations", result.activations),
        ("logits", result.logits), ("overhead", result.overhead))}
    plan.allocated_gb = round(result.allocated / GIB, 2)
    plan.total_gb = round(result.total / GIB, 2)
    if target is not None and target.memory_gb:
        plan.fits = result.total <= target.memory_gb * GIB
        if not plan.fits:
            plan.advice = _advice(arch, settings, config, device, target.memory_gb)
    return plan


def check_fits(config: Mapping[str, Any], hardware: Any, *, refuse: bool = True,
               plugins: Plugins | None = None) -> Plan:
    """Plan ``config`` on ``hardware`` and, with ``refuse``, stop a config that cannot fit.

    :param hardware: a :class:`~modelforge_core.hardware.MemoryTarget`, or what
        ``training.detect_hardware()`` returns (its memory is then detected, honouring
        ``MODELFORGE_ASSUME_MEMORY_GB``).
    :raises EnvironmentProblem: the estimate exceeds the device's memory; the message says
        what to change.
    """
    target = hardware if isinstance(hardware, MemoryTarget) else memory_target(
        device=getattr(hardware, "device", None), name=getattr(hardware, "name", None))
    plan = make_plan(config, target, plugins=plugins)
    if refuse and plan.fits is False:
        raise EnvironmentProblem(plan.refusal())
    return plan


def describe(plan: Plan) -> list[str]:
    """The plan as lines for a terminal."""
    lines = []
    arch, s = plan.architecture, plan.settings
    if not arch:
        return [plan.headline(), *(f"  {note}" for note in plan.notes[1:])]
    lines.append(f"{plan.model}: {arch['model_type']}, {arch['parameters'] / 1e6:,.0f}M parameters, "
                 f"{arch['head']} head (shape from {plan.model_config})")
    quant = {"4bit": "4-bit base" + (" (nested)" if s["nested_quant"] else ""), "8bit": "8-bit base"}.get(
        s["quantization"] or "", "16-bit base" if s["precision"] != "fp32" else "fp32 base")
    lines.append(f"  {s['precision']}, {quant}, LoRA r{s['lora_r']} ({s['lora_parameters'] / 1e6:,.1f}M parameters), "
                 f"batch {s['batch']} x {s['sequence']} tokens, gradient checkpointing "
                 f"{'on' if s['gradient_checkpointing'] else 'off'}, {s['optimizer']}"
                 + (", fused LM loss" if s["fused_loss"] else ""))
    labels = {"weights": "weights", "lora": "LoRA + gradients + optimizer", "activations": "activations",
              "logits": "logits", "overhead": "runtime overhead"}
    for key, label in labels.items():
        lines.append(f"  {label:<30} {plan.parts_gb[key]:>8.2f} GiB")
    lines.append(f"  {'total':<30} {plan.total_gb:>8.2f} GiB")
    lines.append(plan.headline())
    lines.extend(f"  note: {note}" for note in plan.notes)
    for number, advice in enumerate(plan.advice, 1):
        if advice.change:
            lines.append(f"  to fit, {number}. {advice.why}: {advice.as_set()} -> about {advice.total_gb:.1f} GiB")
        else:
            lines.append(f"  {advice.why}")
    return lines

