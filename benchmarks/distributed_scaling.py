"""Distributed scaling: samples/s of ``finetune-trainer train`` under torchrun, 1 against N processes.

    python benchmarks/distributed_scaling.py [--size small] [--steps 60] [--rounds 2] [--procs 1 2]
    python benchmarks/distributed_scaling.py --gpu-check [--size medium] [--steps 200]

CPU (default): the product's trainer as a pod runs it, ``torchrun --standalone --nproc-per-node=P
-m finetune_trainer train`` (a pod runs ``--no-python finetune-trainer``, the same program; DDP, gloo),
one intra-op thread per process, the same per-process
batch at every P (weak scaling: the global batch grows with P). The rate is read from rank 0's own
``step`` events between step ``--skip`` and the last (start-up, tokenising and the first steps excluded);
samples/s = steps/s x per-process batch x P; scaling efficiency = samples/s(P) / (P x samples/s(1)).
Medians over rounds, which alternate the order.

``--gpu-check`` (a CUDA GPU; issue 14): the same trainer under ``torchrun --nproc-per-node=1`` against a bare
torchrun loop (``--bare-worker``: DDP-wrapped model, fused AdamW, cosine schedule, clipping, bf16 autocast,
the trainer's own tokenised data), tokens/s of each; the goal is ours ≥ 0.97 x bare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine, median, table, write_results
from benchmarks.trainer_overhead import SIZES, build_model, config

GPU_GOAL = 0.97


def step_times(stdout: str) -> dict[int, float]:
    """Step -> time (s) from a run's ``step`` JSON lines (rank 0's; other ranks print none)."""
    times: dict[int, float] = {}
    for line in stdout.splitlines():
        if line.startswith("{") and '"step"' in line:
            record = json.loads(line)
            if record.get("event") == "step":
                times[int(record["step"])] = float(record["t"])
    return times


def steps_per_second(times: dict[int, float], skip: int) -> float:
    """Steps per second between step ``skip`` (or the first after it) and the last step seen."""
    steps = sorted(s for s in times if s >= skip)
    if len(steps) < 2 or times[steps[-1]] <= times[steps[0]]:
        raise ValueError(f"need two timed steps at or after {skip}, got {len(steps)}")
    return (steps[-1] - steps[0]) / (times[steps[-1]] - times[steps[0]])


def efficiency(samples_per_second: dict[int, float]) -> dict[int, float]:
    """Scaling efficiency per process count: samples/s(P) / (P x samples/s(1))."""
    one = samples_per_second[1]
    return {p: sps / (p * one) for p, sps in samples_per_second.items()}


def torchrun(procs: int, script: list[str]) -> list[str]:
    """torchrun as a module of this interpreter (a GPU machine's packages may come without scripts)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={procs}",
        *script,
    ]


def run(cmd: list[str], timeout: float) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} … exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def ours(procs: int, cfg_file: Path, out: Path, timeout: float) -> dict[int, float]:
    shutil.rmtree(out, ignore_errors=True)  # never resume from an earlier round
    script = ["-m", "finetune_trainer", "train", "--config", str(cfg_file), "--output-dir", str(out)]
    return step_times(
        run(torchrun(procs, [*script, "--metrics-port", "0", "--result-file", "/dev/null"]), timeout)
    )


def bare(cfg_file: Path, timeout: float) -> dict[int, float]:
    return step_times(
        run(torchrun(1, [str(Path(__file__).resolve()), "--bare-worker", str(cfg_file)]), timeout)
    )


