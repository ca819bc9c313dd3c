"""Tiny random-weight models and a toy dataset, for examples and tests that must run on a CPU in seconds.

    python -m finetune_trainer.tiny_model [OUTDIR] [--arch gpt2|bert]   # default /tmp/finetune-tiny/gpt2
    python -m finetune_trainer.tiny_model --data FILE [--lines 400]    # regenerate the toy dataset

The tokenizer is a word-level ``tokenizers`` tokenizer over the toy dataset's fixed vocabulary, so nothing
is downloaded. The toy sentences are templated ("the happy dog likes the red ball .") with a sentiment
label, so a causal LM can learn their structure and a classifier can learn the label.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

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


def write_dataset(path: str | Path, n: int = 400, seed: int = 0) -> Path:
    """Write the toy dataset as JSONL."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in toy_sentences(n, seed)))
    return out


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_trainer.tiny_model", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "out_dir", nargs="?", default=DEFAULT_DIR, help=f"model directory (default {DEFAULT_DIR})"
    )
    parser.add_argument("--arch", choices=["gpt2", "bert"], default="gpt2", help="gpt2 (causal LM) or bert")
    parser.add_argument("--data", help="write the toy dataset (JSONL) here instead of building a model")
    parser.add_argument("--lines", type=int, default=400, help="toy dataset size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.data:
        print(write_dataset(args.data, args.lines, args.seed))
    else:
        print(build_model_dir(args.out_dir, args.arch, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
