"""Would a horizon prior help the classifiers? The committed adaptive recommendations of the classification
tasks, where no horizon step moved them, moved as ``lr ∝ steps^-β`` from the stage-2 trials' length to the
fine-tune's, scored on the committed runs.

    python benchmarks/horizon_prior_replay.py [--betas ...] [--no-write]

Reads the committed ``results/lr_quality.json``, ``results/lr_quality_heldout.json`` and the GPU
classifier's ``results/lr_quality_gpu_cls.json`` (and the task files, to tell the classifiers) and runs
nothing. The horizon step moves a recommendation only when the trials resolve the optimum's fall from stage
1 to stage 2 (``adaptive.fall_resolved``); on the MiniLM classifiers the 20-step stage-1 trials barely leave
chance, both stages' minima sit at the ceiling, and the fall is never seen. A fixed ``β`` in its place (β =
1: the fine-tune moves the weights as far as the trials' best, at a proportionally lower LR) is the idea
replayed here. Regret is interpolated per seed between that seed's own full-length runs, as
``recalibration_replay.py`` does; indicative only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results
from benchmarks.quality.scoring import TaskReport
from benchmarks.quality.store import CPU_RESULTS, CPU_TASKS, TASKS_FILE, committed_reports
from benchmarks.quality.task_setup import load_tasks
from benchmarks.recalibration_replay import row, seed_regret

TASK_FILES = (*CPU_TASKS, TASKS_FILE.with_name("tasks_gpu_cls.yaml"))
GPU_CLASSIFIER = "lr_quality_gpu_cls"
"""The one classifier that is not a MiniLM: a 0.36B Qwen2-shaped model, run on an H200."""


def classifiers() -> set[str]:
    """Names of the benchmark's sequence-classification tasks."""
    return {
        t["name"]
        for path in TASK_FILES
        for t in load_tasks(path)["tasks"]
        if t["trainer"].get("model", {}).get("task") == "sequence-classification"
    }


def moved(report: TaskReport, beta: float, classified: set[str]) -> list[tuple[int, float | None]]:
    """(seed, LR) of each adaptive recommendation, a classifier's moved by the prior when no horizon step
    moved it."""
    r = row(report, "adaptive")
    lrs = r.lrs or []
    notes = r.notes or [{}] * len(lrs)
    out: list[tuple[int, float | None]] = []
    for i, (lr, note) in enumerate(zip(lrs, notes, strict=True)):
        note = note or {}
        stage2 = max((t[2] for t in note.get("trials") or [] if t[0] == 2), default=0)
        unmoved = note.get("decidedBy") != "stage-2-horizon"
        if lr is not None and report.name in classified and unmoved and 0 < stage2 < report.steps:
            lr *= (report.steps / stage2) ** -beta
        out.append((r.seed(i), lr))
    return out


def scored(reports: Sequence[TaskReport], beta: float, classified: set[str]) -> tuple[int, int, float, int]:
    """(hits, task-seeds, mean regret/τ, task-seeds moved) with the prior ``beta``."""
    hits = n = changed = 0
    total = 0.0
    for report in reports:
        oracle, base = report.oracle, dict(moved(report, 0.0, classified))
        for seed, lr in moved(report, beta, classified):
            if seed not in oracle.seeds:
                continue
            regret = oracle.worst if lr is None else seed_regret(oracle, lr, seed)
            hits += oracle.hit(regret)
            total += regret / oracle.tau
            n += 1
            changed += lr != base[seed]
    return hits, n, total / max(n, 1), changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args(argv)
    classified = classifiers()
    inside, held = (committed_reports(name) for name in CPU_RESULTS)
    sets = {
        "in-sample": inside,
        "held out": held,
        "pooled": inside + held,
        "GPU classifier": committed_reports(GPU_CLASSIFIER),
    }
    rows = []
    for beta in args.betas:
        cells = []
        for reports in sets.values():
            hits, n, mean, changed = scored(reports, beta, classified)
            cells.append(f"{hits}/{n}, {mean:.2f} τ ({changed} moved)")
        rows.append([f"{beta:g}", *cells])
    body = "\n".join(
        [
            f"Classification tasks: {', '.join(sorted(classified))}. Regret interpolated per seed between "
            "that seed's own full-length runs (oracle grid and check runs), paired with its loss at the best "
            "LR; hits and mean regret/τ over every task-seed (causal LMs unchanged). β = 0 is the committed "
            "product. *GPU classifier*: the 0.36B Qwen2-shaped classifier run on one H200 "
            f"(`results/{GPU_CLASSIFIER}.json`, the task-seeds its 2-seed oracle scores), not in *pooled*. "
            "Indicative only.",
            "",
            table(["β", *sets], rows),
        ]
    )
    print(body)
    if not args.no_write:
        title = (
            "Horizon prior replay: classifier recommendations moved by steps^-β, scored on the committed runs"
        )
        print(f"wrote {write_results('horizon_prior_replay', title, body, argv)}")


if __name__ == "__main__":
    main()
