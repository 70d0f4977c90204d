"""``modelforge export --merge``: the adapter merged into its base, saved so transformers alone
loads it, and checked before it is handed over.

The most painful after-training bugs are merged models that silently differ from what was
trained (a missed module, a wrong scaling, a quantized base merged in place). So an export is
only kept when a parity check passes: the logits of base + adapter (unmerged, in the export
dtype) and of the merged model reloaded from the export folder with the plain
``transformers.AutoModelFor*`` class agree on a few prompts from the run's eval split within a
stated tolerance. Otherwise the folder is renamed ``<out>.failed`` and the command fails.

A run trained on a 4-bit or 8-bit base is merged into the base reloaded unquantized in the
chosen dtype: merging into quantized weights would round the adapter away.

The folder is written under a temporary name and renamed into place, never over an existing one.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ModelForgeError, RunError, UsageError
from .plugins import Plugins, get_plugins
from .runs import ADAPTER_DIR, MANIFEST_FILE, METRICS_FILE, RunDir, now_iso, write_json_atomic

#: The transformers class that loads each head without peft.
AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "question-answering": "AutoModelForQuestionAnswering",
    "sequence-classification": "AutoModelForSequenceClassification",
}
DTYPES = ("float32", "float16", "bfloat16")
#: Largest absolute logit difference accepted by default, per dtype. Merging rounds
#: ``W + BA`` to the dtype once, where the unmerged model adds the adapter's output at run
#: time: in float32 the two agree to ~1e-5; in half precision a logit near 20 alone is rounded
#: in steps of 0.016 (float16) or 0.125 (bfloat16). A broken merge (a module missed, a wrong
#: scale, a flipped sign) is off by whole units: the report also gives the adapter's own effect
#: on the logits (base vs base + adapter) to judge a difference against.
DEFAULT_TOLERANCE = {"float32": 1e-3, "float16": 0.1, "bfloat16": 0.5}
#: Prompts taken from the eval split for the parity check, and their longest length in tokens.
PARITY_PROMPTS = 4
PARITY_MAX_TOKENS = 256
#: Model inputs kept from a task's tokenized features (the rest is bookkeeping or labels).
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
#: Output tensors compared, when the model returns them.
OUTPUT_KEYS = ("logits", "start_logits", "end_logits")
EXPORT_FILE = "export.json"
CARD_FILE = "README.md"


class ExportFailed(ModelForgeError):
    """The merged model does not match base + adapter: the export is not usable. Exit code 1."""


@dataclass
class ParityReport:
    """How closely the merged model reproduces base + adapter."""

    dtype: str
    tolerance: float
    max_abs_diff: float
    prompts: int
    #: Share of positions where both models rank the same token (or span boundary) first.
    top1_agreement: float
    source: str
    #: Largest absolute logit change the adapter itself makes (base vs base + adapter).
    adapter_effect: float | None = None

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "tolerance": self.tolerance, "max_abs_diff": self.max_abs_diff,
                "prompts": self.prompts, "top1_agreement": self.top1_agreement, "source": self.source,
                "adapter_effect": self.adapter_effect, "passed": self.passed}

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        effect = (f"; the adapter itself changes them by up to {self.adapter_effect:.3g}"
                  if self.adapter_effect is not None else "")
        return (f"parity check {verdict}: max abs logit difference {self.max_abs_diff:.3g} "
                f"(tolerance {self.tolerance:g}, {self.dtype}) on {self.prompts} prompt(s) from {self.source}; "
                f"top-1 agreement {self.top1_agreement:.1%}{effect}")


@dataclass
class ExportResult:
    out_dir: Path
    run_dir: Path
    head: str
    dtype: str
    parity: ParityReport
    dequantized: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "run_dir": str(self.run_dir), "head": self.head, "dtype": self.dtype,
                "parity": self.parity.to_json(), "dequantized_from": self.dequantized, "notes": self.notes}


# --- choices -------------------------------------------------------------------------------

def run_dtype(config: Mapping[str, Any]) -> str:
    """The export dtype when none is given: the precision the run trained in."""
    if config.get("bf16"):
        return "bfloat16"
    if config.get("fp16"):
        return "float16"
    if config.get("use_4bit") and config.get("bnb_4bit_compute_dtype") in DTYPES:
        return str(config["bnb_4bit_compute_dtype"])
    return "float32"


def quantization_of(config: Mapping[str, Any]) -> str | None:
    if config.get("use_4bit"):
        return f"4-bit ({config.get('bnb_4bit_quant_type', 'nf4')})"
    if config.get("use_8bit"):
        return "8-bit"
    return None


def unquantized_config(config: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """The run's config, asking the provider for the plain base in ``dtype``."""
    return {**config, "use_4bit": False, "use_8bit": False, "bf16": dtype == "bfloat16", "fp16": dtype == "float16"}


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _head(run: RunDir, config: Mapping[str, Any], plugins: Plugins) -> str:
    from .inference import run_head

    return run_head(run, plugins.registry.tasks[config["task"]], dict(config))


