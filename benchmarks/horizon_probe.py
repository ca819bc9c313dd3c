"""How does a task's best learning rate move with the trial length? (the short-horizon bias, measured)

The adaptive recommender judges 20- and 40-step trials and extends a fall of their minimum to the
fine-tune's length (``adaptive.at_horizon``). This probe runs the product's own ``trial`` at several lengths
and learning rates of one ``lr_quality`` task, so the drift the recommender has to predict is visible: on
``minilm-noisy-long`` (4 passes over 240 examples, 20% flipped labels) the optimum falls steeply once a run
makes more than one pass, which 20-40-step trials cannot see.

    python benchmarks/horizon_probe.py                      # minilm-noisy-long, seeds 0 1, 40/60/80/120 steps
    python benchmarks/horizon_probe.py --task gpt2-wide-full --tasks benchmarks/tasks_heldout.yaml \
        --lrs 1.6e-3 3.2e-3 6.3e-3 1.3e-2 --steps 20 40 80 120
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, table, write_results
from benchmarks.quality.execution import Runner
from benchmarks.quality.store import TASKS_FILE
from benchmarks.quality.task_setup import build_task, load_tasks, named_task

DEFAULT_TASK = "minilm-noisy-long"
NOISY_LRS = [2.08e-5, 3.38e-5, 5.48e-5, 8.89e-5, 1.44e-4]
"""Five of ``minilm-noisy-long``'s oracle learning rates, around its 120-step optimum (3.4e-5): the
default ``--lrs`` for that task; another task's default is its own oracle grid."""


def best_by_length(
    losses: dict[tuple[int, float], float | None], steps: list[int], lrs: list[float]
) -> dict[int, float | None]:
    """Per trial length, the learning rate with the lowest loss (``None`` where every trial failed)."""
    out: dict[int, float | None] = {}
    for n in steps:
        finite = [(lr, losses[(n, lr)]) for lr in lrs if losses.get((n, lr)) is not None]
        out[n] = min(finite, key=lambda p: p[1])[0] if finite else None  # type: ignore[arg-type,return-value]
    return out


def drift(best: dict[int, float | None]) -> list[tuple[int, int, float | None]]:
    """``β`` in ``lr* ∝ steps^-β`` between consecutive lengths (``None`` where a minimum is missing).
    Signed, unlike ``adaptive.horizon_exponent``, which clamps a rising optimum to 0 because it never
    extends one: the probe reports what it measured."""
    lengths = sorted(best)
    pairs = []
    for a, b in itertools.pairwise(lengths):
        la, lb = best[a], best[b]
        beta = math.log10(la / lb) / math.log10(b / a) if la and lb else None
        pairs.append((a, b, beta))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tasks", type=Path, default=TASKS_FILE, help="task definitions (YAML)")
    parser.add_argument("--task", default=DEFAULT_TASK, help="the task's name in --tasks")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, nargs="+", default=[40, 60, 80, 120], help="trial lengths")
    parser.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        help=f"learning rates (default: {DEFAULT_TASK}'s five, else the oracle's)",
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-write", action="store_true", help="print only, do not write results/")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = load_tasks(args.tasks)
    chosen = named_task(spec, args.task, args.tasks)
    task = build_task(chosen, spec["oracle"])
    chosen_lrs = args.lrs or (NOISY_LRS if task.name == DEFAULT_TASK else task.oracle_lrs)
    steps, lrs = sorted(set(args.steps)), sorted(set(chosen_lrs))
    started = time.monotonic()
    runner = Runner(max(1, args.workers))
    losses: dict[int, dict[tuple[int, float], float | None]] = {s: {} for s in args.seeds}
    with tempfile.TemporaryDirectory(prefix="horizon-") as scratch:
        job = {"kind": "trial", "config": str(task.config_path), "scratch": scratch}
        for seed, n, lr in itertools.product(args.seeds, steps, lrs):
            runner.submit(job | {"seed": seed, "steps": n, "lr": lr})
        for done, res in runner.drain():
            losses[done["seed"]][(done["steps"], done["lr"])] = res.get("loss")
            where = f"seed {done['seed']} {done['steps']:>4} steps lr {done['lr']:.3g}"
            print(f"{where}: {res.get('error') or fmt(res.get('loss'))}")
    runner.close()
    seconds = time.monotonic() - started
    parts = [
        f"Task `{task.name}` (fine-tune {task.steps} steps): {task.description}.",
        "",
        f"Each cell is the validation loss of the product's `trial` (warmup + decay over the trial's length) "
        f"at that length and learning rate. {len(args.seeds) * len(steps) * len(lrs)} trials, "
        f"{seconds:.0f} s wall on {max(1, args.workers)} workers.",
    ]
    for seed in args.seeds:
        best = best_by_length(losses[seed], steps, lrs)
        rows = [[lr, *(losses[seed].get((n, lr)) for n in steps)] for lr in lrs]
        rows.append(["**best LR**", *(best[n] for n in steps)])
        parts += ["", f"### seed {seed}", "", table(["LR", *(f"{n} steps" for n in steps)], rows)]
        parts += [
            "",
            "Drift of the best LR: "
            + "; ".join(f"{a}→{b} steps β = {fmt(beta)}" for a, b, beta in drift(best))
            + ".",
        ]
    body = "\n".join(parts)
    print(body)
    if not args.no_write:
        print(f"wrote {write(args.task, body, argv)}", file=sys.stderr)
    return 0


def write(task: str, body: str, argv: list[str] | None) -> Path:
    """``results/horizon_probe.md`` for the default task, ``horizon_probe_<task>.md`` for another; its
    command line names this script either way."""
    name = "horizon_probe" + ("" if task == DEFAULT_TASK else f"_{task}")
    return write_results(name, "Best LR against trial length", body, argv, script="horizon_probe")


if __name__ == "__main__":
    raise SystemExit(main())
