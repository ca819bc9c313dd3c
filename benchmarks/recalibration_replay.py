"""Would a recalibration help? The committed recommendations moved by a constant, and adaptive's ceiling at
other headrooms, scored on the committed runs.

    python benchmarks/recalibration_replay.py [--shifts ...] [--headrooms ...] [--only TASK ...] [--no-write]

Reads the committed ``results/lr_quality.json`` and ``results/lr_quality_heldout.json`` and runs nothing.
A moved LR mostly has no full-length run of its own, so its regret is interpolated in log-LR between that
seed's own full-length runs (the oracle grid and every check run on that seed) and paired with that seed's
loss at the best LR, as ``lr_quality.py`` pairs a measured regret. Indicative only: between two runs the
interpolation overstates the loss of a convex basin and misses a sharp cliff.

* *shift*: every ``adaptive`` recommendation times 10^shift;
* *headroom*: the ``adaptive-ceiling`` row (half a decade below its ramp's loss minimum, ``HEADROOM``)
  moved to ``headroom`` decades below that minimum, with no trials.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results
from benchmarks.quality.scoring import Oracle, Row, TaskReport, family, log_interp
from benchmarks.quality.store import CPU_RESULTS, committed_reports
from finetune_trainer.adaptive import HEADROOM

CEILING = "adaptive-ceiling"


def seed_regret(oracle: Oracle, lr: float, seed: int) -> float:
    """Regret of ``lr`` on ``seed``, interpolated between that seed's own full-length runs."""
    runs = oracle.runs_on(seed)
    return max(0.0, log_interp(lr, list(runs), list(runs.values())) - oracle.best_on(seed))


def row(report: TaskReport, name: str) -> Row:
    return next(r for r in report.rows if family(r.name) == name)


def scored(reports: Sequence[TaskReport], name: str, decades: float) -> tuple[int, int, float]:
    """(hits, task-seeds, mean regret/τ) of row ``name``'s LRs moved by ``decades``; a seed with no LR
    (a sweep that ended on a condition) scores the worst grid point, as ``lr_quality.py`` scores it."""
    hits = n = 0
    total = 0.0
    for report in reports:
        r, oracle = row(report, name), report.oracle
        for i, lr in enumerate(r.lrs or []):
            seed = r.seed(i)
            if seed not in oracle.seeds:
                continue
            regret = oracle.worst if lr is None else seed_regret(oracle, lr * 10**decades, seed)
            hits += oracle.hit(regret)
            total += regret / oracle.tau
            n += 1
    return hits, n, total / max(n, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shifts", type=float, nargs="+", default=[-0.2, -0.1, -0.05, 0.0, 0.05, 0.1])
    parser.add_argument(
        "--headrooms", type=float, nargs="+", default=[0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 1.0]
    )
    parser.add_argument("--only", nargs="+", metavar="TASK", help="replay only these tasks (print only)")
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args(argv)
    inside, held = (
        [r for r in committed_reports(name) if not args.only or r.name in args.only] for name in CPU_RESULTS
    )
    if args.only and (unknown := sorted(set(args.only) - {r.name for r in inside + held})):
        parser.error(f"--only: {', '.join(unknown)} is not a task of {' or '.join(CPU_RESULTS)}")
    sets = {"in-sample": inside, "held out": held}
    sets["pooled"] = sets["in-sample"] + sets["held out"]

    def cells(name: str, decades: float) -> list[str]:
        out = []
        for reports in sets.values():
            hits, n, mean = scored(reports, name, decades)
            out.append(f"{hits}/{n}, {mean:.2f} τ")
        return out

    shifts = [[f"{d:+g}", *cells("adaptive", d)] for d in args.shifts]
    heads = [[f"{h:g}", *cells(CEILING, HEADROOM - h)] for h in args.headrooms]
    names = list(sets)
    body = "\n".join(
        [
            "Regret interpolated per seed between that seed's own full-length runs (oracle grid and check "
            "runs), paired with its loss at the best LR; hits and mean regret/τ. Indicative only.",
            "",
            "`adaptive`'s recommendations, every one moved by a constant (decades):",
            "",
            table(["shift", *names], shifts),
            "",
            f"`{CEILING}` (no trials) at other headrooms below the ramp's loss minimum (the product's "
            f"ceiling is {HEADROOM:g}):",
            "",
            table(["headroom", *names], heads),
        ]
    )
    print(body)
    if not args.no_write and not args.only:
        title = "Recalibration replay: the committed recommendations moved, scored on the committed runs"
        print(f"wrote {write_results('recalibration_replay', title, body, argv)}")


if __name__ == "__main__":
    main()
