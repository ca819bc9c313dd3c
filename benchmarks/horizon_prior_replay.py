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

A second table asks the converse: the four targets, in-sample and held out pooled, with every recommendation
that the horizon step moved put back where the stage-2 parabola put it (refitted from the trials the result
records, as ``next_step`` fits them). There a moved LR has no full-length run of its own and its regret is
interpolated; every other task-seed keeps its measured regret.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results
from benchmarks.quality.scoring import TaskReport
from benchmarks.quality.store import CPU_RESULTS, CPU_TASKS, TASKS_FILE, committed_reports
from benchmarks.quality.task_setup import load_tasks
from benchmarks.quality.verdicts import check_targets, totals
from benchmarks.recalibration_replay import row, seed_regret
from finetune_trainer.adaptive import fit_parabola, vertex
from finetune_trainer.adaptive.decide import FIT_NEIGHBOURS, neighbourhood

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


def horizon_undone(report: TaskReport) -> tuple[TaskReport, int]:
    """``report`` with each adaptive recommendation that the horizon step moved (``stage-2-horizon``) put
    back at the stage-2 parabola's minimum it moved from, and how many it put back."""
    rows, undone = [], 0
    for r in report.rows:
        if r.name == "adaptive" and r.lrs and r.notes:
            lrs = list(r.lrs)
            for i, note in enumerate(r.notes):
                if (note or {}).get("decidedBy") != "stage-2-horizon":
                    continue
                stage2 = [(lr, loss) for stage, lr, _, loss in note["trials"] if stage == 2 and _finite(loss)]
                fit = fit_parabola(neighbourhood(stage2, FIT_NEIGHBOURS))
                if fit is not None and (lr := vertex(fit)) is not None:
                    lrs[i], undone = lr, undone + 1
            r = dataclasses.replace(r, lrs=lrs)
        rows.append(r)
    return dataclasses.replace(report, rows=rows), undone


def _finite(loss: float | None) -> bool:
    return loss is not None and math.isfinite(loss)


def undone_table(reports: Sequence[TaskReport]) -> str:
    """The default's four targets over ``reports`` as committed and with the horizon step undone."""
    undone = [horizon_undone(r) for r in reports]
    committed = check_targets(totals(reports))
    put_back = check_targets(totals([r for r, _ in undone]))
    rows = [
        ["committed", 0, *(t.value for t in committed)],
        ["horizon step undone", sum(k for _, k in undone), *(t.value for t in put_back)],
    ]
    return table(["adaptive", "task-seeds put back", *(t.name for t in committed)], rows)


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
            "",
            "The horizon step undone, in-sample and held out pooled (the targets as `lr_quality.py` judges "
            "them; a put-back LR's regret interpolated):",
            "",
            undone_table(inside + held),
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