def bare_worker(cfg_file: Path) -> int:
    """A plain DDP loop under torchrun on the trainer's own data: rank 0 prints ``step`` events."""
    import torch
    import torch.distributed as dist
    from transformers import get_scheduler

    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.modeling import load_model
    from finetune_trainer.runsetup import prepare_run

    cfg = TrainerConfig.model_validate(json.loads(cfg_file.read_text()))
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    plan = prepare_run(cfg, "train", 1e-4)
    model = load_model(cfg, plan.tokenizer).to(device)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if cuda else None)
    sampler = torch.utils.data.DistributedSampler(plan.data.train, seed=cfg.optimization.seed)
    loader = torch.utils.data.DataLoader(
        plan.data.train,
        batch_size=cfg.optimization.batch_size,
        sampler=sampler,
        collate_fn=plan.data.collator,
    )
    steps = cfg.optimization.max_steps or 1
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4, fused=cuda or None)
    sched = get_scheduler("cosine", opt, num_warmup_steps=math.ceil(0.1 * steps), num_training_steps=steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=plan.precision == "bf16")
    start, step, epoch = time.perf_counter(), 0, 0
    while step < steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss = ddp(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if cuda:
                torch.cuda.synchronize()
            if rank == 0:
                print(
                    json.dumps({"event": "step", "step": step, "t": time.perf_counter() - start}), flush=True
                )
            if step >= steps:
                break
        epoch += 1
    dist.destroy_process_group()
    return 0


def _setup(work: Path, size_name: str, steps: int, precision: str) -> Path:
    from finetune_trainer.tiny_model import write_dataset

    size = SIZES[size_name]
    model = build_model(work / "model", size)
    data = write_dataset(work / "data.jsonl", n=4000)
    cfg = config(model, data, work / "out", size, steps, precision)
    cfg_file = work / "config.json"
    cfg_file.write_text(json.dumps(cfg.to_wire()))
    return cfg_file


def cpu_scaling(args: argparse.Namespace, argv: list[str] | None) -> int:
    size = SIZES[args.size]
    rates: dict[int, list[float]] = {p: [] for p in args.procs}
    with tempfile.TemporaryDirectory(prefix="dist-scaling-") as tmp:
        cfg_file = _setup(Path(tmp), args.size, args.steps, "fp32")
        for r in range(args.rounds):
            order = args.procs if r % 2 == 0 else list(reversed(args.procs))
            for p in order:
                sps = steps_per_second(ours(p, cfg_file, Path(tmp) / f"out-{p}", args.timeout), args.skip)
                rates[p].append(sps * size["batch"] * p)
                print(f"round {r + 1}: {p} process(es): {rates[p][-1]:.1f} samples/s", flush=True)
    samples = {p: median(v) for p, v in rates.items()}
    eff = efficiency(samples) if 1 in samples else {}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [
        [p, samples[p], samples[p] * size["seq"], ", ".join(f"{x:.1f}" for x in rates[p]), eff.get(p)]
        for p in args.procs
    ]
    body = "\n".join(
        [
            "## Setup",
            "",
            f"GPT-2 from a config ({size['n_layer']} layers x {size['n_embd']}, random weights), "
            f"{size['batch']} sequences x {size['seq']} tokens per process and step, fp32, "
            f"{args.steps} steps, rate from step {args.skip} to the last, {args.rounds} alternating rounds; "
            "`torchrun --standalone --nproc-per-node=P -m finetune_trainer train` (DDP over gloo), "
            f"OMP_NUM_THREADS=1 per process; {os.cpu_count()} CPU cores, load at the end {load}.",
            "",
            "## Results",
            "",
            table(["processes", "samples/s (median)", "tokens/s", "per round", "scaling efficiency"], rows),
            "",
            "Scaling efficiency = samples/s(P) / (P x samples/s(1)); 1.0 is perfect weak scaling.",
            "",
            "**Read with care.** This machine has 2 cores shared with other work (the load above), so two "
            "processes compete with each other and with everything else for the same cores, and gloo's "
            "all-reduce over loopback is on the critical path of every step of a model this small. The "
            "figure measures that the distributed path works end to end and what it costs here; it says "
            "nothing about GPUs over NVLink or InfiniBand.",
        ]
    )
    path = write_results("distributed_scaling", "Distributed scaling (CPU, torchrun + gloo)", body, argv)
    data = {
        **machine(),
        "command": "python benchmarks/distributed_scaling.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "size": args.size,
        "steps": args.steps,
        "skip": args.skip,
        "rounds": args.rounds,
        "per_process_batch": size["batch"],
        "seq": size["seq"],
        "samples_per_second": {str(p): rates[p] for p in args.procs},
        "median_samples_per_second": {str(p): samples[p] for p in args.procs},
        "scaling_efficiency": {str(p): e for p, e in eff.items()},
        "load_at_end": load,
    }
    (RESULTS / "distributed_scaling.json").write_text(json.dumps(data, indent=1) + "\n")
    print(path.read_text())
    return 0


def gpu_check(args: argparse.Namespace, out_file: Path | None) -> int:
    size = SIZES[args.size]
    tokens = size["batch"] * size["seq"]
    rates: dict[str, list[float]] = {"ours": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="dist-gpu-") as tmp:
        cfg_file = _setup(Path(tmp), args.size, args.steps, "bf16")
        for r in range(args.rounds):
            for name in ("ours", "bare") if r % 2 == 0 else ("bare", "ours"):
                times = (
                    ours(1, cfg_file, Path(tmp) / "out", args.timeout)
                    if name == "ours"
                    else bare(cfg_file, args.timeout)
                )
                rates[name].append(steps_per_second(times, args.skip) * tokens)
                print(f"round {r + 1}: {name}: {rates[name][-1]:.0f} tokens/s", flush=True)
    ratio = median(rates["ours"]) / median(rates["bare"])
    result = {
        "check": "torchrun-1gpu",
        "size": args.size,
        "steps": args.steps,
        "tokens_per_second": rates,
        "ratio": ratio,
        "goal": GPU_GOAL,
        "passed": ratio >= GPU_GOAL,
    }
    print(json.dumps(result, indent=1))
    if out_file:
        out_file.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size", choices=sorted(SIZES), default=None, help="model size (CPU small, GPU medium)"
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per run (CPU 60, GPU 200)")
    parser.add_argument("--skip", type=int, default=10, help="steps excluded from the rate")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (CPU)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--gpu-check", action="store_true", help="1 GPU: ours vs a bare torchrun loop, bf16")
    parser.add_argument("--out", type=Path, help="--gpu-check: write the result JSON here")
    parser.add_argument("--bare-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_worker:
        return bare_worker(args.bare_worker)
    if args.gpu_check:
        args.size, args.steps = args.size or "medium", args.steps or 200
        return gpu_check(args, args.out)
    args.size, args.steps = args.size or "small", args.steps or 60
    return cpu_scaling(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
