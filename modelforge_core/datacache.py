"""A cache of tokenized training data, so that training again on unchanged data skips the
formatting and tokenization that otherwise dominate start-up on large datasets.

The key is a sha256 over everything that decides the tokenized result: the checked rows, the
tokenizer (vocabulary, merges, normalizer, special tokens, its settings), its chat template, the
config fields that shape the data (``task``, ``max_seq_length``, ``packing``, the data shape),
the code that formats rows (the task plugin's source, this module's source) and the versions of
the libraries that tokenize. Any change to one of them gives a new key, so a stale entry is
never read: it is simply not found.

Entries live in ``~/.cache/modelforge/datasets/<key>`` (``$XDG_CACHE_HOME`` is honoured;
``MODELFORGE_CACHE_DIR`` replaces ``~/.cache/modelforge``). Each entry is written with
``datasets.Dataset.save_to_disk`` into a temporary folder beside it, then renamed: a reader sees
a complete entry or none, and two processes preparing the same data at once both succeed.

:func:`prepare_sft_dataset` produces the columns TRL's ``SFTTrainer`` would compute itself
(``input_ids`` and ``completion_mask``); given such a dataset, the trainer skips its own
tokenization and only builds labels, truncates and packs. It tokenizes in batches through the
same tokenizer calls TRL makes one row at a time, so the ids are identical and it runs faster.

Importing this module is cheap; ``datasets`` is imported inside functions.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Bumped when the stored layout changes; part of every key.
CACHE_FORMAT = 1
#: Rows tokenized per tokenizer call: large enough for the fast tokenizer's batching to pay.
BATCH_ROWS = 1000
#: The libraries whose versions can change the tokenized result or the stored layout.
LIBRARIES = ("transformers", "tokenizers", "trl", "datasets", "pyarrow")
#: Config fields that decide how rows become training sequences.
CONFIG_FIELDS = ("task", "max_seq_length", "packing")
#: Tokenizer settings that name files on disk rather than decide tokenization.
_PATH_SETTINGS = frozenset({"name_or_path", "tokenizer_file", "vocab_file", "merges_file", "special_tokens_map_file",
                            "tokenizer_config_file", "chat_template_file"})

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """``MODELFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelforge``, else ``~/.cache/modelforge``."""
    explicit = os.environ.get("MODELFORGE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "modelforge"


def datasets_dir() -> Path:
    return cache_root() / "datasets"


# --- fingerprints ----------------------------------------------------------------------------

def rows_digest(rows: Iterable[Mapping[str, Any]]) -> str:
    """sha256 of the rows as canonical JSON (sorted keys), one per line: key order in the
    file does not matter, any change to a value or to the row order does."""
    digest = hashlib.sha256()
    encode = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode
    for row in rows:
        digest.update(encode(row).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides how the tokenizer turns text into ids: for a fast tokenizer its
    whole serialized pipeline (vocabulary, merges, normalizer, pre-tokenizer, post-processor,
    added tokens), else its vocabulary; plus its special tokens and settings."""
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode("utf-8"))
    settings = {key: value for key, value in getattr(tokenizer, "init_kwargs", {}).items()
                if key not in _PATH_SETTINGS and isinstance(value, (str, int, float, bool, type(None)))}
    special = {key: str(value) for key, value in getattr(tokenizer, "special_tokens_map", {}).items()}
    digest.update(json.dumps({"settings": settings, "special": special}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def template_fingerprint(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode("utf-8")).hexdigest()


def source_digest(module_name: str) -> str:
    """sha256 of the Python sources of the top-level package that holds ``module_name``: an
    edit to the formatting code (installed editable or not) changes the key."""
    top = sys.modules.get(module_name.split(".", maxsplit=1)[0])
    digest = hashlib.sha256(module_name.encode())
    folder = Path(getattr(top, "__file__", "") or "").parent
    if top is None or not folder.is_dir():
        return digest.hexdigest()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    from .runs import package_versions

    return package_versions(LIBRARIES)


def cache_key(rows: Sequence[Mapping[str, Any]], tokenizer: Any, config: Mapping[str, Any], *, shape: str,
              formatter: str, sources: Sequence[Mapping[str, Any]] = ()) -> str:
    """The entry's name: sha256 over rows, tokenizer, template, data-shaping config fields,
    formatting code (``formatter``, a module name), library versions and, when given, each data
    source's fingerprint and mapping (format, columns, split, ...)."""
    parts = {
        "format": CACHE_FORMAT,
        "rows": rows_digest(rows),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": template_fingerprint(tokenizer),
        "config": {name: config.get(name) for name in CONFIG_FIELDS},
        "shape": shape,
        "formatter": source_digest(formatter),
        "preparer": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "libraries": library_versions(),
    }
    if sources:
        parts["sources"] = list(sources)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# --- tokenization as TRL's SFTTrainer does it -------------------------------------------------

def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def _tokenize_batch(tokenizer: Any, prompts: list[Any], completions: list[Any]) -> tuple[list[list[int]],
                                                                                         list[list[int]]]:
    """``input_ids`` and ``completion_mask`` for a batch of prompt/completion pairs.

    Conversations go through the chat template (the prompt alone with the generation prompt,
    then prompt and completion together), plain text through the tokenizer with EOS appended
    to the completion; the completion starts where the two tokenizations diverge. These are
    the calls TRL makes per row, batched.
    """
    if isinstance(prompts[0], list):
        prompt_ids = tokenizer.apply_chat_template(prompts, tokenize=True, return_dict=True,
                                                   add_generation_prompt=True)["input_ids"]
        full_ids = tokenizer.apply_chat_template([p + c for p, c in zip(prompts, completions, strict=True)],
                                                 tokenize=True, return_dict=True)["input_ids"]
    else:
        eos = tokenizer.eos_token
        completions = [c if c.endswith(eos) else c + eos for c in completions]
        prompt_ids = tokenizer(prompts)["input_ids"]
        full_ids = tokenizer([p + c for p, c in zip(prompts, completions, strict=True)])["input_ids"]
    masks = []
    for prompt, full in zip(prompt_ids, full_ids, strict=True):
        start = _common_prefix(prompt, full)
        if start < len(prompt):
            logger.warning("the tokenized prompt is not a prefix of prompt + completion; the completion starts "
                           "where they diverge, as in TRL")
        masks.append([0] * start + [1] * (len(full) - start))
    return [list(ids) for ids in full_ids], masks


def prepare_sft_dataset(dataset: Any, tokenizer: Any, config: Mapping[str, Any] | None = None) -> Any:
    """The prompt/completion ``dataset`` tokenized into TRL's columns (``input_ids``,
    ``completion_mask``), identical to what ``SFTTrainer`` computes for it, which then skips
    its own tokenization. Other datasets (already tokenized, or plain ``text``) come back as
    they are, for TRL to handle. ``config`` is accepted for symmetry with the key; truncation
    and packing stay with TRL.
    """
    from datasets import Dataset

    columns = set(dataset.column_names)
    if "input_ids" in columns or not {"prompt", "completion"} <= columns:
        return dataset
    prompts, completions = dataset["prompt"], dataset["completion"]
    input_ids: list[list[int]] = []
    completion_mask: list[list[int]] = []
    for start in range(0, len(prompts), BATCH_ROWS):
        ids, masks = _tokenize_batch(tokenizer, list(prompts[start:start + BATCH_ROWS]),
                                     list(completions[start:start + BATCH_ROWS]))
        input_ids += ids
        completion_mask += masks
    return Dataset.from_dict({"input_ids": input_ids, "completion_mask": completion_mask})


# --- the cache --------------------------------------------------------------------------------

def load_entry(key: str) -> Any | None:
    """The cached dataset for ``key``, or None when there is none (or it cannot be read)."""
    path = datasets_dir() / key
    if not path.is_dir():
        return None
    from datasets import load_from_disk

    try:
        return load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        logger.warning("ignoring unreadable data cache entry %s: %s", path, exc)
        return None


def store_entry(key: str, dataset: Any) -> Path:
    """Save ``dataset`` as the entry ``key``: written in a temporary folder, then renamed."""
    root = datasets_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=root))
    try:
        dataset.save_to_disk(str(tmp / "data"))
        try:
            os.rename(tmp / "data", final)
        except OSError:
            if not final.is_dir():  # not another process's finished entry: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def cached_sft_dataset(rows: Sequence[Mapping[str, Any]], tokenizer: Any, config: Mapping[str, Any], *,
                       shape: str, formatter: str, build: Callable[[], Any],
                       say: Callable[[str], None] | None = None,
                       sources: Sequence[Mapping[str, Any]] = ()) -> Any:
    """The tokenized SFT dataset for ``rows``: read from the cache when the same rows were
    prepared before with the same tokenizer, template, settings and code; otherwise
    ``build()`` formats them (the task's prompt/completion dataset), :func:`prepare_sft_dataset`
    tokenizes them and the result is stored for next time.

    A cache that cannot be written (read-only home, full disk) costs the speed-up, never the
    training: the prepared data is used directly.
    """
    key = cache_key(rows, tokenizer, config, shape=shape, formatter=formatter, sources=sources)
    cached = load_entry(key)
    if cached is not None:
        if say is not None:
            say(f"tokenized data ({len(rows)} rows) from the cache: {datasets_dir() / key}")
        return cached
    prepared = prepare_sft_dataset(build(), tokenizer, config)
    if "input_ids" not in prepared.column_names:
        return prepared
    try:
        store_entry(key, prepared)
    except OSError as exc:
        logger.warning("could not write the data cache in %s: %s", datasets_dir(), exc)
    return prepared
