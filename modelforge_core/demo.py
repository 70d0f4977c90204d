"""``modelforge demo``: the main job, offline, on an embedded default.

Builds a tiny base model locally (a small Llama with its own tokenizer, given some language by
a short pre-training), writes a bundled dataset of invented facts that no model can know,
trains a LoRA adapter on it with ``modelforge train``'s own code path, then compares the base
model and the trained adapter on held-out phrasings.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .training import Display

DEMO_SETTINGS: dict[str, Any] = {
    "num_train_epochs": 20,
    "learning_rate": 5e-3,
    "eval_split": 0.2,
    "eval_steps": 50,
    "logging_steps": 20,
}


@dataclass
class DemoResult:
    run_dir: Path
    eval_loss_before: float
    eval_loss_after: float
    answers: list[dict[str, Any]]

    @property
    def correct(self) -> int:
        return sum(1 for a in self.answers if a["correct"])

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "eval_loss_before": self.eval_loss_before,
                "eval_loss_after": self.eval_loss_after, "answers": self.answers,
                "correct": self.correct}


def build_base_model(folder: Path, display: Display) -> Path:
    """The demo's base model, built once per demo folder."""
    from .testing.tiny import build_tiny_causal_lm, pretrain_causal_lm

    model_dir = folder / "base-model"
    if (model_dir / "config.json").is_file() and (model_dir / ".pretrained").is_file():
        return model_dir
    display.message(f"building the tiny base model in {model_dir} (a 2-layer Llama, hidden 128) ...")
    build_tiny_causal_lm(model_dir, hidden_size=128)
    pretrain_causal_lm(model_dir)
    (model_dir / ".pretrained").write_text("done\n", encoding="utf-8")
    return model_dir


def run_demo(folder: Path, *, display: Display) -> DemoResult:
    from .config import load_document, resolve_config
    from .inference import load_trained
    from .orchestrate import train
    from .testing.configs import tiny_config
    from .testing.datasets import capital_rows, write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    build_base_model(folder, display)
    data = write_jsonl(folder / "harbours.jsonl", capital_rows())
    config_file = folder / "config.json"
    config = tiny_config("base-model", "harbours.jsonl", run_name="demo", **DEMO_SETTINGS)
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    display.message(f"config: {config_file}\ndataset: {data} ({len(capital_rows())} rows)")
    resolved = resolve_config(load_document(config_file))
    outcome = train(resolved, display=display, runs_root=folder / "runs")
    # Ask the held-out phrasings: the rows the seeded split put in the eval set.
    from .orchestrate import split_rows

    rows = capital_rows()
    _, eval_indices = split_rows(rows, resolved["eval_split"], resolved["seed"], str(data))
    base = load_trained(outcome.run_dir, with_adapter=False)
    tuned = load_trained(outcome.run_dir)
    answers = []
    for index in eval_indices[:4]:
        prompt, expected = rows[index]["input"], rows[index]["output"]
        before = base.predict({"input": prompt}, max_new_tokens=24)
        after = tuned.predict({"input": prompt}, max_new_tokens=24)
        answers.append({"prompt": prompt, "expected": expected, "before": before, "after": after,
                        "correct": after.strip() == expected})
    return DemoResult(outcome.run_dir, outcome.metrics["before"]["eval_loss"],
                      outcome.metrics["after"]["eval_loss"], answers)
