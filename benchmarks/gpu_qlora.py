"""QLoRA on a GPU through the product's own trainer: does the loss fall, how much memory, how fast.

    python benchmarks/gpu_qlora.py [--steps 60] [--out benchmarks/results/gpu_qlora.json]   # a CUDA GPU
    python benchmarks/gpu_qlora.py --tiny                                                   # CPU smoke run

Builds a ~0.5B Qwen2-style causal LM from a config (hidden 896, 24 layers, 14 heads / 2 KV heads,
intermediate 4864, Qwen2's 151,936-entry vocabulary; random init, no hub) with a byte-level BPE tokenizer
and ChatML chat template trained here (``finetune_trainer.tiny_model.build_chat_tokenizer``), saves it, writes
generated conversations (a ``messages`` column), then runs ``finetune_trainer.cli.main(["train", ...])``:
chat data with completion-only loss, packed to 512 tokens, QLoRA (4-bit NF4 base, bf16 compute, LoRA r=16
on every linear layer), gradient checkpointing, ``--steps`` optimiser steps.

Prints and writes JSON: the training loss at the first and last logged step (``lossFell``), the validation
loss, peak GPU memory (``torch.cuda.max_memory_allocated``), tokens/s (trained tokens between the first and
last logged step over their wall time; packed sequences' real lengths), and the versions. Exit 1 when the
loss did not fall. ``--tiny`` is the same path on CPU with a 2-layer model and plain LoRA (bitsandbytes
needs CUDA), so tests run it. Imports only what the trainer needs (torch, transformers, peft, datasets, trl,
bitsandbytes on the GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QWEN2_05B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
}
QWEN2_VOCAB = 151_936


def build_model(out: Path, tiny: bool) -> tuple[Path, int]:
    """Save the model and tokenizer to ``out``; returns (folder, parameter count)."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune_trainer.tiny_model import build_chat_tokenizer, chat_model_config

    torch.manual_seed(0)
    tokenizer = build_chat_tokenizer()
    if tiny:
        config = chat_model_config("qwen2", len(tokenizer), tokenizer)
    else:
        config = chat_model_config("qwen2", QWEN2_VOCAB, tokenizer, **QWEN2_05B)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if tiny else torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, params


def write_chats(path: Path, n: int) -> Path:
    from finetune_trainer.tiny_model import write_chat_dataset

    return write_chat_dataset(path, n=n, seed=1)


def trainer_config(model: Path, data: Path, out: Path, steps: int, tiny: bool) -> dict[str, Any]:
    return {
        "model": {"name": str(model), "dtype": "float32" if tiny else "bfloat16"},
        "dataset": {"files": [str(data)], "type": "chat", "packing": True, "validationFraction": 0.05},
        "adapter": {"type": "lora" if tiny else "qlora", "r": 16, "alpha": 32, "dropout": 0.0},
        "optimization": {
            "batchSize": 4 if tiny else 8,
            "maxSeqLength": 64 if tiny else 512,
            "maxSteps": steps,
            "precision": "fp32" if tiny else "bf16",
            "gradientCheckpointing": not tiny,
        },
        "learningRate": 3e-3 if tiny else 2e-4,
        "evaluation": {"everySteps": steps},
        "checkpoints": {"everySteps": steps, "keep": 2},
        "outputDir": str(out),
    }


class TimedLines(io.TextIOBase):
    """Collects the trainer's JSON progress lines."""

    def __init__(self) -> None:
        self.buffer, self.events = "", []

    def write(self, text: str) -> int:
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            if line.strip().startswith("{"):
                self.events.append(json.loads(line))
        return len(text)


def mean_tokens(config_file: Path) -> float:
    """Real tokens per training sequence after the trainer's own formatting and packing."""
    from finetune_trainer.data import prepare
    from finetune_trainer.modeling import load_tokenizer
    from finetune_trainer.settings import load_config

    cfg = load_config(config_file)
    data = prepare(cfg, load_tokenizer(cfg.model))
    return sum(len(ids) for ids in data.train["input_ids"]) / len(data.train)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "trl", "bitsandbytes"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[name] = md.version(name)
    return found


def run(steps: int, tiny: bool, workdir: Path) -> dict[str, Any]:
    import torch
    import yaml

    from finetune_trainer import cli

    cuda = torch.cuda.is_available()
    if not tiny and not cuda:
        raise SystemExit("no CUDA GPU: run with --tiny on CPU")
    model, params = build_model(workdir / "model", tiny)
    data = write_chats(workdir / "chats.jsonl", 400 if tiny else 3000)
    config_file = workdir / "train.yaml"
    config_file.write_text(yaml.safe_dump(trainer_config(model, data, workdir / "out", steps, tiny)))
    tokens_per_sequence = mean_tokens(config_file)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    lines = TimedLines()
    started = time.monotonic()
    with contextlib.redirect_stdout(lines):  # type: ignore[type-var]
        code = cli.main(
            [
                "train",
                "--config",
                str(config_file),
                "--result-file",
                str(workdir / "r.json"),
                "--metrics-port",
                "0",
            ]
        )
    wall = time.monotonic() - started
    result = json.loads((workdir / "r.json").read_text())
    steps_seen = [e for e in lines.events if e["event"] == "step" and "loss" in e]
    start = next((e for e in lines.events if e["event"] == "start"), {})
    first, last = (steps_seen[0], steps_seen[-1]) if steps_seen else ({}, {})
    batch = trainer_config(model, data, workdir, steps, tiny)["optimization"]["batchSize"]
    span = (last.get("t", 0) - first.get("t", 0)) if steps_seen else 0
    trained_steps = (last.get("step", 0) - first.get("step", 0)) if steps_seen else 0
    report = {
        "ok": code == 0,
        "exitCode": code,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "model": "qwen2 tiny" if tiny else "qwen2 ~0.5B (Qwen2-0.5B shape, random init)",
        "parameters": params,
        "adapter": "lora" if tiny else "qlora (4-bit nf4, bf16 compute)",
        "trainableParameters": start.get("trainableParameters"),
        "steps": result.get("steps"),
        "lossStart": first.get("loss"),
        "lossEnd": last.get("loss"),
        "lossFell": bool(steps_seen) and last["loss"] < first["loss"],
        "evalLoss": result.get("evalLoss"),
        "peakGpuMemoryBytes": torch.cuda.max_memory_allocated() if cuda else None,
        "peakGpuMemoryGiB": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "tokensPerSequence": round(tokens_per_sequence, 1),
        "tokensPerSecond": round(trained_steps * batch * tokens_per_sequence / span, 1) if span > 0 else None,
        "wallSeconds": round(wall, 1),
        "result": {
            k: result.get(k) for k in ("kind", "error", "finalModel", "bestCheckpoint", "lastCheckpoint")
        },
        "versions": versions(),
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default 60; --tiny 8)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny Qwen2, plain LoRA")
    parser.add_argument("--out", help="write the JSON report here too")
    parser.add_argument("--workdir", help="keep the model, data and output here (default: a temp dir)")
    args = parser.parse_args(argv)
    steps = args.steps or (8 if args.tiny else 60)
    with tempfile.TemporaryDirectory(prefix="gpu-qlora-") as scratch:
        workdir = Path(args.workdir) if args.workdir else Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run(steps, args.tiny, workdir)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0 if report["ok"] and report["lossFell"] else 1


if __name__ == "__main__":
    sys.exit(main())
