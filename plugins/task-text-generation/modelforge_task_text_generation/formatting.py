"""Turning checked text-generation rows into TRL's prompt/completion datasets.

With a chat template, every row becomes a conversation (a list of messages for the prompt and
the assistant's answer as the completion), so the model is trained in the same format it is
prompted with later. Without one, plain text: the prompt, then the completion; TRL appends EOS
to the completion. Either way the loss covers the completion only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import TextGeneration

#: Joins an instruction and its answer when the tokenizer has no chat template.
PLAIN_SEPARATOR = "\n"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def to_messages(row: Mapping[str, Any], fmt: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Prompt messages and completion messages for a supervised row."""
    if fmt == "messages":
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        return messages[:-1], messages[-1:]
    if fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        prompt_messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        completion_messages = (completion if isinstance(completion, list)
                               else [{"role": "assistant", "content": completion}])
        return list(prompt_messages), list(completion_messages)
    prompt_messages = []
    if row.get("system"):
        prompt_messages.append({"role": "system", "content": row["system"]})
    prompt_messages.append({"role": "user", "content": row["input"]})
    return prompt_messages, [{"role": "assistant", "content": row["output"]}]


def to_plain(row: Mapping[str, Any], fmt: str) -> tuple[str, str]:
    """Prompt text and completion text for a supervised row, for tokenizers without a template."""
    prompt_messages, completion_messages = to_messages(row, fmt)
    if fmt == "prompt_completion" and isinstance(row["prompt"], str) and isinstance(row["completion"], str):
        return row["prompt"], row["completion"]
    prompt = PLAIN_SEPARATOR.join(m["content"] for m in prompt_messages if m["content"])
    return prompt + PLAIN_SEPARATOR, "".join(m["content"] for m in completion_messages)


def format_prompt(row_or_text: Mapping[str, Any] | str, tokenizer: Any, task: TextGeneration | None = None) -> str:
    """The generation prompt for inference, in the training format (``generate``/``chat``).

    Accepts a plain string, ``{"input"[, "system"]}``, ``{"prompt"}`` or ``{"messages"}``
    (the conversation so far, ending with the user's turn).
    """
    row: dict[str, Any] = {"input": row_or_text} if isinstance(row_or_text, str) else dict(row_or_text)
    if "messages" in row:
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    elif "prompt" in row:
        prompt = row["prompt"]
        messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    else:
        messages = ([{"role": "system", "content": row["system"]}] if row.get("system") else [])
        messages.append({"role": "user", "content": row["input"]})
    if has_chat_template(tokenizer):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    if isinstance(row.get("prompt"), str):
        return str(row["prompt"])
    return PLAIN_SEPARATOR.join(m["content"] for m in messages if m["content"]) + PLAIN_SEPARATOR


def preference_example(row: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
    """A preference row in TRL's format: conversational when the tokenizer has a template."""
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if has_chat_template(tokenizer):
        as_prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]

        def answer(value: Any) -> list[dict[str, str]]:
            return value if isinstance(value, list) else [{"role": "assistant", "content": value}]

        return {"prompt": as_prompt, "chosen": answer(chosen), "rejected": answer(rejected)}

    def text(value: Any) -> str:
        return value if isinstance(value, str) else PLAIN_SEPARATOR.join(m["content"] for m in value)

    return {"prompt": text(prompt) + PLAIN_SEPARATOR, "chosen": text(chosen), "rejected": text(rejected)}


def prompt_example(prompt: Any, tokenizer: Any) -> Any:
    """A prompt in TRL's format: a message list when the tokenizer has a template, else text."""
    if has_chat_template(tokenizer):
        return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    text = prompt if isinstance(prompt, str) else PLAIN_SEPARATOR.join(m["content"] for m in prompt)
    return text + PLAIN_SEPARATOR


def build_dataset(task: TextGeneration, rows: Sequence[Mapping[str, Any]], *, shape: str, tokenizer: Any,
                  config: Mapping[str, Any]) -> Any:
    from datasets import Dataset

    if shape == "preference":
        return Dataset.from_list([preference_example(row, tokenizer) for row in rows])
    if shape == "prompt":
        # Only the prompt, formatted as for preference pairs; a strategy reads the rows' other
        # fields (what its rewards need) from the rows themselves.
        return Dataset.from_list([{"prompt": prompt_example(row["prompt"], tokenizer)} for row in rows])
    examples = []
    template = has_chat_template(tokenizer)
    for row in rows:
        fmt = task.row_format(row)
        if template:
            prompt, completion = to_messages(row, fmt)
        else:
            prompt, completion = to_plain(row, fmt)  # type: ignore[assignment]
        examples.append({"prompt": prompt, "completion": completion})
    return Dataset.from_list(examples)


def generate_answer(task: TextGeneration, loaded: Any, inputs: Mapping[str, Any], *,
                    max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                    repetition_penalty: float = 1.0) -> str:
    """Greedy (temperature 0) or sampled generation for one prompt, in the training format."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    prompt = format_prompt(inputs, tokenizer, task)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=not has_chat_template(tokenizer))
    device = next(model.parameters()).device
    encoded = {k: v.to(device) for k, v in encoded.items()}
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty,
                               "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        options.update(do_sample=False)
    with torch.no_grad():
        output = model.generate(**encoded, **options)
    new_tokens = output[0, encoded["input_ids"].shape[1]:]
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()
