"""Where the default recommender misses, and why: each missed task-seed beside its own loss curve.

    python benchmarks/miss_curves.py [--row adaptive] [--no-write]

Reads the committed ``results/lr_quality.json``, ``lr_quality_heldout.json`` and ``lr_quality_fresh.json``
and runs nothing.
For every task-seed on which the row missed (paired regret > τ, as ``lr_quality.py`` scores it), the
seed's curve is its own full-length runs (the oracle grid and every check run on that seed) with the
sweep's evidence placed on it: the ceiling (its first stage-1 trial, half a decade below the ramp's loss
minimum), its short trials and the recommendation. The *why* line is read off that evidence:

* *held at the ceiling*: the trials' best was the ceiling itself, and the trials never go above it, so the
  answer is as far off as the range test put the ceiling;
* *horizon step*: the stage-2 minimum was moved down for the fine-tune's length, and landed off;
* *stage-2 fit*: the parabola through the longer trials put its minimum off;
* *no trial learned*: every trial stayed at the labels' entropy, and the sweep reported the ceiling of a ramp
  that did learn, unconfirmed (weak ``NothingTrained``);
* *no learning rate*: the sweep ended on a condition; it scores the worst grid point.

A miss within 0.1 decades of the best LR is also flagged as inside the benchmark's hit noise
(``results/hit_noise.md``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, table, write_results
from benchmarks.quality.scoring import Row, TaskReport, family
from benchmarks.quality.store import STANDING_RESULTS, committed_reports

NOISE_DECADES = 0.1
"""Within this distance of the best LR, 44 of 48 check runs hit (``results/hit_noise.md``): a miss there is
the benchmark's noise."""
BAR_CAP = 20
"""Longest bar drawn, in τ of regret."""
MARGIN = 0.5
"""Decades of the seed's curve shown beyond the sweep's evidence (its trials, ceiling and answer) and the
best LR."""
SAME = 1e-3
"""Decades within which two learning rates are the same point."""


@dataclass(frozen=True)
class Miss:
    """One task-seed on which a row's recommendation missed."""

    task: str
    seed: int
    lr: float | None
    regret_tau: float
    delta: float | None  # log10(lr / best LR)
    note: dict[str, Any]


def misses(report: TaskReport, name: str) -> list[Miss]:
    """The task-seeds on which row ``name`` missed, with the sweep's notes."""
    i = next((k for k, r in enumerate(report.rows) if family(r.name) == name), None)
    if i is None:
        rows = ", ".join(family(r.name) for r in report.rows)
        raise SystemExit(f"task {report.name} has no row {name!r}; --row takes one of: {rows}")
    row: Row = report.rows[i]
    scored = report.scores[i]
    tau = report.oracle.tau
    out = []
    for k, regret in enumerate(scored.regrets):
        if report.oracle.hit(regret):
            continue
        note = row.notes[k] if k < len(row.notes) else {}
        seed = row.seed(k)
        out.append(
            Miss(
                report.name,
                k if seed is None else seed,
                row.lrs[k] if row.lrs else None,
                regret / tau,
                scored.signed[k],
                note,
            )
        )
    return out


def _same(a: float, b: float) -> bool:
    return abs(math.log10(a / b)) < SAME


def ceiling_of(note: dict[str, Any]) -> float | None:
    """The sweep's ceiling: its first stage-1 trial's LR (stage 1 starts there and goes down)."""
    first = [t for t in note.get("trials") or [] if t[0] == 1]
    return first[0][1] if first else None


def hit_ranges(report: TaskReport, seed: int) -> list[tuple[float, float]]:
    """The runs of ``seed`` that hit, as (lowest, highest) LR of each unbroken stretch of its curve."""
    oracle = report.oracle
    hits = [(lr, oracle.hit(oracle.regret(lr, seed))) for lr in oracle.runs_on(seed)]
    stretches = [[lr for lr, _ in run] for hit, run in groupby(hits, key=itemgetter(1)) if hit]
    return [(lrs[0], lrs[-1]) for lrs in stretches]


