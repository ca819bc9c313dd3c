"""How firm is each target's verdict? The default recommender's targets on the committed LR-quality runs,
in-sample, held out, fresh and pooled, each with its interval over resampled tasks; and, task-seed by
task-seed, how often it beats each peer.

    python benchmarks/target_intervals.py [--draws N] [--no-write]

Reads the committed ``results/lr_quality.json``, ``lr_quality_heldout.json`` and ``lr_quality_fresh.json``
and runs nothing.
The verdicts are ``lr_quality.py``'s own (``check_targets``); the interval is the 5th to 95th percentile of
each figure over sets of as many tasks drawn with replacement (``resampled_figures``; a task's seeds stay
together), beside the share of those sets on which the target is met. The paired table counts the
task-seeds on which the default's measured regret is below, above or equal to a peer's (same task, same
seed), with a one-sided sign test over the unequal ones. Pooled twice: the in-sample and held-out tasks (the
rules were chosen or checked on both; ``benchmarks/README.md`` says which), then every task, the fresh ones
(run once, after every rule was chosen) included. All three files come from the same trainer.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results
from benchmarks.quality.scoring import Score, TaskReport, family
from benchmarks.quality.store import CPU_RESULTS, STANDING_RESULTS, committed_reports
from benchmarks.quality.verdicts import TARGET_DRAWS, check_targets, resampled_figures, targets_table, totals


def paired(reports: list[TaskReport], first: str, second: str) -> tuple[int, int, int]:
    """(task-seeds on which ``first``'s regret is below ``second``'s, above it, equal to it), each pair on
    the same task and seed; a seed either row lacks is left out."""
    below = above = equal = 0
    for r in reports:
        rows = {family(s.row.name): s for s in r.scores}
        if first not in rows or second not in rows:
            continue
        a, b = rows[first], rows[second]
        theirs = {_seed(b, i): x for i, x in enumerate(b.regrets)}
        for i, mine in enumerate(a.regrets):
            other = theirs.get(_seed(a, i))
            if other is None:
                continue
            if abs(mine - other) <= 1e-12:
                equal += 1
            elif mine < other:
                below += 1
            else:
                above += 1
    return below, above, equal


def _seed(score: Score, i: int) -> int:
    """The seed of a score's ``i``-th entry (its position when the row does not name seeds)."""
    seed = score.row.seed(i)
    return i if seed is None else seed


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: the chance of at least ``wins`` wins in ``wins + losses`` fair coin flips."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


def paired_table(reports: list[TaskReport], default: str = "adaptive") -> str:
    """The default against every other row family, task-seed by task-seed."""
    peers = sorted({family(s.row.name) for r in reports for s in r.scores} - {default})
    rows = []
    for peer in peers:
        below, above, equal = paired(reports, default, peer)
        rows.append([peer, below, above, equal, f"{sign_test(below, above):.2g}"])
    rows.sort(key=lambda row: float(row[4]))
    return table(["peer", f"{default} lower regret", "peer lower", "equal", "sign test p (one-sided)"], rows)


def section(title: str, reports: list[TaskReport], draws: int) -> str:
    """One set of tasks' targets table with intervals, under a heading naming its tasks."""
    targets = check_targets(totals(reports), samples=resampled_figures(reports, draws=draws))
    names = ", ".join(f"`{r.name}`" for r in reports)
    return (
        f"## {title}\n\n{len(reports)} tasks: {names}.\n\n{targets_table(targets)}\n\n"
        f"Task-seed by task-seed (measured regret, same task and seed):\n\n{paired_table(reports)}\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--draws", type=int, default=TARGET_DRAWS, help="resampled task sets per table")
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args(argv)
    sets = {name: committed_reports(name) for name in STANDING_RESULTS}
    parts = [section(f"`{name}`", reports, args.draws) for name, reports in sets.items()]
    tuned = [r for name in CPU_RESULTS for r in sets[name]]
    parts.append(section("pooled, in-sample and held out", tuned, args.draws))
    parts.append(section("pooled, all", [r for reports in sets.values() for r in reports], args.draws))
    body = (
        "The default recommender's targets as `lr_quality.py` judges them, with the 5th to 95th percentile "
        f"of each figure over {args.draws} sets of as many tasks drawn with replacement (a task's seeds stay "
        "together), and the share of those sets on which the target is met: how often the verdict would "
        "differ on another draw of tasks like these.\n\n" + "\n".join(parts)
    )
    print(body)
    if not args.no_write:
        title = "Target intervals: how firm each verdict of the LR-quality benchmark is"
        print(f"wrote {write_results('target_intervals', title, body, argv)}")


if __name__ == "__main__":
    main()