# --- the inputs of the parity check ---------------------------------------------------------

def parity_rows(run: RunDir, config: Mapping[str, Any], plugins: Plugins,
                count: int = PARITY_PROMPTS) -> tuple[list[dict[str, Any]], str, str]:
    """A few rows of the run's eval split (or of its dataset), their shape and where they came
    from. Any rows do for a parity check, so a changed or missing dataset is not an error here:
    the check then falls back to built-in text."""
    from .data import check_dataset
    from .orchestrate import split_rows

    manifest = run.read_json(MANIFEST_FILE) if run.file(MANIFEST_FILE).is_file() else {}
    recorded = manifest.get("data", {})
    file = Path(recorded.get("file") or (config["dataset"] if isinstance(config["dataset"], str) else "."))
    shape = str(recorded.get("shape") or plugins.registry.strategies[config["strategy"]].data_shape)
    local = file.is_file() and isinstance(config.get("dataset"), str)
    try:  # a hub dataset, folder or mixture: its sources as configured
        data = check_dataset(config, plugins=plugins, path=file if local else None, shape=shape)
    except (ModelForgeError, OSError):
        return [], shape, "built-in text (the run's dataset is unreadable)"
    if not data.rows:
        return [], shape, "built-in text (the run's dataset is empty)"
    eval_indices: list[int] = []
    if config.get("eval_split", 0) > 0:
        try:
            eval_indices = split_rows(data.rows, config["eval_split"], config["seed"], data.file)[1]
        except ModelForgeError:
            eval_indices = []
    if eval_indices:
        return [data.rows[i] for i in eval_indices[:count]], shape, f"the eval split of {file}"
    return data.rows[:count], shape, f"the first rows of {file}"


def _render(value: Any, tokenizer: Any) -> tuple[str, bool]:
    if isinstance(value, list):
        return str(tokenizer.apply_chat_template(value, tokenize=False)), True
    return str(value), False


def parity_inputs(rows: Sequence[Mapping[str, Any]], shape: str, task: Any, tokenizer: Any,
                  config: Mapping[str, Any], head: str) -> list[dict[str, list[int]]]:
    """Model inputs (one example each, no padding) built the way the task formats its data."""
    examples: list[dict[str, list[int]]] = []
    if rows and head == "causal-lm":
        dataset = task.build_dataset(rows, shape=shape, tokenizer=tokenizer, config=config, head=head)
        for example in dataset:
            prompt = example.get("prompt")
            answer = example.get("completion", example.get("chosen"))
            if isinstance(prompt, list) and isinstance(answer, list):
                text, templated = _render(prompt + answer, tokenizer)
            else:
                text, templated = str(prompt or "") + str(answer or example.get("text") or ""), False
            encoded = tokenizer(text, add_special_tokens=not templated)
            examples.append({"input_ids": list(encoded["input_ids"])[:PARITY_MAX_TOKENS]})
    elif rows:
        dataset = task.build_dataset(rows, shape=shape, tokenizer=tokenizer, config=config, head=head)
        for feature in list(dataset)[:PARITY_PROMPTS]:
            example = {key: list(feature[key]) for key in MODEL_INPUT_KEYS if key in feature}
            if head == "seq2seq-lm" and "labels" in feature:
                # The decoder reads the target shifted right; -100 (ignored by the loss) is padding.
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
                example["labels"] = [pad if token < 0 else token for token in feature["labels"]]
            examples.append(example)
    if examples:
        return examples
    text = "The quick brown fox jumps over the lazy dog. Where does the fox live?"
    encoded = tokenizer("Where does the fox live?", text) if head == "question-answering" else tokenizer(text)
    example = {key: list(encoded[key]) for key in MODEL_INPUT_KEYS if key in encoded}
    if head == "seq2seq-lm":
        example["labels"] = list(tokenizer("The fox lives by the dog.")["input_ids"])
    return [example]


