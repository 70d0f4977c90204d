"""The grpo strategy end to end: the real CLI trains the kit's pre-trained tiny Llama against a
built-in format reward and a reward from a separately installed test distribution, is
interrupted and resumed, and the format reward rises on the eval prompts; a 4-bit base trains;
rows without a field a reward reads are refused before anything loads."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.testing.datasets import write_jsonl
from modelforge_core.testing.pytest_plugin import tiny_config

pytestmark = pytest.mark.slow

MODELFORGE = Path(sys.executable).with_name("modelforge")

#: A reward from outside ModelForge, shipped as its own distribution (the docs' walk-through).
TEST_REWARD = '''
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import Reward


class MentionsTopic(Reward):
    name: ClassVar[str] = "mentions_topic"
    description: ClassVar[str] = "A bonus when the completion names the row's topic."
    row_fields: ClassVar[tuple[str, ...]] = ("topic",)
    options_schema: ClassVar[Mapping[str, Any]] = {"properties": {
        "field": {"type": "string", "minLength": 1, "default": "topic", "examples": ["topic"],
                  "description": "The row field holding the topic."},
        "bonus": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0, "examples": [0.5],
                  "description": "The score of a completion that names the topic."},
    }}

    def fields(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        return (options["field"],)

    def score(self, prompts: Sequence[Any], completions: Sequence[str], *,
              fields: Mapping[str, Sequence[Any]], options: Mapping[str, Any]) -> list[float]:
        topics = fields[options["field"]]
        assert len(topics) == len(completions) == len(prompts)
        for prompt, topic in zip(prompts, topics, strict=True):  # each completion with its own row
            assert str(topic) in json.dumps(prompt), (prompt, topic)
        return [options["bonus"] if str(topic).lower() in text.lower() else 0.0
                for text, topic in zip(completions, topics, strict=True)]


@hookimpl
def register_rewards(register: Callable[[Reward], None]) -> None:
    register(MentionsTopic())
'''

ANIMALS = ("cat", "dog", "fox", "wolf", "horse", "owl", "bear", "frog", "lion", "duck", "goat", "seal",
           "mouse", "tiger", "rabbit", "sheep")

#: A format the policy can learn: one sentence, capitalised, ending with a full stop.
SENTENCE = r"[A-Z][^.?!\n]*\."


def prompt_rows() -> list[dict[str, str]]:
    return [{"prompt": f"Where does the {animal} live?", "topic": animal} for animal in ANIMALS]


def install_test_rewards(folder: Path) -> dict[str, str]:
    """Install the test reward distribution into ``folder``; the environment that sees it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modelforge_test_rewards.py").write_text("import json\n" + TEST_REWARD, "utf-8")
    info = folder / "modelforge_test_rewards-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: modelforge-test-rewards\nVersion: 1.0\n", "utf-8")
    (info / "entry_points.txt").write_text("[modelforge]\ntest-rewards = modelforge_test_rewards\n", "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFORGE_")}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p),
               PYTHONUNBUFFERED="1")
    if "MODELFORGE_CACHE_DIR" in os.environ:
        env["MODELFORGE_CACHE_DIR"] = os.environ["MODELFORGE_CACHE_DIR"]
    return env


def grpo_config(model: Path, data: Path, **overrides: Any) -> dict[str, Any]:
    options = {"num_generations": 4, "max_completion_length": 12, "beta": 0.04, "rewards": [
        {"name": "regex", "options": {"pattern": SENTENCE, "mode": "fullmatch"}},
        {"name": "mentions_topic", "weight": 0.5, "options": {"bonus": 0.5}},
    ]}
    return tiny_config(model, data, strategy="grpo", per_device_train_batch_size=8, per_device_eval_batch_size=8,
                       learning_rate=5e-3, max_steps=12, logging_steps=1, eval_split=0.25,
                       grpo=options, **overrides)


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


