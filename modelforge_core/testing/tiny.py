"""Tiny, offline, randomly initialised models for tests.

Every builder in this module writes a real Hugging Face model folder
(``config.json``, ``model.safetensors``, tokenizer files and, for generative
models, ``generation_config.json``) that ``AutoModelFor*.from_pretrained(path)``
and ``AutoTokenizer.from_pretrained(path)`` load without any network access.
Tokenizers are trained locally on :data:`DEFAULT_CORPUS` (or a caller supplied
corpus) with the ``tokenizers`` library, so nothing is ever downloaded.

The models are deliberately minuscule (hidden size 64, two layers, a vocabulary
of about 1000 tokens): each folder is under 1 MB and builds in a small fraction
of a second on a CPU once ``transformers`` is imported, which makes them suitable for end-to-end tests of training
pipelines (SFT, reward modelling, seq2seq, extractive QA, LoRA, ...).

Conventions
-----------
* ``kind="bpe"`` (causal LMs, ChatML style, like Qwen):
  ``<|endoftext|>`` = 0 (bos and unk), ``<|im_start|>`` = 1, ``<|im_end|>`` = 2
  (eos) and, only with ``pad_token=True``, ``<|pad|>`` = 3.  No token is added
  automatically around encoded text (no bos/eos post-processing); the chat
  template adds the ChatML markers.
* ``kind="wordpiece"`` (BERT style, lower-cased): ``[PAD]`` = 0, ``[UNK]`` = 1,
  ``[CLS]`` = 2, ``[SEP]`` = 3, ``[MASK]`` = 4; ``[CLS] A [SEP] B [SEP]`` with
  ``token_type_ids``.
* ``kind="unigram"`` (T5 style, SentencePiece-like ``▁`` word boundaries):
  ``<pad>`` = 0, ``</s>`` = 1 (eos, appended to every sequence), ``<unk>`` = 2.

Heavy libraries (``torch``, ``transformers``, ``tokenizers``) are imported
lazily inside the functions so that importing this module is cheap.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BPE_PAD_TOKEN",
    "BPE_SPECIAL_TOKENS",
    "CHATML_TEMPLATE",
    "DEFAULT_CORPUS",
    "UNIGRAM_SPECIAL_TOKENS",
    "WORDPIECE_SPECIAL_TOKENS",
    "build_tiny_causal_lm",
    "build_tiny_qa_encoder",
    "build_tiny_seq2seq_lm",
    "build_tokenizer",
]

TokenizerKind = Literal["bpe", "wordpiece", "unigram"]

#: Special tokens of the byte-level BPE (causal LM) tokenizer, in id order.
BPE_SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: Extra padding token appended after :data:`BPE_SPECIAL_TOKENS` when requested.
BPE_PAD_TOKEN: str = "<|pad|>"  # noqa: S105 (a vocabulary token, not a secret)
#: Special tokens of the BERT-style WordPiece tokenizer, in id order.
WORDPIECE_SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: Special tokens of the T5-style Unigram tokenizer, in id order.
UNIGRAM_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")

#: ChatML chat template.  Assistant content is wrapped in
#: ``{% generation %}`` markers so ``return_assistant_tokens_mask=True`` works.
CHATML_TEMPLATE: str = """\
{%- for message in messages %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}
            {{- message['content'] + '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

_MODEL_MAX_LENGTH = 512


# --------------------------------------------------------------------------- #
# Corpus
# --------------------------------------------------------------------------- #

# fmt: off
_COLOURS = (
    "red", "blue", "green", "yellow", "purple", "orange", "black", "white",
    "brown", "grey", "pink", "golden", "silver", "violet", "crimson", "teal",
)
_ANIMALS = (
    "cat", "dog", "horse", "rabbit", "fox", "wolf", "bear", "mouse", "eagle",
    "owl", "tiger", "lion", "zebra", "giraffe", "dolphin", "whale", "penguin",
    "monkey", "elephant", "turtle", "squirrel", "badger", "otter", "parrot",
)
_PLACES = (
    "river", "forest", "garden", "mountain", "village", "market", "bridge",
    "library", "kitchen", "meadow", "harbour", "castle", "station", "school",
)
_VERBS = (
    ("runs", "ran"), ("jumps", "jumped"), ("sleeps", "slept"), ("walks", "walked"),
    ("sings", "sang"), ("swims", "swam"), ("reads", "read"), ("plays", "played"),
    ("eats", "ate"), ("watches", "watched"), ("climbs", "climbed"), ("waits", "waited"),
)
_ADJECTIVES = (
    "quick", "lazy", "happy", "quiet", "brave", "clever", "sleepy", "small",
    "large", "gentle", "curious", "friendly", "hungry", "ancient", "bright",
)
_FOODS = (
    "apples", "bread", "cheese", "carrots", "rice", "soup", "honey", "berries",
    "noodles", "pancakes", "tomatoes", "potatoes", "oranges", "cookies",
)
_CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Peru", "Lima"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"),
    ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"),
    ("Ireland", "Dublin"), ("Chile", "Santiago"), ("India", "New Delhi"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"), ("Australia", "Canberra"), ("Argentina", "Buenos Aires"),
    ("Finland", "Helsinki"), ("Hungary", "Budapest"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Turkey", "Ankara"), ("Morocco", "Rabat"),
)
_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
    "seventeen", "eighteen", "nineteen", "twenty",
)
_NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack")
_JOBS = (
    ("teacher", "teaches children at the school"),
    ("baker", "bakes fresh bread every morning"),
    ("doctor", "helps sick people feel better"),
    ("farmer", "grows wheat and vegetables in the fields"),
    ("pilot", "flies aeroplanes across the ocean"),
    ("painter", "paints colourful pictures of landscapes"),
    ("musician", "plays the violin in an orchestra"),
    ("engineer", "designs bridges, engines and machines"),
    ("gardener", "waters the flowers and trims the hedges"),
    ("librarian", "organises thousands of books on shelves"),
    ("fisherman", "catches fish from a small wooden boat"),
    ("carpenter", "builds tables and chairs from oak"),
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WEATHER = ("sunny", "rainy", "cloudy", "windy", "snowy", "foggy", "stormy")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July",
    "August", "September", "October", "November", "December",
)
# fmt: on


def _generate_corpus() -> tuple[str, ...]:
    """Build the deterministic default training corpus from small word lists.

    Returns:
        A tuple of a few hundred short English lines: descriptive sentences,
        question/answer pairs, arithmetic facts, ``summarize:`` prompts and
        chat-like instructions.  The output is identical on every call.
    """
    lines: list[str] = []

    # Descriptive sentences about animals (cycled through the word lists).
    for i, animal in enumerate(_ANIMALS):
        colour = _COLOURS[i % len(_COLOURS)]
        adjective = _ADJECTIVES[i % len(_ADJECTIVES)]
        present, past = _VERBS[i % len(_VERBS)]
        place = _PLACES[i % len(_PLACES)]
        food = _FOODS[i % len(_FOODS)]
        lines.append(f"The {adjective} {colour} {animal} {present} near the {place}.")
        lines.append(f"Yesterday the {animal} {past} to the {place} and ate some {food}.")
        lines.append(f"A {colour} {animal} likes {food} more than anything else.")
        lines.append(f"Question: What colour is the {animal}? Answer: The {animal} is {colour}.")
        lines.append(f"Where does the {animal} live? It lives by the {place}.")

    # Colour / animal combinations give the tokenizer plenty of word pairs.
    for colour, animal in itertools.islice(itertools.product(_COLOURS, _ANIMALS), 0, None, 5):
        lines.append(f"I saw a {colour} {animal} today.")

    # Capitals: facts, questions and extractive QA style contexts.
    for i, (country, capital) in enumerate(_CAPITALS):
        name = _NAMES[i % len(_NAMES)]
        lines.append(f"The capital of {country} is {capital}.")
        lines.append(f"What is the capital of {country}? The capital of {country} is {capital}.")
        lines.append(f"Question: Which city is the capital of {country}? Answer: {capital}")
        lines.append(f"{name} travelled to {capital}, the capital city of {country}, last summer.")
        lines.append(f"{capital} is a large city in {country} with many museums and parks.")

    # Numbers and simple arithmetic, in words and in digits.
    for a in range(0, 11):
        for b in range(0, 11, 3):
            total = a + b
            lines.append(f"{_NUMBER_WORDS[a]} plus {_NUMBER_WORDS[b]} is {_NUMBER_WORDS[total]}.")
            lines.append(f"What is {a} + {b}? {a} + {b} = {total}.")
    for n in range(1, 21):
        lines.append(f"The number {n} is written as {_NUMBER_WORDS[n]}.")

    # Summarisation style seq2seq prompts and targets.
    for i, (country, capital) in enumerate(_CAPITALS[:15]):
        animal = _ANIMALS[i % len(_ANIMALS)]
        food = _FOODS[i % len(_FOODS)]
        lines.append(
            f"summarize: The {animal} walked all the way from {capital} to the coast of "
            f"{country} because it wanted to eat fresh {food} by the sea."
        )
        lines.append(f"summary: A {animal} went to the sea in {country} to eat {food}.")

    # Jobs, weekdays, weather and months.
    for i, (job, activity) in enumerate(_JOBS):
        name = _NAMES[(i + 3) % len(_NAMES)]
        lines.append(f"{name} is a {job} who {activity}.")
        lines.append(f"Question: What does a {job} do? Answer: A {job} {activity}.")
    for i, day in enumerate(_DAYS):
        weather = _WEATHER[i]
        month = _MONTHS[(i * 5) % len(_MONTHS)]
        lines.append(f"On {day} the weather was {weather}, so we stayed near the {_PLACES[i]}.")
        lines.append(f"It is often {weather} in {month}; remember to bring an umbrella or a hat.")
    for i, month in enumerate(_MONTHS):
        lines.append(f"{month} is month number {i + 1} of the year and has many {_WEATHER[i % 7]} days.")

    # Chat-like instructions and replies.
    lines.append("system: You are a helpful assistant. Answer the question briefly and clearly.")
    for i, name in enumerate(_NAMES):
        food = _FOODS[i % len(_FOODS)]
        animal = _ANIMALS[(i * 3) % len(_ANIMALS)]
        lines.append(f"Hello, my name is {name}. How are you today?")
        lines.append(f"I am fine, thank you {name}! How can I help you?")
        lines.append(f"Please tell me a short story about a {animal} who loves {food}.")
        lines.append(f"Once upon a time, a {animal} found a basket of {food} in the {_PLACES[i]}.")
        lines.append(f"user: What is the capital of {_CAPITALS[i][0]}?")
        lines.append(f"assistant: The capital of {_CAPITALS[i][0]} is {_CAPITALS[i][1]}.")

    return tuple(lines)


#: Deterministic default corpus used to train the tiny tokenizers.
DEFAULT_CORPUS: tuple[str, ...] = _generate_corpus()


# --------------------------------------------------------------------------- #
# Tokenizers
# --------------------------------------------------------------------------- #


def _corpus_lines(corpus: Iterable[str] | None) -> list[str]:
    """Materialise ``corpus`` (or the default corpus) into a list of strings.

    Args:
        corpus: Iterable of text lines, or ``None`` for :data:`DEFAULT_CORPUS`.

    Returns:
        The lines as a list.

    Raises:
        ValueError: If the corpus is empty.
    """
    lines = list(DEFAULT_CORPUS if corpus is None else corpus)
    if not lines:
        raise ValueError("the tokenizer training corpus is empty")
    return lines


def _make_bpe(lines: list[str], vocab_size: int, chat_template: bool, pad_token: bool) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer with ChatML special tokens.

    Args:
        lines: Training corpus.
        vocab_size: Target vocabulary size (including special tokens).
        chat_template: Whether to attach :data:`CHATML_TEMPLATE`.
        pad_token: Whether to add a dedicated ``<|pad|>`` token.

    Returns:
        A ``PreTrainedTokenizerFast`` wrapping the trained tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(BPE_SPECIAL_TOKENS) + ([BPE_PAD_TOKEN] if pad_token else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)

    kwargs: dict[str, Any] = {
        "tokenizer_object": tok,
        "bos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "extra_special_tokens": ["<|im_start|>"],
        "model_max_length": _MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "right",
    }
    if pad_token:
        kwargs["pad_token"] = BPE_PAD_TOKEN
    tokenizer = PreTrainedTokenizerFast(**kwargs)
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _make_wordpiece(lines: list[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Train a lower-casing BERT-style WordPiece tokenizer.

    Args:
        lines: Training corpus.
        vocab_size: Target vocabulary size (including special tokens).

    Returns:
        A ``PreTrainedTokenizerFast`` that behaves like ``BertTokenizerFast``
        (offsets, pair truncation, overflowing windows, token type ids).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    pad, unk, cls, sep, mask = WORDPIECE_SPECIAL_TOKENS
    tok = Tokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(WORDPIECE_SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    cls_id, sep_id = tok.token_to_id(cls), tok.token_to_id(sep)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        sep_token=sep,
        pad_token=pad,
        cls_token=cls,
        mask_token=mask,
        do_lower_case=True,
        model_max_length=_MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        padding_side="right",
    )


def _make_unigram(lines: list[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Train a T5-style Unigram tokenizer (``▁`` word boundaries, eos appended).

    Args:
        lines: Training corpus.
        vocab_size: Target vocabulary size (including special tokens).  The
            Unigram trainer may return fewer pieces on a small corpus.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<pad>`` (id 0), ``</s>`` (id 1)
        and ``<unk>`` (id 2).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    pad, eos, unk = UNIGRAM_SPECIAL_TOKENS
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=list(UNIGRAM_SPECIAL_TOKENS),
        unk_token=unk,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    eos_id = tok.token_to_id(eos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {eos}:0",
        pair=f"$A:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(eos, eos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad,
        eos_token=eos,
        unk_token=unk,
        model_max_length=_MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        padding_side="right",
    )


def _train_tokenizer(
    kind: TokenizerKind,
    corpus: Iterable[str] | None,
    vocab_size: int,
    chat_template: bool,
    pad_token: bool,
) -> PreTrainedTokenizerBase:
    """Train (in memory) a tokenizer of the requested ``kind``.

    Args:
        kind: ``"bpe"``, ``"wordpiece"`` or ``"unigram"``.
        corpus: Training lines, or ``None`` for :data:`DEFAULT_CORPUS`.
        vocab_size: Target vocabulary size.
        chat_template: Attach the ChatML template (``"bpe"`` only).
        pad_token: Add ``<|pad|>`` (``"bpe"`` only; the other kinds always pad).

    Returns:
        The trained transformers tokenizer.

    Raises:
        ValueError: For an unknown ``kind`` or an empty corpus.
    """
    lines = _corpus_lines(corpus)
    if kind == "bpe":
        return _make_bpe(lines, vocab_size, chat_template, pad_token)
    if kind == "wordpiece":
        return _make_wordpiece(lines, vocab_size)
    if kind == "unigram":
        return _make_unigram(lines, vocab_size)
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'bpe', 'wordpiece' or 'unigram'")


def build_tokenizer(
    out_dir: str | Path,
    *,
    kind: Literal["bpe", "wordpiece", "unigram"] = "bpe",
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1000,
    chat_template: bool = True,
    pad_token: bool = False,
) -> Path:
    """Train a tiny tokenizer locally and save it with ``save_pretrained``.

    Args:
        out_dir: Folder to write (created if needed).
        kind: ``"bpe"`` — byte-level BPE with ChatML special tokens for causal
            LMs; ``"wordpiece"`` — lower-cased BERT-style tokenizer for
            encoders; ``"unigram"`` — T5-style tokenizer for seq2seq models.
        corpus: Training lines; defaults to :data:`DEFAULT_CORPUS`.
        vocab_size: Target vocabulary size, special tokens included.  The
            trainers may stop earlier on a small corpus, and byte-level BPE
            never goes below its 256-symbol alphabet plus the special tokens.
        chat_template: For ``"bpe"``, attach the ChatML ``chat_template``.
            Ignored by the other kinds, which have no chat tokens.
        pad_token: For ``"bpe"``, add a ``<|pad|>`` token; with ``False`` the
            tokenizer has no pad token at all, like Llama tokenizers.  The
            other kinds always have a pad token (``[PAD]`` / ``<pad>``, id 0).

    Returns:
        ``Path(out_dir)``, which ``AutoTokenizer.from_pretrained`` can load.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(kind, corpus, vocab_size, chat_template, pad_token)
    tokenizer.save_pretrained(str(out))
    return out


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #


def _init_and_save(
    out: Path,
    seed: int,
    factory: Callable[[], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Instantiate a model under a fixed seed and save it with its tokenizer.

    The global torch RNG state of the caller is preserved.

    Args:
        out: Destination folder (must exist).
        seed: Seed for weight initialisation.
        factory: Zero-argument callable returning a ``PreTrainedModel``.
        tokenizer: Tokenizer saved next to the model.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    model.eval()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def build_tiny_causal_lm(
    out_dir: str | Path,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1000,
    pad_token: bool = False,
    hidden_size: int = 64,
    num_layers: int = 2,
    architecture: Literal["llama", "qwen2"] = "llama",
) -> Path:
    """Build a tiny random Llama (or Qwen2) causal LM with a ChatML BPE tokenizer.

    The folder loads with ``AutoModelForCausalLM`` and also with
    ``AutoModelForSequenceClassification`` (e.g. ``num_labels=1`` for a reward
    model; the score head is then freshly initialised).

    Args:
        out_dir: Folder to write (created if needed).
        seed: Seed for weight initialisation; equal seeds give equal weights.
        corpus: Tokenizer training lines; defaults to :data:`DEFAULT_CORPUS`.
        vocab_size: Target tokenizer vocabulary size.
        pad_token: Whether the tokenizer (and config) get a ``<|pad|>`` token.
        hidden_size: Model width (a multiple of 8; 4 attention heads, 2 KV heads).
        num_layers: Number of decoder layers.
        architecture: ``"llama"`` (no bias anywhere) or ``"qwen2"``, whose
            q/k/v projections carry a bias, like Qwen2 and Qwen2.5 (what a
            4-bit test needs to cover biased quantized layers).

    Returns:
        ``Path(out_dir)``.

    Raises:
        ValueError: If ``hidden_size`` is not a positive multiple of 8 (4 heads
            with an even head size for rotary embeddings), ``num_layers < 1``
            or ``architecture`` is unknown.
    """
    if hidden_size <= 0 or hidden_size % 8 != 0:
        raise ValueError(f"hidden_size must be a positive multiple of 8, got {hidden_size}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    if architecture not in ("llama", "qwen2"):
        raise ValueError(f"architecture must be 'llama' or 'qwen2', got {architecture!r}")

    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer("bpe", corpus, vocab_size, True, pad_token)
    config_class: Any = LlamaConfig if architecture == "llama" else Qwen2Config
    model_class: type[PreTrainedModel] = LlamaForCausalLM if architecture == "llama" else Qwen2ForCausalLM
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=_MODEL_MAX_LENGTH,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    def factory() -> PreTrainedModel:
        model = model_class(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return model

    _init_and_save(out, seed, factory, tokenizer)
    return out


def build_tiny_seq2seq_lm(
    out_dir: str | Path,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1000,
) -> Path:
    """Build a tiny random T5 encoder-decoder with a Unigram tokenizer.

    Args:
        out_dir: Folder to write (created if needed).
        seed: Seed for weight initialisation; equal seeds give equal weights.
        corpus: Tokenizer training lines; defaults to :data:`DEFAULT_CORPUS`.
        vocab_size: Target tokenizer vocabulary size.

    Returns:
        ``Path(out_dir)``, loadable with ``AutoModelForSeq2SeqLM``.
    """
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer("unigram", corpus, vocab_size, False, True)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # Not a declared field of the (strict, dataclass based) v5 T5Config, but it is
    # still stored, serialised and read by generation / label shifting.
    config.decoder_start_token_id = tokenizer.pad_token_id

    def factory() -> PreTrainedModel:
        model = T5ForConditionalGeneration(config)
        model.generation_config = GenerationConfig(
            decoder_start_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return model

    _init_and_save(out, seed, factory, tokenizer)
    return out


def build_tiny_qa_encoder(
    out_dir: str | Path,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1000,
) -> Path:
    """Build a tiny random BERT encoder with a WordPiece tokenizer.

    The weights are saved as a base ``BertModel``; task heads
    (``AutoModelForQuestionAnswering``, ``AutoModelForSequenceClassification``,
    ...) are freshly initialised when loading.

    Args:
        out_dir: Folder to write (created if needed).
        seed: Seed for weight initialisation; equal seeds give equal weights.
        corpus: Tokenizer training lines; defaults to :data:`DEFAULT_CORPUS`.
        vocab_size: Target tokenizer vocabulary size.

    Returns:
        ``Path(out_dir)``.
    """
    from transformers import BertConfig, BertModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer("wordpiece", corpus, vocab_size, False, True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=_MODEL_MAX_LENGTH,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    _init_and_save(out, seed, lambda: BertModel(config), tokenizer)
    return out


def pretrain_causal_lm(model_dir: str | Path, *, corpus: Iterable[str] | None = None, steps: int = 300,
                       learning_rate: float = 3e-3, batch_size: int = 32, seed: int = 0) -> Path:
    """Give a tiny causal LM some language: full-weight training on ``corpus`` (plain lines
    plus the corpus's questions and answers as ChatML turns), saved back in place.

    A random-init model's output head is too flat for a LoRA adapter to make confident
    predictions; after this "pre-training" (about 30 s on two CPU cores) fine-tuning behaves
    like it does on a real base model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    texts = list(corpus if corpus is not None else DEFAULT_CORPUS)
    questions = [line for line in texts if line.endswith("?")]
    answers = [line for line in texts if not line.endswith("?")]
    for question, answer in zip(questions, answers, strict=False):
        texts.append(str(tokenizer.apply_chat_template(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False)))
    pad_id = tokenizer.eos_token_id
    encoded = [tokenizer(text + tokenizer.eos_token)["input_ids"][:64] for text in texts]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(steps):
            picked = [encoded[i] for i in torch.randint(0, len(encoded), (batch_size,), generator=generator)]
            width = max(len(ids) for ids in picked)
            input_ids = torch.full((len(picked), width), pad_id)
            mask = torch.zeros((len(picked), width), dtype=torch.long)
            for row, ids in enumerate(picked):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            labels = input_ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    model.save_pretrained(path)
    return path
