"""Every preference loss of TRL's DPOTrainer is a ``dpo.loss_type`` the schema accepts, reaches
the trainer the strategy builds (with its options), and the losses with requirements are
refused at validation with their rule; two representative losses train."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from modelforge_strategy_dpo import LOSS_TYPES

from modelforge_core.testing.datasets import preference_rows, write_jsonl
from modelforge_core.testing.pytest_plugin import tiny_config

pytestmark = pytest.mark.slow

#: Options each loss needs beyond its name (what the schema's rules ask for).
NEEDS: dict[str, dict[str, Any]] = {"exo_pair": {"label_smoothing": 0.001}, "discopop": {"discopop_tau": 0.1}}


class Built(Exception):
    """Raised right after the strategy built its DPOTrainer: nothing trains."""

    def __init__(self, trainer: Any) -> None:
        super().__init__("built")
        self.trainer = trainer


@pytest.fixture
def stop_after_building(monkeypatch: pytest.MonkeyPatch) -> None:
    from trl import DPOTrainer

    original = DPOTrainer.__init__

    def build_then_stop(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)  # TRL's own checks of the loss run here
        raise Built(self)

    monkeypatch.setattr(DPOTrainer, "__init__", build_then_stop)


def test_the_schema_offers_every_loss_of_the_installed_trl() -> None:
    import inspect

    from trl.trainer import dpo_config

    help_text = dpo_config.DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    documented = re.findall(r"`'(\w+)'`", help_text.split("Possible values are:")[1].split(". ")[0])
    assert sorted(documented) == sorted(LOSS_TYPES), "the schema offers exactly the losses TRL documents"
    assert "loss_type" in inspect.signature(dpo_config.DPOConfig).parameters


@pytest.mark.parametrize("loss", LOSS_TYPES)
def test_each_loss_reaches_the_trainer(loss: str, tiny_causal_lm: Path, tmp_path: Path, run_training: Any,
                                       stop_after_building: None) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows()[:8])
    config = tiny_config(tiny_causal_lm, data, strategy="dpo", max_steps=1, eval_split=0.25,
                         dpo={"loss_type": loss, "beta": 0.2, **NEEDS.get(loss, {})})
    with pytest.raises(Built) as built:
        run_training(config)
    trainer = built.value.trainer
    assert trainer.loss_types == [loss] and trainer.args.loss_type == [loss]
    assert trainer.beta == 0.2
    assert trainer.label_smoothing == NEEDS.get(loss, {}).get("label_smoothing", 0.0)
    assert trainer.args.discopop_tau == NEEDS.get(loss, {}).get("discopop_tau", 0.05)


@pytest.mark.parametrize(("options", "message"), [
    ({"loss_type": "exo_pair"}, "The exo_pair loss of dpo needs dpo.label_smoothing above 0"),
    ({"loss_type": "exo_pair", "label_smoothing": 0}, "The exo_pair loss of dpo needs dpo.label_smoothing above 0"),
    ({"loss_type": "robust", "label_smoothing": 0.5}, "The robust loss of dpo needs dpo.label_smoothing below 0.5"),
])
def test_losses_with_requirements_are_refused_at_validation(options: dict[str, Any], message: str) -> None:
    from modelforge_core.plugins import load_plugins
    from modelforge_core.schema import effective_schema, validate_instance

    builtin_plugins = load_plugins(environ={})
    config = {"task": "text-generation", "model_name": "m", "dataset": "d.jsonl", "compute_specs": "low_end",
              "strategy": "dpo", "dpo": options}
    problems = validate_instance(config, effective_schema(builtin_plugins.registry), builtin_plugins)
    assert [p.path for p in problems] == ["dpo.label_smoothing"]
    assert problems[0].message.startswith(message)
    fixed = {**options, "label_smoothing": 0.1}
    assert validate_instance({**config, "dpo": fixed}, effective_schema(builtin_plugins.registry),
                             builtin_plugins) == []


@pytest.mark.parametrize("loss", ["ipo", "exo_pair"])
def test_representative_losses_train(loss: str, tiny_causal_lm: Path, tmp_path: Path, run_training: Any) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows())
    config = tiny_config(tiny_causal_lm, data, strategy="dpo", max_steps=2, learning_rate=5e-3,
                         dpo={"loss_type": loss, **NEEDS.get(loss, {})})
    outcome = run_training(config)
    assert outcome.status == "finished" and outcome.metrics["global_step"] == 2
    assert math.isfinite(outcome.metrics["after"]["train_loss"])
    assert math.isfinite(outcome.metrics["after"]["eval_loss"])