def why(report: TaskReport, miss: Miss) -> tuple[str, str]:
    """(kind, sentence): what decided the missed LR, read off the sweep's evidence and the seed's curve."""
    best = report.oracle.best[0]
    note, lr = miss.note, miss.lr
    top = ceiling_of(note)
    stage2 = [t for t in note.get("trials") or [] if t[0] == 2 and t[3] is not None]
    if lr is None and not note:
        return (
            "no learning rate",
            "the row gives no learning rate (an LR-free method is judged by its own loss)",
        )
    if lr is None:
        ended = note.get("evidence") or "a condition"
        return (
            "no learning rate",
            f"the sweep ended {ended} with no learning rate, so it scores the worst grid point",
        )
    off = f"{abs(miss.delta or 0.0):.2f} decades {'above' if (miss.delta or 0.0) > 0 else 'below'} the best"
    if not note.get("trials"):
        kind, text = "suggested", f"the row suggested {lr:.3g} ({off}), with no adaptive trials to read"
    elif note.get("evidence") == "NothingTrained":
        kind, text = (
            "no trial learned",
            f"no trial left the labels' entropy, so the sweep reported its ramp's ceiling {lr:.3g}, "
            f"unconfirmed ({off})",
        )
    elif top is not None and _same(lr, top):
        where = math.log10(top / best)
        if where < 0:
            reason = "the optimum lies above it, where no trial goes"
        else:
            reason = "the trials, shorter than the fine-tune, favoured the highest LR they were allowed"
        kind, text = "held at the ceiling", f"held at the ceiling {top:.3g} ({off}): {reason}"
    elif note.get("decidedBy") == "stage-2-horizon":
        b2 = min(stage2, key=lambda t: t[3])[1] if stage2 else None
        start = f" from the stage-2 trials' best {b2:.3g}" if b2 else ""
        kind, text = (
            "horizon step",
            f"the horizon step moved the recommendation down{start} to {lr:.3g} ({off})",
        )
    else:
        kind, text = "stage-2 fit", f"{note.get('decidedBy', 'the fit')} put the minimum at {lr:.3g} ({off})"
    if top is not None and not _same(lr, top) and report.oracle.measured(top, miss.seed) is not None:
        regret = report.oracle.regret(top, miss.seed) / report.oracle.tau
        text += f"; the ceiling {top:.3g} itself scored {regret:.2f} τ"
    basins = hit_ranges(report, miss.seed)
    if len(basins) != 1 or not basins[0][0] * 10**-SAME <= best <= basins[0][1] * 10**SAME:
        spans = " and ".join(f"{a:.3g}" if _same(a, b) else f"{a:.3g}-{b:.3g}" for a, b in basins)
        text += f"; this seed's full-length runs hit at {spans or 'no learning rate'}"
    if abs(miss.delta or 0.0) <= NOISE_DECADES:
        text += f"; within {NOISE_DECADES:g} decades of the best, inside the benchmark's hit noise"
    return kind, text


def curve(report: TaskReport, miss: Miss) -> list[list[Any]]:
    """The seed's full-length runs, with the sweep's evidence on them: one row per learning rate."""
    oracle = report.oracle
    tau = oracle.tau
    runs = oracle.runs_on(miss.seed)
    marks: dict[float, list[str]] = {}

    def mark(lr: float, text: str) -> None:
        at = next((k for k in marks if _same(k, lr)), lr)
        marks.setdefault(at, []).append(text)

    for lr in runs:
        marks.setdefault(lr, [])
    mark(oracle.best[0], "oracle best (seeds' mean)")
    top = ceiling_of(miss.note)
    if top is not None:
        mark(top, "ceiling")
    for stage, lr, steps, loss in miss.note.get("trials") or []:
        mark(lr, f"trial {stage}: {steps} steps → {fmt(loss)}")
    if miss.lr is not None:
        mark(miss.lr, "**recommended**")
    evidence = [lr for lr, m in marks.items() if m]
    low, high = min(evidence) / 10**MARGIN, max(evidence) * 10**MARGIN
    rows = []
    for lr in sorted(marks):
        if not marks[lr] and not low <= lr <= high:
            continue
        loss = runs.get(lr)  # a mark near a run sits at the run's own LR (`mark`)
        regret = None if loss is None else oracle.regret(lr, miss.seed) / tau
        bar = "" if regret is None else f"`{'█' * min(BAR_CAP, round(regret)) or '·'}`"
        rows.append([f"{lr:.3g}", loss, regret, bar, "; ".join(marks[lr])])
    return rows


def report_text(runs: dict[str, list[TaskReport]], name: str) -> tuple[str, Counter[str]]:
    """The results body for row ``name`` over ``runs`` (results name → its task reports), and the misses
    counted by kind."""
    parts, kinds = [], Counter()
    summary: list[list[Any]] = []
    for results, reports in runs.items():
        for report in reports:
            for miss in misses(report, name):
                kind, text = why(report, miss)
                kinds[kind] += 1
                summary.append([results, miss.task, miss.seed, miss.lr, miss.delta, miss.regret_tau, kind])
                o = report.oracle
                parts += [
                    f"### {miss.task}, seed {miss.seed} (`{results}`)",
                    "",
                    f"Recommended {fmt(miss.lr)}, regret {miss.regret_tau:.2f} τ; oracle best "
                    f"{o.best[0]:.3g}, τ = {o.tau:.3g}; decided by {miss.note.get('decidedBy', '-')}, "
                    f"evidence {miss.note.get('evidence', '-')}. Why: {text}.",
                    "",
                    table(["LR", f"loss, seed {miss.seed}", "regret/τ", "", "here"], curve(report, miss)),
                    "",
                ]
    head = [
        f"Each task-seed on which `{name}` missed (paired regret > τ), on its seed's own full-length runs. "
        "*loss*: the full-length run at that LR on that seed (oracle grid or check run; blank where none "
        "ran), its regret (paired with the seed's run at the oracle's best LR) and a bar of one block per "
        f"τ (capped at {BAR_CAP}), shown from {MARGIN:g} decades below the sweep's evidence to {MARGIN:g} "
        "above. Trials are the sweep's short runs, whose losses are not comparable with full-length ones.",
        "",
        table(["results", "task", "seed", "LR", "Δlog10", "regret/τ", "why"], summary),
        "",
        "Misses by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()) + ".",
        "",
    ]
    return "\n".join(head + parts), kinds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--row", default="adaptive", help="the recommender row (default: adaptive)")
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args(argv)
    body, _ = report_text({name: committed_reports(name) for name in STANDING_RESULTS}, args.row)
    print(body)
    if not args.no_write:
        title = f"Where `{args.row}` misses, and why"
        print(f"wrote {write_results('miss_curves', title, body, argv)}")


if __name__ == "__main__":
    main()
