"""Trainer overhead: steps/s of ``finetune-trainer train`` vs plain ``transformers.Trainer`` vs bare PyTorch.

    python benchmarks/trainer_overhead.py [--steps 60] [--rounds 3] [--size small|medium]

One process, one model (a GPT-2 built from a config; random weights), one tokenised dataset (the trainer's
own ``prepare``), one batch size, fp32 (bf16 on a CUDA GPU), AdamW + warmup/cosine + clipping in all:

* **ours** — ``finetune_trainer.training.run_train`` exactly as the CLI calls it (progress JSON lines,
  divergence/stop callbacks, logging every step at this length; no eval, no checkpoints);
* **hf** — ``transformers.Trainer`` with the same ``TrainingArguments`` essentials, otherwise its defaults
  (default logging; its default optimizer, ``adamw_torch_fused``, which ours uses too);
* **bare-fused** — a ``DataLoader`` + ``AdamW(fused=True)`` + ``get_scheduler`` loop: the same optimizer
  kernels as the two above, so the ratio to it is the wrappers' overhead alone;
* **bare** — the same loop with ``torch.optim.AdamW``'s default implementation (what a hand-written loop
  usually gets).

Rounds alternate the order; the rate is measured between step ``--skip`` and the last step (start-up,
tokenising and the first steps are excluded). Medians over rounds; ratio = ours / reference.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, table, write_results

SIZES = {
    "tiny": {"n_embd": 64, "n_layer": 2, "n_head": 2, "seq": 32, "batch": 8},
    "small": {"n_embd": 256, "n_layer": 4, "n_head": 4, "seq": 128, "batch": 8},
    "medium": {"n_embd": 512, "n_layer": 8, "n_head": 8, "seq": 256, "batch": 8},
}


def rate(times: dict[int, float], skip: int) -> float:
    """Steps per second between step ``skip`` (or the first step after it) and the last step seen."""
    steps = sorted(s for s in times if s >= skip)
    if len(steps) < 2:
        raise ValueError(f"need at least two timed steps at or after {skip}, got {len(steps)}")
    first, last = steps[0], steps[-1]
    return (last - first) / (times[last] - times[first])


class StepClock(io.TextIOBase):
    """A stream for ``Progress``: timestamps every ``step`` event as it is written."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def write(self, text: str) -> int:
        now = time.perf_counter()
        for line in text.splitlines():
            if '"step"' in line:
                record = json.loads(line)
                if record.get("event") == "step":
                    self.times[int(record["step"])] = now
        return len(text)


def build_model(out: Path, size: dict[str, int]) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from finetune_trainer.tiny_model import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = size["seq"]
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=size["seq"],
        n_embd=size["n_embd"],
        n_layer=size["n_layer"],
        n_head=size["n_head"],
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def config(model: Path, data: Path, out: Path, size: dict[str, int], steps: int, precision: str) -> Any:
    from finetune_trainer.config import TrainerConfig

    return TrainerConfig.model_validate(
        {
            "model": {"name": str(model), "task": "causal-lm"},
            "dataset": {"files": [str(data)], "validationFraction": 0.0},
            "optimization": {
                "batchSize": size["batch"],
                "maxSeqLength": size["seq"],
                "maxSteps": steps,
                "precision": precision,
            },
            "schedule": {"type": "cosine", "warmupRatio": 0.1},
            "checkpoints": {"everySteps": steps * 10, "saveFinalModel": False},
            "learningRate": 1e-4,
            "outputDir": str(out),
        }
    )


def run_ours(cfg: Any) -> dict[int, float]:
    import shutil

    from finetune_trainer.report import Progress
    from finetune_trainer.training import run_train

    shutil.rmtree(cfg.output_dir, ignore_errors=True)  # never resume from a previous round
    clock = StepClock()
    run_train(cfg, 1e-4, Progress(clock), None)
    return clock.times


