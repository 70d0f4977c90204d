"""GPU benchmark: the hand-written baselines and ``modelforge train`` (huggingface and unsloth
providers) on the shared anchor's model shape and settings, then the faster defaults a GPU
profile should use, all in one run on one card.

The model: a random-weight model with Qwen2.5-0.5B's shape (24 layers, hidden 896, vocab
151,936), bf16, LoRA r16/alpha 32 on all linear layers, sequence 1024, 25 steps; throughput is
measured over steps 5-25 (the first steps compile and warm up). Every row is longer than 1024
tokens, so every sequence is full, as in the anchor.

Runs, each in its own process (``python bench/gpu/bench_gpu.py one NAME``):
- ``plain_peft_bs8``: transformers Trainer + peft, written by hand (the anchor's baseline)
- ``plain_trl_bs8`` / ``plain_trl_bs16``: TRL SFTTrainer + peft (its fused LM head)
- ``plain_trl_bs16_packed``: the same with packing (bfd) and padding-free batches
- ``mf_hf_bs8``: ``modelforge train``, huggingface provider, the anchor's settings
- ``mf_hf_high_end``: the same with ``compute_specs: high_end`` (the profile's GPU defaults),
  sequence and steps kept at the anchor's
- ``mf_hf_bs16_packed``: huggingface provider, batch 16, packing
- ``mf_unsloth_bs8`` / ``mf_unsloth_bs16``: ``modelforge train``, unsloth provider
- each speed option alone on ``mf_hf_bs8`` (huggingface, batch 8): ``mf_hf_bs8_packed``
  (padding-free packing, sdpa), ``mf_hf_bs8_flash`` (attention_implementation flash_attention_2),
  ``mf_hf_bs8_eager`` (eager attention), ``mf_hf_bs8_liger`` (liger_kernel), ``mf_hf_bs8_compile``
  (torch_compile), ``mf_hf_bs8_neftune`` (neftune_noise_alpha 5). Where the machine lacks
  flash-attn or liger-kernel, that run is refused (exit 3) and the table says so.

Each prints tokens/s, seconds per step, model FLOPs utilisation (against PEAK_TFLOPS, default
790 like the anchor) and peak GPU memory. Goals, against ``plain_peft_bs8`` in the same run:
huggingface with the high_end profile >= 1.5x at no more memory; unsloth >= 2.5x.

    bash bench/gpu/run.sh                   # on the GPU machine, after make-wheelhouse.sh
    python bench/gpu/bench_gpu.py all --tiny   # a CPU dry run of the whole pipeline, tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ANCHOR = {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
          "num_attention_heads": 14, "num_key_value_heads": 2}
TINY = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}
STEPS, WARM = 25, 5
RUNS = ("plain_peft_bs8", "plain_trl_bs8", "plain_trl_bs16", "mf_hf_bs8", "mf_hf_high_end", "mf_unsloth_bs8",
        "mf_unsloth_bs16", "mf_hf_bs8_packed", "mf_hf_bs8_liger", "mf_hf_bs8_flash", "mf_hf_bs8_compile",
        "mf_hf_bs8_eager", "mf_hf_bs8_neftune", "plain_trl_bs16_packed", "mf_hf_bs16_packed")
#: The speed options, each alone on mf_hf_bs8: the run name's suffix -> config values.
OPTIONS: dict[str, dict[str, Any]] = {
    "packed": {"packing": True, "attention_implementation": "sdpa"},
    "flash": {"attention_implementation": "flash_attention_2"},
    "eager": {"attention_implementation": "eager"},
    "liger": {"liger_kernel": True},
    "compile": {"torch_compile": True},
    "neftune": {"neftune_noise_alpha": 5.0},
}
GOALS = {"mf_hf_high_end": 1.5, "mf_unsloth_bs16": 2.5}


def settings() -> dict[str, Any]:
    tiny = bool(os.environ.get("BENCH_TINY"))
    return {"dims": TINY if tiny else ANCHOR, "seq": 64 if tiny else int(os.environ.get("SEQ", "1024")),
            "steps": 6 if tiny else STEPS, "warm": 2 if tiny else WARM, "tiny": tiny,
            "peak": float(os.environ.get("PEAK_TFLOPS", "790")) * 1e12}


# --- the model and the data, built locally ----------------------------------------------------

def build_inputs(folder: Path) -> tuple[Path, Path]:
    """A random-weight model of the anchor's shape with the test kit's byte-level BPE tokenizer
    (ChatML template), and rows that each tokenize to more than the sequence length."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from modelforge_core.testing.tiny import build_tiny_causal_lm

    s = settings()
    model_dir, data = folder / "model", folder / "data.jsonl"
    if not model_dir.exists():
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_causal_lm(folder / "tokenizer"))
        config = Qwen2Config(max_position_embeddings=32768, tie_word_embeddings=True, bos_token_id=0,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=None, **s["dims"])
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    if not data.exists():
        rng = random.Random(0)
        words = ("harbour", "orchard", "island", "plum", "fig", "boat", "market", "tide", "lantern", "road")
        rows = s["steps"] * 16 + 64
        with data.open("w", encoding="utf-8") as handle:
            for index in range(rows):
                text = " ".join(rng.choice(words) for _ in range(s["seq"] * 2))
                handle.write(json.dumps({"input": f"Story {index}.", "output": text}) + "\n")
    return model_dir, data


