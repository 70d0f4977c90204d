"""The training a user would write by hand, for comparison with ``modelforge train``:
TRL's SFTTrainer with a peft LoRA, on the same model, rows, hyperparameters and seed, read
from the same ModelForge config file (only its plain fields are used).

Writes a JSON file with the trainer's own timing and token count and the wall-clock time of
each log, so the benchmark can compare throughput and start-up.

    python bench/overhead/plain_sft.py CONFIG.json RESULT.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

STARTED = time.time()


def main(config_path: str, result_path: str) -> int:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    config = json.loads(Path(config_path).read_text())
    set_seed(config["seed"])
    tokenizer = AutoTokenizer.from_pretrained(config["model_name"])
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config["model_name"], dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=config["lora_r"], lora_alpha=config["lora_alpha"],
                                             lora_dropout=config["lora_dropout"], target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    rows = [json.loads(line) for line in Path(config["dataset"]).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": row["input"]}],
         "completion": [{"role": "assistant", "content": row["output"]}]} for row in rows])

    records: list[dict[str, float]] = []

    class Times(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            records.append({"time": time.time(), "step": state.global_step, **(logs or {})})

    import dataclasses

    names = {field.name for field in dataclasses.fields(SFTConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    args = SFTConfig(
        output_dir=str(Path(result_path).parent / "plain-out"), max_steps=config["max_steps"],
        per_device_train_batch_size=config["per_device_train_batch_size"],
        gradient_accumulation_steps=config["gradient_accumulation_steps"], learning_rate=config["learning_rate"],
        lr_scheduler_type=config.get("lr_scheduler_type", "linear"), warmup_steps=0, optim=config["optim"],
        weight_decay=config.get("weight_decay", 0.0), max_grad_norm=config.get("max_grad_norm", 0.3),
        logging_steps=config["logging_steps"], logging_first_step=True, save_strategy="steps",
        save_steps=config["save_steps"], seed=config["seed"], data_seed=config["seed"], bf16=False, fp16=False,
        use_cpu=not torch.cuda.is_available(), report_to=[], max_length=config["max_seq_length"], packing=False,
        completion_only_loss=True, dataset_num_proc=None, **{checkpointing: False})
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[Times()])
    output = trainer.train()
    trainer.save_model(str(Path(result_path).parent / "plain-adapter"))
    tokens = max((record.get("num_tokens", 0) for record in records), default=0)
    Path(result_path).write_text(json.dumps({
        "started": STARTED, "first_log": records[0]["time"], "last_log": records[-1]["time"], "finished": time.time(),
        "train_runtime": output.metrics["train_runtime"], "num_tokens": tokens, "steps": trainer.state.global_step,
        "train_loss": output.training_loss, "logs": [r for r in records if "loss" in r]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