def model_outputs(model: Any, examples: Sequence[Mapping[str, list[int]]]) -> list[dict[str, Any]]:
    """The logits (or span logits) of ``model`` on every example, as float32 tensors on the CPU."""
    import torch

    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for example in examples:
            batch = {key: torch.tensor([value], device=device) for key, value in example.items()}
            result = model(**batch)
            outputs.append({key: getattr(result, key).detach().float().cpu() for key in OUTPUT_KEYS
                            if getattr(result, key, None) is not None})
    return outputs


def reference_outputs(model: Any, examples: Sequence[Mapping[str, list[int]]]) -> tuple[list[dict[str, Any]],
                                                                                      float | None]:
    """Base + adapter's outputs, and how far they are from the base's (the adapter's effect,
    measured with peft's adapter switch; ``None`` when the model has none)."""
    expected = model_outputs(model, examples)
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        return expected, None
    with disable():
        base = model_outputs(model, examples)
    return expected, max_abs_difference(expected, base)


def max_abs_difference(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]]) -> float:
    largest = 0.0
    for one, other in zip(first, second, strict=True):
        for key, tensor in one.items():
            diff = (tensor - other[key]).abs()
            largest = max(largest, float(diff.max()) if bool(diff.isfinite().all()) else float("inf"))
    return largest


def compare_outputs(reference: Sequence[Mapping[str, Any]], merged: Sequence[Mapping[str, Any]], *, dtype: str,
                    tolerance: float, source: str, adapter_effect: float | None = None) -> ParityReport:
    """The largest absolute difference and the top-1 agreement between two models' outputs."""
    agree = total = 0
    for ref, new in zip(reference, merged, strict=True):
        if set(ref) != set(new):
            raise ExportFailed(f"the merged model returns {sorted(new)} where base + adapter returns {sorted(ref)}: "
                               "it has another head")
        for key, ref_tensor in ref.items():
            new_tensor = new[key]
            if ref_tensor.shape != new_tensor.shape:
                raise ExportFailed(f"the merged model's {key} have shape {tuple(new_tensor.shape)}, base + adapter's "
                                   f"{tuple(ref_tensor.shape)}: it is another model")
            same = ref_tensor.argmax(dim=-1) == new_tensor.argmax(dim=-1)
            agree += int(same.sum())
            total += same.numel()
    return ParityReport(dtype=dtype, tolerance=tolerance, max_abs_diff=max_abs_difference(reference, merged),
                        prompts=len(reference), top1_agreement=agree / total if total else 1.0, source=source,
                        adapter_effect=adapter_effect)


def token_type_embedding(model: Any) -> Any:
    """The segment (token type) embedding of a BERT-like model with two or more types, or ``None``."""
    import torch

    for name, module in model.named_modules():
        if (name.endswith("token_type_embeddings") and isinstance(module, torch.nn.Embedding)
                and module.num_embeddings > 1):
            return module
    return None


def ignores_token_types(model: Any, examples: Sequence[Mapping[str, list[int]]]) -> bool:
    """Whether ``model`` gives the same outputs whatever ``token_type_ids`` say, although the
    underlying model has token types. peft 0.21's ``PeftModelForQuestionAnswering.forward``
    drops ``token_type_ids``, so an adapter trained through it learned with type 0 everywhere,
    and a merged model that reads them would answer differently from what was trained."""
    example = next((e for e in examples if "token_type_ids" in e), None)
    if example is None or token_type_embedding(model) is None:
        return False
    flipped = {**example, "token_type_ids": [1 - t if t in (0, 1) else t for t in example["token_type_ids"]]}
    return max_abs_difference(model_outputs(model, [example]), model_outputs(model, [flipped])) == 0.0