def run_hf(cfg: Any) -> dict[int, float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from finetune_trainer.modeling import load_model
    from finetune_trainer.runsetup import prepare_run

    plan = prepare_run(cfg, "train", 1e-4)
    model = load_model(cfg, plan.tokenizer)
    times: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times[state.global_step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=cfg.optimization.batch_size,
            learning_rate=1e-4,
            max_steps=cfg.optimization.max_steps,
            lr_scheduler_type="cosine",
            warmup_steps=math.ceil(0.1 * cfg.optimization.max_steps),
            max_grad_norm=1.0,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            bf16=plan.precision == "bf16",
            use_cpu=plan.precision == "fp32" and not _cuda(),
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=cfg.optimization.seed,
        )
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=plan.data.collator,
            train_dataset=plan.data.train,
            callbacks=[Clock()],
        )
        trainer.train()
    return times


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_bare(cfg: Any, fused: bool = False) -> dict[int, float]:
    import torch
    from transformers import get_scheduler

    from finetune_trainer.modeling import load_model
    from finetune_trainer.runsetup import prepare_run

    plan = prepare_run(cfg, "train", 1e-4)
    device = "cuda" if _cuda() else "cpu"
    model = load_model(cfg, plan.tokenizer).to(device)
    model.train()
    torch.manual_seed(cfg.optimization.seed)
    loader = torch.utils.data.DataLoader(
        plan.data.train, batch_size=cfg.optimization.batch_size, shuffle=True, collate_fn=plan.data.collator
    )
    steps = cfg.optimization.max_steps
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    sched = get_scheduler("cosine", opt, num_warmup_steps=math.ceil(0.1 * steps), num_training_steps=steps)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=plan.precision == "bf16")
    times: dict[int, float] = {}
    step = 0
    while step < steps:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if device == "cuda":
                torch.cuda.synchronize()
            times[step] = time.perf_counter()
            if step >= steps:
                break
    return times


def run_bare_fused(cfg: Any) -> dict[int, float]:
    return run_bare(cfg, fused=True)


RUNNERS = {"ours": run_ours, "hf": run_hf, "bare-fused": run_bare_fused, "bare": run_bare}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians over these)")
    parser.add_argument("--skip", type=int, default=10, help="steps excluded from the rate (warm-up)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="model/sequence size")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from finetune_trainer.tiny_model import write_dataset

    transformers.logging.set_verbosity_error()
    size = SIZES[args.size]
    precision = "bf16" if _cuda() else "fp32"
    work = Path(tempfile.mkdtemp(prefix="trainer-overhead-"))
    data = write_dataset(work / "toy.jsonl", n=4000, seed=0)
    model = build_model(work / "model", size)
    cfg = config(model, data, work / "out", size, args.steps, precision)
    rates: dict[str, list[float]] = {name: [] for name in RUNNERS}
    order = list(RUNNERS)
    for r in range(args.rounds):
        first = r % len(order)
        for name in order[first:] + order[:first]:  # rotate who goes first
            value = rate(RUNNERS[name](cfg), args.skip)
            rates[name].append(value)
            print(f"round {r + 1}: {name:10s} {value:.3f} steps/s", file=sys.stderr, flush=True)
    med = {name: median(v) for name, v in rates.items()}
    tokens = size["batch"] * size["seq"]
    rows = [
        [
            name,
            med[name],
            med[name] * tokens,
            ", ".join(f"{x:.3f}" for x in rates[name]),
            med["ours"] / med[name],
        ]
        for name in RUNNERS
    ]
    import torch

    device = torch.cuda.get_device_name(0) if _cuda() else f"CPU ({torch.get_num_threads()} threads)"
    body = "\n".join(
        [
            "## Setup",
            "",
            f"GPT-2 from a config ({size['n_layer']} layers x {size['n_embd']}, random weights), batch "
            f"{size['batch']} x {size['seq']} tokens, {precision}, {args.steps} steps per run, "
            f"rate from step {args.skip} to the last, {args.rounds} alternating rounds, device {device}.",
            "",
            "## Results",
            "",
            table(["path", "steps/s (median)", "tokens/s", "per round", "ours / this"], rows),
            "",
            f"**ours / plain Trainer = {med['ours'] / med['hf']:.3f}x; ours / bare loop, same fused AdamW = "
            f"{med['ours'] / med['bare-fused']:.3f}x; ours / bare loop, default AdamW = "
            f"{med['ours'] / med['bare']:.3f}x** (goal ≥ 0.97x).",
        ]
    )
    print(body)
    if not args.no_write:
        path = write_results("trainer_overhead", "Trainer overhead", body, argv)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
