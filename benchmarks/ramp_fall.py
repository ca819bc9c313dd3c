"""Does each range test's loss fall from its start before an adaptive ramp stops, and where does it stop?

    python benchmarks/ramp_fall.py [--tasks FILE ...] [--seeds 0 1 2] [--workers N] [--jobs DIR] [--no-write]

A ramp whose smoothed loss has not fallen from its start by more than the noise floor has no loss minimum
and no divergence edge (``adaptive.fell``): the adaptive stop waits for a fall, and a rise above the start
is not read as divergence. This runs every task-seed's full ramp (``lr_quality``'s ``range-test`` job: the
product's ``finetune-trainer range-test``, until the loss diverged) for the task files given, or reads the
ramps that ``lr_quality.py`` journalled in a job cache (``--jobs``, e.g. a GPU run's unpacked
``lr_quality_cache.tgz``), and reports for each its start, lowest point and fall, and the steps, edge and
loss minimum of the adaptive ramp cut from it. A ramp whose fall clears the floor before the cut is read
as it was before the floor existed. ~4 min on 2 cores for both CPU task files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results
from benchmarks.quality import execution, store, task_setup
from benchmarks.ramp_stop_replay import planned_end, ramps
from finetune_trainer.adaptive import (
    NOISE_FLOOR,
    PAST_MINIMUM,
    basin_minimum,
    divergence_edge,
    fell,
    start_fall,
    stop_step,
)

DEFAULT_TASKS = list(store.CPU_TASKS)
"""The CPU task files, in-sample and held out."""

Ramp = tuple[str, int | None, list[float], list[float], float]
"""(task, seed, LRs, smoothed losses, where the ramp was planned to end: ``ramp_stop_replay.planned_end``)."""


def run_ramps(files: list[Path], seeds: list[int], workers: int) -> list[Ramp]:
    """Every task-seed's full ramp, run with the benchmark's own ``range-test`` job on its ``Runner``
    (spawned workers: a task built on a GPU leaves CUDA set up in this process, which a fork cannot use),
    in task-file and seed order."""
    scratch = tempfile.mkdtemp(prefix="ramp-fall-")
    runner = execution.Runner(workers)
    submitted = 0
    for path in files:
        spec = task_setup.load_tasks(path)
        for t in spec["tasks"]:
            task = task_setup.build_task(t, spec["oracle"])
            for seed in seeds:
                config = str(task.config_path)
                job = {"kind": "range-test", "seed": seed, "config": config, "scratch": scratch}
                runner.submit({**job, "task": t["name"], "order": submitted})
                submitted += 1
    found: list[tuple[int, Ramp]] = []
    for job, res in runner.drain():
        if "error" in res:
            raise SystemExit(f"{job['task']} seed {job['seed']}: {res['error']}")
        lrs, losses = res["curve"]
        found.append((job["order"], (job["task"], job["seed"], lrs, losses, planned_end(res))))
    runner.close()
    return [ramp for _, ramp in sorted(found, key=lambda f: f[0])]


def results_name(files: list[Path], journal: bool) -> str:
    """``ramp_fall`` for the CPU task files (the default) or a journal; else named by the task files, as
    ``lr_quality``'s results are (``tasks_gpu.yaml`` → ``ramp_fall_gpu``)."""
    cpu = {p.resolve() for p in DEFAULT_TASKS}
    if journal or {p.resolve() for p in files} <= cpu:
        return "ramp_fall"
    return "ramp_fall_" + "_".join(p.stem.removeprefix("tasks").strip("_") or "cpu" for p in files)


def journalled_ramps(folder: Path) -> list[Ramp]:
    """The ``range-test`` rows that ``lr_quality.py`` journalled in ``folder`` (its ``jobs`` cache)."""
    return [(task, None, lrs, losses, end) for task, lrs, losses, end in ramps(folder)]


def read(lrs: list[float], losses: list[float], end: float) -> dict[str, Any]:
    """One ramp's fall from its start, and the adaptive ramp cut from it: its steps, edge and minimum, and
    the least fall on any prefix that may end it (from ``end``, where it was planned to end, to the cut).
    Where that least fall clears the noise floor, the ramp is read as it was before ``adaptive.fell``: the
    stop, edge and minimum only ever look at such prefixes."""
    stop = stop_step(lrs, losses, end, PAST_MINIMUM)
    cut = stop or len(lrs)
    first = next((k for k in range(1, cut + 1) if lrs[k - 1] >= end * (1 - 1e-9)), cut)
    prefixes = [losses[:k] for k in range(first, cut + 1)]
    return {
        "steps": len(lrs),
        "fall": start_fall(losses),
        "cut": stop,
        "least": min(start_fall(p) for p in prefixes),
        "cleared": all(fell(p) for p in prefixes),
        "edge": divergence_edge(lrs[:cut], losses[:cut], stopped_early=stop is None),
        "minimum": basin_minimum(lrs[:cut], losses[:cut]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=Path, nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=Path, help="read journalled ramps from this job cache instead")
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args(argv)
    found = journalled_ramps(args.jobs) if args.jobs else run_ramps(args.tasks, args.seeds, args.workers)
    if not found:
        raise SystemExit(f"no range-test ramps in {args.jobs}")
    rows, reads = [], []
    for task, seed, lrs, losses, end in found:
        r = read(lrs, losses, end)
        reads.append(r)
        rows.append(
            [
                task,
                "-" if seed is None else seed,
                r["steps"],
                f"{r['fall']:.1%}",
                r["cut"] or "-",
                f"{r['least']:.1%}" if r["cleared"] else f"**{r['least']:.1%}**",
                r["edge"],
                r["minimum"],
            ]
        )
    headers = [
        "task",
        "seed",
        "full ramp",
        "fall",
        "adaptive stop",
        "least fall before it",
        "edge",
        "minimum",
    ]
    unfallen = sum(not r["cleared"] for r in reads)
    body = "\n".join(
        [
            "Each row is one full `range-test` ramp (run until the loss diverged). *Fall*: its lowest "
            "smoothed loss below its start, both past the start-up. *Adaptive stop*: the step at which an "
            "adaptive sweep's ramp (the same ramp, cut `PAST_MINIMUM` decades past its minimum) stops. "
            "*Least fall before it*: the smallest fall on any prefix from the planned end to that stop, the "
            "only prefixes the stop, edge and minimum read; in bold where under the noise floor "
            f"({NOISE_FLOOR:.1%}), where `adaptive.fell` changes how the ramp is read. *Edge*, *minimum*: "
            "what the sweep reads.",
            "",
            table(headers, rows),
            "",
            f"{len(found)} ramps; falls {min(r['fall'] for r in reads):.1%} to "
            f"{max(r['fall'] for r in reads):.1%}; least falls before the stop from "
            f"{min(r['least'] for r in reads):.1%}; {unfallen} read differently since `adaptive.fell`.",
        ]
    )
    print(body)
    if not args.no_write:
        title = "Range-test falls: does each ramp's loss fall from its start before an adaptive ramp stops?"
        name = results_name(args.tasks, journal=args.jobs is not None)
        print(f"wrote {write_results(name, title, body, argv, script='ramp_fall')}")


if __name__ == "__main__":
    main()
