"""Tiny random-weight models and a toy dataset, for examples and tests that must run on a CPU in seconds.

    python -m finetune_trainer.tiny_model [OUTDIR] [--arch gpt2|bert]   # default /tmp/finetune-tiny/gpt2
    python -m finetune_trainer.tiny_model --data FILE [--lines 400]    # regenerate the toy dataset
    python -m finetune_trainer.tiny_model OUTDIR --chat [--arch gpt2|qwen2]  # a chat model (ChatML template)
    python -m finetune_trainer.tiny_model --chat-data FILE [--lines 400]     # toy conversations (messages)

The tokenizer is a word-level ``tokenizers`` tokenizer over the toy dataset's fixed vocabulary, so nothing
is downloaded. The chat model's tokenizer is a small byte-level BPE trained here on the toy conversations
(every string is encodable) with ChatML special tokens and a ChatML chat template saved beside it.
The toy sentences are templated ("the happy dog likes the red ball .") with a sentiment
label, so a causal LM can learn their structure and a classifier can learn the label.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

DEFAULT_DIR = "/tmp/finetune-tiny/gpt2"

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "a child", "the farmer", "our team"]
VERBS = ["likes", "sees", "finds", "wants", "paints", "builds", "carries", "watches"]
POSITIVE = ["happy", "bright", "lovely", "great", "kind", "warm"]
NEGATIVE = ["sad", "broken", "awful", "cold", "dirty", "angry"]
OBJECTS = ["ball", "house", "garden", "river", "book", "song", "tree", "car"]
ENDINGS = ["today", "again", "every day", "at night", "in the morning", "with joy"]
SPECIALS = ["[PAD]", "[UNK]", "[EOS]", "[CLS]", "[SEP]", "[MASK]"]


def vocabulary() -> list[str]:
    """Every word the toy sentences use, specials first (ids are stable across runs)."""
    words: list[str] = []
    for group in (SUBJECTS, VERBS, POSITIVE, NEGATIVE, OBJECTS, ENDINGS, ["."]):
        for phrase in group:
            for word in phrase.split():
                if word not in words:
                    words.append(word)
    return SPECIALS + words


def toy_sentences(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` sentences with a ``label`` of ``positive``/``negative`` decided by the adjective."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        subject, verb = rng.choice(SUBJECTS), rng.choice(VERBS)
        text = f"{subject} {verb} the {adjective} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)} ."
        rows.append({"text": text, "label": "positive" if positive else "negative"})
    return rows


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSONL (one object a line), creating the folder."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def write_dataset(path: str | Path, n: int = 400, seed: int = 0) -> Path:
    """Write the toy dataset as JSONL."""
    return write_jsonl(path, toy_sentences(n, seed))


def build_tokenizer():  # type: ignore[no-untyped-def]
    """A word-level fast tokenizer over :func:`vocabulary` (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A", special_tokens=[("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="[EOS]",
        bos_token="[EOS]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def build_model_dir(out_dir: str | Path, arch: str = "gpt2", seed: int = 0) -> Path:
    """Save a tiny random-weight model (``gpt2``: causal LM; ``bert``: encoder) and its tokenizer."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, BertConfig, GPT2Config

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    size = len(tokenizer)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=size,
            n_positions=128,
            n_embd=64,
            n_layer=2,
            n_head=2,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = AutoModelForCausalLM.from_config(config)
    elif arch == "bert":
        config = BertConfig(
            vocab_size=size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = AutoModel.from_config(config)
    else:
        raise ValueError(f"arch must be gpt2 or bert, got {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML, as Qwen's chat models use it."""
CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def toy_chats(n: int, seed: int = 0) -> list[dict[str, list[dict[str, str]]]]:
    """``n`` conversations: the user names a subject and an object, the assistant makes a sentence of them
    (learnable: the answer repeats the prompt's words). Every fifth one has a system message."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        subject, thing = rng.choice(SUBJECTS), rng.choice(OBJECTS)
        adjective = rng.choice(POSITIVE + NEGATIVE)
        messages = [{"role": "system", "content": "answer in one sentence ."}] if i % 5 == 0 else []
        messages += [
            {"role": "user", "content": f"tell me about {subject} and the {thing} ."},
            {"role": "assistant", "content": f"{subject} {rng.choice(VERBS)} the {adjective} {thing} ."},
        ]
        rows.append({"messages": messages})
    return rows


def write_chat_dataset(path: str | Path, n: int = 400, seed: int = 0) -> Path:
    """Write the toy conversations as JSONL (one ``messages`` list per line)."""
    return write_jsonl(path, toy_chats(n, seed))


def build_chat_tokenizer(vocab_size: int = 512):  # type: ignore[no-untyped-def]
    """A byte-level BPE over the toy conversations, with ChatML specials and chat template (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CHAT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [m["content"] for row in toy_chats(400) for m in row["messages"]]
    corpus += [r["text"] for r in toy_sentences(400)] + ["user", "assistant", "system"]
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def chat_model_config(arch: str, vocab_size: int, tokenizer: object, **size: int):  # type: ignore[no-untyped-def]
    """A tiny causal-LM config (``gpt2`` or ``qwen2``) for the chat tokenizer; ``size`` overrides widths."""
    from transformers import GPT2Config, Qwen2Config

    ids = {
        "eos_token_id": tokenizer.eos_token_id,  # type: ignore[attr-defined]
        "pad_token_id": tokenizer.pad_token_id,  # type: ignore[attr-defined]
        "bos_token_id": tokenizer.eos_token_id,  # type: ignore[attr-defined]
    }
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=256, n_embd=64, n_layer=2, n_head=2, **ids)
    if arch == "qwen2":
        defaults = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
        }
        return Qwen2Config(vocab_size=vocab_size, tie_word_embeddings=True, **(defaults | size), **ids)
    raise ValueError(f"arch must be gpt2 or qwen2, got {arch!r}")


def build_chat_model_dir(out_dir: str | Path, arch: str = "gpt2", seed: int = 0) -> Path:
    """Save a tiny random-weight chat causal LM with its BPE tokenizer and ChatML chat template."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_chat_tokenizer()
    model = AutoModelForCausalLM.from_config(chat_model_config(arch, len(tokenizer), tokenizer))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_trainer.tiny_model", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "out_dir", nargs="?", default=DEFAULT_DIR, help=f"model directory (default {DEFAULT_DIR})"
    )
    parser.add_argument(
        "--arch", choices=["gpt2", "bert", "qwen2"], default="gpt2", help="gpt2/qwen2 (causal LM) or bert"
    )
    parser.add_argument("--chat", action="store_true", help="a chat model: BPE tokenizer + chat template")
    parser.add_argument("--data", help="write the toy dataset (JSONL) here instead of building a model")
    parser.add_argument("--chat-data", help="write toy conversations (JSONL, `messages`) here instead")
    parser.add_argument("--lines", type=int, default=400, help="toy dataset size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.data:
        print(write_dataset(args.data, args.lines, args.seed))
    elif args.chat_data:
        print(write_chat_dataset(args.chat_data, args.lines, args.seed))
    elif args.chat or args.arch == "qwen2":
        print(build_chat_model_dir(args.out_dir, "qwen2" if args.arch == "qwen2" else "gpt2", args.seed))
    else:
        print(build_model_dir(args.out_dir, args.arch, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
