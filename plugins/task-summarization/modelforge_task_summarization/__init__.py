"""The summarization task: ``{"document", "summary"}`` rows, seq2seq (T5, BART) or causal
models, scored with ROUGE-1/2/L on generated summaries."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from modelforge_core import hookimpl
from modelforge_core.api import LoadedModel, RowFormat, Task, native, required_text
from modelforge_core.errors import Problem

#: Model types whose config says "encoder-decoder" even without ``is_encoder_decoder``.
SEQ2SEQ_TYPES = frozenset({"t5", "mt5", "bart", "mbart", "pegasus", "led", "longt5", "umt5", "flan-t5"})


class Summarization(Task):
    name: ClassVar[str] = "summarization"
    description: ClassVar[str] = "Document summarization, scored with ROUGE-1/2/L."
    heads: ClassVar[tuple[str, ...]] = ("seq2seq-lm", "causal-lm")
    data_shapes: ClassVar[frozenset[str]] = frozenset({"supervised"})
    row_formats: ClassVar[Mapping[str, Sequence[str]]] = {
        "supervised": ('{"document": ..., "summary": ...}',),
    }
    generate_inputs: ClassVar[Mapping[str, str]] = {"document": "document"}
    formats: ClassVar[Sequence[RowFormat]] = (
        native("document_summary", {"document", "summary"}, {"id"}, description='{"document", "summary"[, "id"]}'),
    )
    options_schema: ClassVar[Mapping[str, Any]] = {
        "description": "Generation settings for the summaries scored with ROUGE.",
        "properties": {
            "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 64,
                               "description": "Longest summary generated, in tokens.",
                               "examples": [64, 128]},
            "num_beams": {"type": "integer", "minimum": 1, "maximum": 16, "default": 1,
                          "description": "Beam search width when generating summaries (1: greedy).",
                          "examples": [1, 4]},
            "source_prefix": {"type": "string", "default": "summarize: ",
                              "description": "Text put before each document for seq2seq models (T5's convention).",
                              "examples": ["summarize: ", ""]},
            "max_eval_samples": {"type": ["integer", "null"], "minimum": 1, "default": 200,
                                 "description": "At most this many eval rows are summarized for ROUGE (null: all).",
                                 "examples": [200, None]},
        },
    }

    def row_shape(self, row: Mapping[str, Any]) -> str | None:
        return "supervised" if "document" in row or "summary" in row else None

    def check_row(self, row: Mapping[str, Any], shape: str, config: Mapping[str, Any]) -> list[Problem]:
        return required_text(row, ("document", "summary"))

    def choose_head(self, config: Mapping[str, Any], model_config: Mapping[str, Any] | None) -> str:
        if model_config and (model_config.get("is_encoder_decoder")
                             or model_config.get("model_type") in SEQ2SEQ_TYPES):
            return "seq2seq-lm"
        if model_config is None:
            return "seq2seq-lm"
        return "causal-lm"

    def build_dataset(self, rows: Sequence[Mapping[str, Any]], *, shape: str, tokenizer: Any,
                      config: Mapping[str, Any], head: str) -> Any:
        from .processing import build_dataset

        return build_dataset(rows, tokenizer=tokenizer, config=config, head=head)

    def data_collator(self, tokenizer: Any, model: Any, head: str) -> Any:
        from .processing import data_collator

        return data_collator(tokenizer, model, head)

    def evaluate(self, loaded: LoadedModel, rows: Sequence[Mapping[str, Any]], *,
                 config: Mapping[str, Any]) -> dict[str, float]:
        from .processing import evaluate

        return evaluate(loaded, rows, config=config)

    def predict(self, loaded: LoadedModel, inputs: Mapping[str, Any], *, config: Mapping[str, Any],
                **generation: Any) -> str:
        """The summary of ``{"document": ...}``, generated in the training format with the
        task's length and beams unless ``generation`` says otherwise (``max_new_tokens``,
        ``num_beams``, ``temperature``, ...)."""
        document = inputs.get("document")
        if not isinstance(document, str) or not document.strip():
            from modelforge_core.errors import UsageError

            raise UsageError('summarization needs the text to summarize: pass {"document": "..."}')
        from .processing import generate_summaries

        return generate_summaries(loaded, [document], config, batch_size=1, **generation)[0]


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(Summarization())