def use_token_type_zero(model: Any) -> bool:
    """Give every token type the embedding of type 0 (what a model that never saw token types used)."""
    import torch

    embedding = token_type_embedding(model)
    if embedding is None:
        return False
    with torch.no_grad():
        embedding.weight.copy_(embedding.weight[0:1].expand_as(embedding.weight))
    return True


# --- loading ------------------------------------------------------------------------------

def load_reference(run: RunDir, config: Mapping[str, Any], head: str, dtype: str, plugins: Plugins) -> Any:
    """Base + adapter, unmerged, unquantized, in ``dtype``, through the run's provider."""
    from .api import LoadRequest, task_load_fields
    from .inference import load_run_model, run_components
    from .orchestrate import set_offline_environment
    from .training import quiet_libraries

    adapter = run.path / ADAPTER_DIR
    problem = run.adapter_problem(ADAPTER_DIR)
    if problem:
        raise RunError(problem)
    set_offline_environment(str(config["model_name"]))
    quiet_libraries()
    task, provider = run_components(run, dict(config), plugins)
    loaded = load_run_model(run, provider, LoadRequest(model_name=config["model_name"], head=head,
                                                       config=unquantized_config(config, dtype), new_adapter=False,
                                                       adapter_path=adapter, for_training=False,
                                                       **task_load_fields(task, config, head)))
    wanted = _torch_dtype(dtype)
    base = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    if next(base.parameters()).dtype != wanted:
        loaded.model.to(wanted)
    loaded.model.eval()
    return loaded


def load_merged(folder: Path, head: str, dtype: str) -> Any:
    """The exported model as a user loads it: the plain transformers Auto class, no peft."""
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[head])
    model = auto.from_pretrained(str(folder), dtype=_torch_dtype(dtype))
    model.eval()
    return model


# --- the check on its own: ``modelforge export RUN --verify DIR`` -------------------------

def verify_export(run_dir: Path, folder: Path, *, dtype: str | None = None, tolerance: float | None = None,
                  plugins: Plugins | None = None) -> ParityReport:
    """Check an exported folder against the run's base + adapter; the dtype defaults to the one
    the export recorded (or the folder's config)."""
    plugins = plugins or get_plugins()
    run = RunDir.open(run_dir)
    config = run.config()
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder} is not a model folder (no config.json)")
    if dtype is None:
        dtype = _recorded_dtype(folder) or run_dtype(config)
    tolerance = DEFAULT_TOLERANCE[dtype] if tolerance is None else tolerance
    head = _head(run, config, plugins)
    task = plugins.registry.tasks[config["task"]]
    reference = load_reference(run, config, head, dtype, plugins)
    rows, shape, source = parity_rows(run, config, plugins)
    examples = parity_inputs(rows, shape, task, reference.tokenizer, config, head)
    expected, effect = reference_outputs(reference.model, examples)
    del reference
    gc.collect()
    merged = load_merged(folder, head, dtype)
    return compare_outputs(expected, model_outputs(merged, examples), dtype=dtype, tolerance=tolerance,
                           source=source, adapter_effect=effect)


