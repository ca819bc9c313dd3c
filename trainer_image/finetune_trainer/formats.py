"""Data formats: which kind of rows a dataset holds, and what one row becomes for a causal LM.

One formatting path for every command (range test, trial, fine-tune): :func:`resolve_type` decides the
data type from ``dataset.type`` and the columns, :func:`standard_row` turns a row into TRL's standard
dataset forms (``{"text"}``, ``{"messages"}`` or ``{"prompt", "completion"}``), and :func:`tokenize_row`
turns that into ``input_ids`` and ``labels`` (-100 where no loss is taken). Chat rows are rendered with the
tokenizer's chat template; the completion boundaries follow TRL's rule (the prompt ends where the tokenized
prompt and prompt + completion diverge, :func:`trl.data_utils.common_prefix_length`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from finetune_trainer.config import DatasetSpec
from finetune_trainer.exitcodes import ConfigError

IGNORE_INDEX = -100
"""The label of a token that carries no loss (PyTorch's cross-entropy ``ignore_index``)."""

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
"""The Stanford Alpaca prompts (with and without an input), the format instruction data is trained in."""

# (data type, the fields it needs, the camelCase names of those fields)
_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "text": (("text_field", "dataset.textField"),),
    "chat": (("messages_field", "dataset.messagesField"),),
    "prompt-completion": (
        ("prompt_field", "dataset.promptField"),
        ("completion_field", "dataset.completionField"),
    ),
    "instruction": (
        ("instruction_field", "dataset.instructionField"),
        ("output_field", "dataset.outputField"),
    ),
}
_AUTO_ORDER = ("chat", "prompt-completion", "instruction", "text")


def resolve_type(spec: DatasetSpec, columns: Sequence[str]) -> str:
    """The data type: ``dataset.type``, or for ``auto`` the first type whose columns are all present.

    Raises :class:`ConfigError` naming the ``dataset.*Field`` that is missing from the data.
    """
    if spec.type == "auto":
        for kind in _AUTO_ORDER:
            if all(getattr(spec, attr) in columns for attr, _ in _NEEDS[kind]):
                return kind
        raise ConfigError(
            "dataset.textField",
            f"column {spec.text_field!r} not found (columns: {', '.join(columns)}), and no "
            f"{spec.messages_field!r}, {spec.prompt_field!r}+{spec.completion_field!r} or "
            f"{spec.instruction_field!r}+{spec.output_field!r} columns for chat, prompt-completion or "
            "instruction data either",
            "set dataset.textField to the column holding the text, or dataset.type and its *Field to yours",
        )
    for attr, name in _NEEDS[spec.type]:
        column = getattr(spec, attr)
        if column not in columns:
            raise ConfigError(
                name,
                f"column {column!r} not found (dataset.type {spec.type}; columns: {', '.join(columns)})",
                f"set {name} to the column that holds it, or fix dataset.type",
            )
    return spec.type


def packs(spec: DatasetSpec, kind: str) -> bool:
    """Whether examples are packed: the spec's choice, else on for plain text and off for the others."""
    return spec.packing if spec.packing is not None else kind == "text"


def check_chat_template(tokenizer: Any, spec: DatasetSpec) -> None:
    """Chat data needs a tokenizer that can render conversations."""
    if getattr(tokenizer, "chat_template", None):
        return
    raise ConfigError(
        "dataset.type",
        f"the data is chat (column {spec.messages_field!r}) but the model's tokenizer has no chat template",
        "use a chat/instruct model, add a chat_template to its tokenizer_config.json (or "
        "chat_template.jinja), or set dataset.type to text or prompt-completion",
    )


def alpaca_prompt(instruction: str, context: str | None) -> str:
    """The Alpaca prompt for one instruction (and its optional input)."""
    if context:
        return ALPACA_PROMPT.format(instruction=instruction, input=context)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def standard_row(row: Mapping[str, Any], spec: DatasetSpec, kind: str) -> dict[str, Any]:
    """A raw row in TRL's standard form for ``kind``: ``text``, ``messages`` or ``prompt``/``completion``."""
    if kind == "text":
        return {"text": str(row[spec.text_field])}
    if kind == "chat":
        return {"messages": _messages(row[spec.messages_field], spec)}
    if kind == "prompt-completion":
        prompt, completion = row[spec.prompt_field], row[spec.completion_field]
        if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt-completion
            return {"prompt": _messages(prompt, spec), "completion": _messages(completion, spec)}
        return {"prompt": str(prompt), "completion": str(completion)}
    context = row.get(spec.input_field)
    return {
        "prompt": alpaca_prompt(str(row[spec.instruction_field]), str(context) if context else None),
        "completion": str(row[spec.output_field]),
    }


def _messages(value: Any, spec: DatasetSpec) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in value
    ):
        raise ConfigError(
            "dataset.messagesField",
            f"column {spec.messages_field!r} must hold lists of {{role, content}} messages, got "
            f"{str(value)[:80]!r}",
            "convert the conversations to [{role: user|assistant|system, content: ...}, ...]",
        )
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


# --------------------------------------------------------------------------------------------- tokenising


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool = False) -> list:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def tokenize_row(example: Mapping[str, Any], tokenizer: Any, completion_only: bool) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` of one standard-form row; labels are -100 outside the completion(s)
    when ``completion_only`` (chat: every assistant turn is a completion)."""
    from trl.data_utils import common_prefix_length

    eos = tokenizer.eos_token_id
    if "messages" in example:
        messages = list(example["messages"])
        ids = _chat_ids(tokenizer, messages)
        mask = [0] * len(ids)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = common_prefix_length(_chat_ids(tokenizer, messages[:i], generation_prompt=True), ids)
            end = common_prefix_length(_chat_ids(tokenizer, messages[: i + 1]), ids)
            mask[start:end] = [1] * (end - start)
    elif "prompt" in example:
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):
            prompt_ids = _chat_ids(tokenizer, prompt, generation_prompt=True)
            ids = _chat_ids(tokenizer, [*prompt, *completion])
        else:
            prompt_ids = _text_ids(tokenizer, prompt)
            ids = _text_ids(tokenizer, prompt + completion)
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)  # the model learns where a completion ends
        start = common_prefix_length(prompt_ids, ids)
        mask = [0] * start + [1] * (len(ids) - start)
    else:
        ids = _text_ids(tokenizer, example["text"])
        mask = [1] * len(ids)
    if not completion_only:
        mask = [1] * len(ids)
    return {"input_ids": ids, "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]}