def flops_per_token(n_params: int, seq: int) -> float:
    """LoRA training FLOPs per token, as the anchor counts them: forward 2N, backward
    activation gradients 2N (frozen base: no weight gradients), plus attention."""
    dims = settings()["dims"]
    layers, hidden = dims["num_hidden_layers"], dims["hidden_size"]
    return 4 * n_params + 3 * 2 * 2 * layers * seq * hidden


def base_parameters() -> int:
    """Parameters of the base model counted like the anchor (tied head counted once as a matmul)."""
    d = settings()["dims"]
    head = d["hidden_size"] // d["num_attention_heads"]
    attn = d["hidden_size"] * head * (d["num_attention_heads"] * 2 + d["num_key_value_heads"] * 2)
    attn += head * (d["num_attention_heads"] + 2 * d["num_key_value_heads"])  # q/k/v biases
    mlp = 3 * d["hidden_size"] * d["intermediate_size"]
    return d["num_hidden_layers"] * (attn + mlp + 2 * d["hidden_size"]) + d["vocab_size"] * d["hidden_size"]


def report(name: str, step_times: dict[int, float], tokens: dict[int, float], batch: int) -> dict[str, Any]:
    """Figures over steps warm..steps, from wall-clock step ends (device synchronised)."""
    import torch

    s = settings()
    warm, last = s["warm"], max(step_times)
    seconds = (step_times[last] - step_times[warm]) / (last - warm)
    counted = tokens.get(last, 0) - tokens.get(warm, 0)
    tok_s = counted / (step_times[last] - step_times[warm]) if counted else batch * s["seq"] / seconds
    cuda = torch.cuda.is_available()
    figures = {"name": name, "tok_s": round(tok_s), "step_s": round(seconds, 4),
               "mfu": round(tok_s * flops_per_token(base_parameters(), s["seq"]) / s["peak"], 3),
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
               "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    print("RESULT " + json.dumps(figures), flush=True)
    return figures


def clock_callback(store: dict[int, float], tokens: dict[int, float], trainer_box: list[Any]) -> Any:
    from transformers import TrainerCallback

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            store[state.global_step] = time.perf_counter()
            trainer = trainer_box[0] if trainer_box else None
            if trainer is not None and hasattr(trainer, "_total_train_tokens"):
                tokens[state.global_step] = float(trainer._total_train_tokens)

    return Clock()


# --- the hand-written baselines ---------------------------------------------------------------

def plain(name: str, folder: Path) -> dict[str, Any]:
    """transformers Trainer + peft, or TRL SFTTrainer + peft, as a user would write them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    s = settings()
    cuda = torch.cuda.is_available()
    model_dir, data = build_inputs(folder)
    batch = 16 if "bs16" in name else 8
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa",
                                                 **({"device_map": {"": 0}} if cuda else {}))
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules="all-linear")
    common = {"output_dir": str(folder / f"out-{name}"), "per_device_train_batch_size": batch,
              "max_steps": s["steps"], "learning_rate": 2e-4, "logging_steps": 100, "report_to": [],
              "save_strategy": "no", "optim": "adamw_torch", "bf16": cuda, "use_cpu": not cuda}
    times: dict[int, float] = {}
    tokens: dict[int, float] = {}
    box: list[Any] = []
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if name.startswith("plain_peft"):
        from datasets import Dataset

        rows = [json.loads(line) for line in data.read_text().splitlines()]
        ids = [tokenizer(r["input"] + "\n" + r["output"])["input_ids"][: s["seq"]] for r in rows]
        dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                                     "labels": ids})
        trainer = Trainer(model=get_peft_model(model, lora), args=TrainingArguments(**common),
                          train_dataset=dataset, callbacks=[clock_callback(times, tokens, box)])
    else:
        import dataclasses

        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        rows = [json.loads(line) for line in data.read_text().splitlines()]
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["input"]}],
                                      "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows])
        names = {f.name for f in dataclasses.fields(SFTConfig)}
        packed = "packed" in name
        extra = {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": False}
        if packed:
            extra.update(packing_strategy="bfd", padding_free=True)
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, max_length=s["seq"], packing=packed,
                                                         completion_only_loss=True, **extra),
                             train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
                             callbacks=[clock_callback(times, tokens, box)])
    box.append(trainer)
    trainer.train()
    return report(name, times, tokens, batch)


# --- modelforge train -------------------------------------------------------------------------

def modelforge(name: str, folder: Path) -> dict[str, Any]:
    """``modelforge train`` through the orchestrator the CLI calls, in this process so that the
    peak GPU memory can be read afterwards; throughput from the run's own log (log.jsonl)."""
    provider = "unsloth" if "unsloth" in name else "huggingface"
    if provider == "unsloth":
        import unsloth  # noqa: F401  (first, so that its patches apply, as the provider does on run start)
    import torch

    from modelforge_core.config import resolve_config
    from modelforge_core.orchestrate import train
    from modelforge_core.training import Display

    s = settings()
    model_dir, data = build_inputs(folder)
    cuda = torch.cuda.is_available()
    batch = 16 if "bs16" in name else 8
    config: dict[str, Any] = {
        "task": "text-generation", "model_name": str(model_dir), "dataset": str(data), "provider": provider,
        "compute_specs": "high_end" if "high_end" in name else "mid_range", "max_seq_length": s["seq"],
        "max_steps": s["steps"], "logging_steps": 1, "eval_split": 0, "save_steps": 1000, "eval_steps": 1000,
        "learning_rate": 2e-4, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "warmup_ratio": 0.0,
        "output_dir": str(folder / f"run-{name}"),
    }
    if "high_end" not in name:
        config.update({"per_device_train_batch_size": batch, "gradient_accumulation_steps": 1, "use_4bit": False,
                       "use_8bit": False, "gradient_checkpointing": False, "optim": "adamw_torch",
                       "packing": "packed" in name, "bf16": cuda, "fp16": False})
    for suffix, values in OPTIONS.items():
        if provider == "huggingface" and name.endswith("_" + suffix):
            config.update(values)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    resolved = resolve_config(config, base_dir=folder)
    print(f"{name}: resolved " + json.dumps({k: resolved[k] for k in (
        "per_device_train_batch_size", "gradient_accumulation_steps", "packing", "use_4bit", "gradient_checkpointing",
        "optim", "bf16", "attention_implementation", "liger_kernel", "torch_compile", "neftune_noise_alpha")
        if k in resolved}), flush=True)
    outcome = train(resolved, display=Display(enabled=False))
    records = [json.loads(line) for line in (outcome.run_dir / "log.jsonl").read_text().splitlines()]
    steps = {int(r["step"]): float(r["time"]) for r in records if "loss" in r}
    tokens = {int(r["step"]): float(r.get("num_tokens", 0)) for r in records if "loss" in r}
    effective = resolved["per_device_train_batch_size"] * resolved["gradient_accumulation_steps"]
    # log times are written when each step's loss is logged (after the step; the loss read syncs the device)
    return report(name, steps, tokens, effective)


# --- the driver -------------------------------------------------------------------------------

def run_all(out: Path, runs: list[str], timeout: int) -> int:
    results: dict[str, dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="mf-gpu-bench-"))
    for name in runs:
        started = time.time()
        log = out / f"{name}.log"
        with log.open("w") as handle:
            try:
                done = subprocess.run([sys.executable, __file__, "one", name, "--work", str(work)], stdout=handle,
                                      stderr=subprocess.STDOUT, timeout=timeout, check=False)
                status = done.returncode
            except subprocess.TimeoutExpired:
                status = "timeout"
        lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
        if lines:
            results[name] = json.loads(lines[-1][7:])
        elif status == 3:
            refused = [line for line in log.read_text().splitlines() if "needs" in line][-1:]
            print(f"{name}: refused by this machine: {refused[0] if refused else 'see ' + str(log)}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))  # kept if a later run times out
        print(f"{name}: exit {status} in {time.time() - started:.0f} s; "
              f"{json.dumps(results.get(name)) if name in results else 'no result, see ' + str(log)}", flush=True)
    base = results.get("plain_peft_bs8")
    print(f"\n{'run':<24}{'tok/s':>9}{'vs plain':>10}{'step s':>9}{'MFU':>7}{'peak GiB':>10}")
    for name, r in results.items():
        ratio = r["tok_s"] / base["tok_s"] if base else float("nan")
        print(f"{name:<24}{r['tok_s']:>9}{ratio:>9.2f}x{r['step_s']:>9}{r['mfu']:>7}{r['peak_gib']!s:>10}")
    for name, goal in GOALS.items():
        if base and name in results:
            r = results[name]
            ratio = r["tok_s"] / base["tok_s"]
            memory_ok = name != "mf_hf_high_end" or (r["peak_gib"] or 0) <= (base["peak_gib"] or 0)
            verdict = "met" if ratio >= goal and memory_ok else "MISSED"
            print(f"goal {name}: {ratio:.2f}x (>= {goal}x{' at no more memory' if name == 'mf_hf_high_end' else ''})"
                  f": {verdict}")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("all", "one"))
    parser.add_argument("name", nargs="?")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/gpu/out"))
    parser.add_argument("--work")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of the runs")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per run")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on any device: checks the pipeline")
    args = parser.parse_args(argv)
    if args.tiny:
        os.environ["BENCH_TINY"] = "1"
    if args.mode == "all":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        return run_all(out, [r for r in args.runs.split(",") if r], args.timeout)
    folder = Path(args.work or tempfile.mkdtemp())
    if args.name.startswith("plain"):
        plain(args.name, folder)
        return 0
    from modelforge_core.errors import ModelForgeError

    try:
        modelforge(args.name, folder)
    except ModelForgeError as exc:  # a refusal (exit 3: this machine lacks what the option needs)
        print(f"{args.name}: {exc}", flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