@pytest.fixture(scope="module")
def grpo_run(pretrained_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``modelforge train`` interrupted by SIGINT after step 4, then ``--resume``d to step 12."""
    root = tmp_path_factory.mktemp("grpo")
    env = install_test_rewards(root / "site")
    out = root / "run"
    data = write_jsonl(root / "prompts.jsonl", prompt_rows())
    (root / "cfg.json").write_text(json.dumps(grpo_config(pretrained_causal_lm, data, output_dir=str(out))))
    process = subprocess.Popen([str(MODELFORGE), "train", "cfg.json"], cwd=root, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 600
    while not any(r.get("step", 0) >= 4 and "reward" in r for r in records(out / "log.jsonl")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"training ended early: {process.communicate()[1][-3000:]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    interrupted = json.loads((out / "status.json").read_text())
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"))
    earlier = json.loads((out / "metrics.json").read_text())
    resumed = subprocess.run([str(MODELFORGE), "train", "--resume", str(out), "--json"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=600, check=False)
    return {"returncode": process.returncode, "stderr": stderr, "status": interrupted, "checkpoints": checkpoints,
            "earlier": earlier, "resumed": resumed, "out": out, "env": env, "root": root}


def test_interrupted_grpo_run_resumes_and_finishes(grpo_run: Mapping[str, Any]) -> None:
    assert grpo_run["returncode"] == 130, grpo_run["stderr"][-3000:]
    assert grpo_run["status"]["status"] == "interrupted"
    assert len(grpo_run["checkpoints"]) == 1
    assert 4 <= int(grpo_run["checkpoints"][0].name.split("-")[1]) < 12
    resumed = grpo_run["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    outcome = json.loads(resumed.stdout)
    assert outcome["status"] == "finished" and outcome["metrics"]["global_step"] == 12
    # Measured once, before the first attempt trained.
    assert outcome["metrics"]["before"] == grpo_run["earlier"]["before"]
    assert (grpo_run["out"] / "adapter" / "adapter_config.json").is_file()


def test_the_format_reward_rises_on_the_eval_prompts(grpo_run: Mapping[str, Any]) -> None:
    metrics = json.loads((grpo_run["out"] / "metrics.json").read_text())
    before, after = metrics["before"], metrics["after"]
    assert after["eval_rewards/regex/mean"] > before["eval_rewards/regex/mean"] + 0.1, (before, after)
    assert after["eval_reward"] > before["eval_reward"]
    assert before["eval_completions/mean_length"] > 0 and math.isfinite(after["train_loss"])
    # The configured rewards, options with their defaults, for the record.
    assert metrics["rewards"] == [
        {"name": "regex", "label": "regex", "weight": 1.0,
         "options": {"pattern": SENTENCE, "mode": "fullmatch", "ignore_case": False}},
        {"name": "mentions_topic", "label": "mentions_topic", "weight": 0.5,
         "options": {"field": "topic", "bonus": 0.5}},
    ]


def test_each_step_logs_every_reward_the_kl_and_completion_lengths(grpo_run: Mapping[str, Any]) -> None:
    out = grpo_run["out"]
    steps = [r for r in records(out / "log.jsonl") if "reward" in r and "stage" not in r]
    assert sorted({r["step"] for r in steps}) == list(range(1, 13))
    for record in steps:
        for key in ("rewards/regex/mean", "rewards/regex/std", "rewards/mentions_topic/mean",
                    "rewards/mentions_topic/std", "reward_std", "kl", "completions/mean_length"):
            assert math.isfinite(record[key]), key
    assert max(r["kl"] for r in steps) > 0, "the adapter moves the policy away from the base"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in (out / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags.update(accumulator.Tags()["scalars"])
    assert {"train/rewards/regex/mean", "train/rewards/mentions_topic/std", "train/kl",
            "train/completions/mean_length"} <= tags


def test_the_test_distribution_reward_is_validated_with_its_options(grpo_run: Mapping[str, Any]) -> None:
    root: Path = grpo_run["root"]
    config = json.loads((root / "cfg.json").read_text())
    config["grpo"]["rewards"][1]["options"] = {"bonus": 2}
    config["grpo"]["rewards"].append({"name": "mentions_topics"})
    (root / "bad.json").write_text(json.dumps(config, indent=1))
    result = subprocess.run([str(MODELFORGE), "validate", "bad.json", "--json"], cwd=root, env=grpo_run["env"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    errors = {e["path"]: e for e in json.loads(result.stdout)["errors"]}
    assert set(errors) == {"grpo.rewards[1].options.bonus", "grpo.rewards[2].name"}
    assert errors["grpo.rewards[1].options.bonus"]["message"] == "2 is above the maximum of 1"
    assert '"mentions_topic"' in errors["grpo.rewards[2].name"]["message"]
    assert errors["grpo.rewards[2].name"]["hint"] == "did you mean 'mentions_topic'?"


def test_rows_without_a_field_a_reward_reads_are_refused(pretrained_causal_lm: Path, tmp_path: Path,
                                                          run_training: Any) -> None:
    from modelforge_core.errors import ConfigError
    from modelforge_core.plugins import load_plugins

    rows: list[dict[str, Any]] = prompt_rows()
    del rows[5]["topic"]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    namespace: dict[str, Any] = {}
    exec("import json\n" + TEST_REWARD, namespace)  # noqa: S102 - the test reward, registered directly
    plugins = load_plugins(extra=[("test-rewards", type("P", (), {
        "register_rewards": staticmethod(namespace["register_rewards"])})())], environ={})
    with pytest.raises(ConfigError, match=r"grpo\.rewards\[1\] \(mentions_topic\) reads the row field 'topic', "
                                          r"which 1 of \d+ (train|eval) rows lack"):
        run_training(grpo_config(pretrained_causal_lm, data), plugins=plugins)


def test_grpo_trains_a_4bit_base(tiny_causal_lm: Path, tmp_path: Path, run_training: Any) -> None:
    from peft import AutoPeftModelForCausalLM

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"], "answer": r["topic"]}
                                                   for r in prompt_rows()])
    config = tiny_config(tiny_causal_lm, data, strategy="grpo", max_steps=1, use_4bit=True,
                         bnb_4bit_compute_dtype="float32", eval_split=0.125, per_device_train_batch_size=4,
                         grpo={"num_generations": 2, "max_completion_length": 4,
                               "rewards": [{"name": "exact_match"}, {"name": "length_penalty",
                                                                     "options": {"max_length": 5}}]})
    outcome = run_training(config)
    assert outcome.status == "finished" and outcome.metrics["global_step"] == 1
    assert "eval_rewards/exact_match/mean" in outcome.metrics["after"]
    assert AutoPeftModelForCausalLM.from_pretrained(outcome.run_dir / "adapter") is not None