def _recorded_dtype(folder: Path) -> str | None:
    for name, key in ((EXPORT_FILE, "dtype"), ("config.json", "dtype"), ("config.json", "torch_dtype")):
        try:
            value = json.loads((folder / name).read_text("utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if value in DTYPES:
            return str(value)
    return None


# --- the export ---------------------------------------------------------------------------

def _free_name(path: Path) -> Path:
    if not path.exists():
        return path
    for attempt in range(2, 1000):
        candidate = path.with_name(f"{path.name}-{attempt}")
        if not candidate.exists():
            return candidate
    raise RunError(f"cannot find a free name next to {path}")


def export_merged(run_dir: Path, *, out: Path | None = None, dtype: str | None = None,
                  tolerance: float | None = None, plugins: Plugins | None = None,
                  say: Callable[[str], None] = print) -> ExportResult:
    """Merge the run's adapter into its base, save the model for transformers alone, check
    parity, write the model card; the folder appears complete or not at all."""
    plugins = plugins or get_plugins()
    run = RunDir.open(run_dir)
    config = run.config()
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    dtype = dtype or run_dtype(config)
    tolerance = DEFAULT_TOLERANCE[dtype] if tolerance is None else tolerance
    out = out or run.path / "merged"
    if out.exists():
        raise RunError(f"{out} exists already: nothing is overwritten; choose another --out or remove it")
    head = _head(run, config, plugins)
    task = plugins.registry.tasks[config["task"]]
    notes = []
    quantized = quantization_of(config)
    if quantized:
        notes.append(f"the run trained on a {quantized} base: the adapter is merged into the base reloaded "
                     f"unquantized in {dtype} (merged weights are not re-quantized; outputs differ slightly "
                     "from the quantized model used in training)")
        say(notes[-1])
    say(f"loading {config['model_name']} + {run.path / ADAPTER_DIR} in {dtype} ...")
    reference = load_reference(run, config, head, dtype, plugins)
    rows, shape, source = parity_rows(run, config, plugins)
    examples = parity_inputs(rows, shape, task, reference.tokenizer, config, head)
    expected, effect = reference_outputs(reference.model, examples)
    token_types_ignored = ignores_token_types(reference.model, examples)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        say("merging the adapter into the base ...")
        try:
            merged = reference.model.merge_and_unload(safe_merge=True)
        except ValueError as exc:  # peft's safe merge found NaNs in the merged weights
            raise ExportFailed(f"merging {run.path / ADAPTER_DIR} gives broken weights: {exc}") from exc
        _prepare_generation_config(merged, reference.tokenizer)
        if token_types_ignored and use_token_type_zero(merged):
            notes.append("base + adapter ignores token_type_ids (peft's question-answering model does not pass "
                         "them on), so it trained and answers with token type 0 everywhere: every token type of "
                         "the merged model now uses type 0's embedding, so it answers the same whatever "
                         "token_type_ids a caller passes")
            say(notes[-1])
        merged.save_pretrained(str(tmp))
        reference.tokenizer.save_pretrained(str(tmp))
        del merged, reference
        gc.collect()
        say("checking parity: reloading the merged model with transformers alone ...")
        report = compare_outputs(expected, model_outputs(load_merged(tmp, head, dtype), examples),
                                 dtype=dtype, tolerance=tolerance, source=source, adapter_effect=effect)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = ExportResult(out_dir=out, run_dir=run.path, head=head, dtype=dtype, parity=report,
                          dequantized=quantized, notes=notes)
    if not report.passed:
        failed = _free_name(out.with_name(out.name + ".failed"))
        os.replace(tmp, failed)
        raise ExportFailed(f"{report.describe()}: the merged model does not reproduce base + adapter; "
                           f"kept for inspection in {failed}")
    write_json_atomic(tmp / EXPORT_FILE, {**result.to_json(), "out_dir": str(out), "created_at": now_iso(),
                                          "modelforge_core": __version__, "auto_class": AUTO_CLASSES[head]})
    (tmp / CARD_FILE).write_text(model_card(run, config, result, tmp), encoding="utf-8")
    os.replace(tmp, out)
    return result


def _prepare_generation_config(model: Any, tokenizer: Any) -> None:
    """The merged model stops and pads like the trained one did (the provider set the pad token)."""
    generation = getattr(model, "generation_config", None)
    if generation is None or not getattr(model, "can_generate", lambda: False)():
        return
    if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    if generation.eos_token_id is None and tokenizer.eos_token_id is not None:
        generation.eos_token_id = tokenizer.eos_token_id


# --- the model card -----------------------------------------------------------------------

def _usage(head: str, folder: str, has_template: bool) -> str:
    auto = AUTO_CLASSES[head]
    lines = ["```python", *(["import torch"] if head == "question-answering" else []),
             f"from transformers import {auto}, AutoTokenizer", "",
             f'model = {auto}.from_pretrained("{folder}", dtype="auto")',
             f'tokenizer = AutoTokenizer.from_pretrained("{folder}")']
    if head == "causal-lm" and has_template:
        lines += ['messages = [{"role": "user", "content": "Your question"}]',
                  "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,",
                  '                                       return_tensors="pt", return_dict=True)',
                  "output = model.generate(**inputs, max_new_tokens=128)",
                  'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    elif head in ("causal-lm", "seq2seq-lm"):
        lines += ['inputs = tokenizer("Your text", return_tensors="pt")',
                  "output = model.generate(**inputs, max_new_tokens=128)",
                  "print(tokenizer.decode(output[0], skip_special_tokens=True))"]
    elif head == "question-answering":
        lines += ['inputs = tokenizer("Your question?", "The context.", return_tensors="pt")',
                  "with torch.no_grad():",
                  "    out = model(**inputs)",
                  "start, end = int(out.start_logits.argmax()), int(out.end_logits.argmax())",
                  'print(tokenizer.decode(inputs["input_ids"][0, start:end + 1]))']
    lines.append("```")
    return "\n".join(lines)


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    keys = [k for k in dict.fromkeys([*before, *after]) if not k.endswith(("_runtime", "_per_second"))]
    if not keys:
        return "No metrics were recorded."

    def cell(values: Mapping[str, Any], key: str) -> str:
        value = values.get(key)
        return f"{value:.4g}" if isinstance(value, (int, float)) else "-"

    rows = ["| metric | before training | after training |", "|---|---|---|"]
    rows += [f"| {key} | {cell(before, key)} | {cell(after, key)} |" for key in keys]
    return "\n".join(rows)


def model_card(run: RunDir, config: Mapping[str, Any], result: ExportResult, folder: Path) -> str:
    """README.md: what the model is, how it was made, how well it does, how to load it
    (``folder``: where the tokenizer files are now, before the final rename)."""
    manifest = run.read_json(MANIFEST_FILE) if run.file(MANIFEST_FILE).is_file() else {}
    metrics = run.read_json(METRICS_FILE) if run.file(METRICS_FILE).is_file() else {}
    data = manifest.get("data", {})
    model_name = str(config["model_name"])
    local_base = Path(model_name).exists()
    has_template = (folder / "chat_template.jinja").exists() or _has_template(folder)
    front = ["---", "library_name: transformers", "tags:", "- modelforge", f"- {config['task']}",
             f"- {config['strategy']}", "- lora-merged"]
    if not local_base:
        front.append(f"base_model: {model_name}")
    front.append("---")
    parity = result.parity
    lines = [
        *front, "",
        f"# {run.name} (merged)", "",
        f"`{model_name}` fine-tuned for **{config['task']}** with ModelForge {__version__} "
        f"(strategy `{config['strategy']}`, provider `{config['provider']}`, LoRA r={config.get('lora_r')}, "
        f"alpha={config.get('lora_alpha')}), the adapter merged into the base and saved in {result.dtype}. "
        "It loads with transformers alone; peft is not needed.", "",
        "## Load it", "", _usage(result.head, str(result.out_dir), has_template), "",
        "## Training data", "",
        f"- file: `{data.get('file', config.get('dataset'))}`",
        f"- fingerprint: `{data.get('fingerprint', 'unknown')}`",
        f"- rows: {data.get('rows', '?')} ({data.get('train_rows', '?')} train, {data.get('eval_rows', '?')} eval, "
        f"seeded split, seed {config.get('seed')})", "",
        "## Metrics (on the eval split)", "", _metrics_table(metrics), "",
        "## Export check", "",
        f"Logits of the merged model, reloaded with `{AUTO_CLASSES[result.head]}`, against base + adapter "
        f"(unmerged, {parity.dtype}) on {parity.prompts} prompt(s) from {parity.source}: max absolute difference "
        f"{parity.max_abs_diff:.3g} (tolerance {parity.tolerance:g}); top-1 agreement {parity.top1_agreement:.1%}.",
    ]
    if result.notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in result.notes]]
    lines += ["", "## Training config", "", "```json", json.dumps(config, indent=2, ensure_ascii=False), "```"]
    libraries = manifest.get("libraries") or {}
    if libraries:
        lines += ["", "## Versions used in training", "",
                  *[f"- {name} {version}" for name, version in libraries.items() if version]]
    lines += ["", f"Source run: `{run.path}`", ""]
    return "\n".join(lines)


def _has_template(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text("utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False
