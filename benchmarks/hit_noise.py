"""How close to the best LR must a recommendation be to count as a hit? Full-length runs near the oracle's
best learning rate, scored the way ``lr_quality.py`` scores a recommendation.

    python benchmarks/hit_noise.py [--within 0.05 0.1 0.15 0.2] [--no-write]

Reads the committed ``results/lr_quality.json``, ``lr_quality_heldout.json`` and ``lr_quality_fresh.json``
and runs nothing.
Every full-length run that ``lr_quality.py`` made off the oracle grid (a check run: some recommender's LR,
on the seed that suggested it) within each distance of the oracle's best LR is scored by its paired regret
against τ. A recommender that always landed that close would hit about that often: the benchmark's own
noise, a ceiling on its hit rate. The sample is the LRs that recommenders picked, not a designed grid.

A second table asks the same of a perfect search done on other seeds: for each task-seed, the oracle grid's
LR with the lowest mean loss over the *other* seeds (13 or 11 full-length runs each, 22-26 fine-tunes'
worth), scored on this seed by paired regret: what a perfect search that never sees this seed's own
full-length runs achieves. A reference for the benchmark's seed noise, not a bound: a recommender's trials
run on the seed it is judged on.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results
from benchmarks.quality.scoring import REGRET_CAP, Oracle, TaskReport, parse_oracle_key
from benchmarks.quality.store import STANDING_RESULTS, committed_reports


def near_hits(oracle: Oracle, within: float) -> tuple[int, int]:
    """(hits, runs) among the check runs within ``within`` decades of the best LR (its own runs left out)."""
    best = oracle.best[0]
    hits = runs = 0
    for key in oracle.checks:
        lr, seed = parse_oracle_key(key)
        distance = abs(math.log10(lr / best))
        if 1e-6 < distance <= within + 1e-9:
            runs += 1
            hits += oracle.hit(oracle.regret(lr, seed))
    return hits, runs


def cross_seed_picks(oracle: Oracle) -> list[tuple[int, float, float]]:
    """Per seed: (seed, LR, paired regret) of the grid LR whose mean loss over the other seeds is lowest."""
    picks = []
    for i, seed in enumerate(oracle.seeds):
        others = [j for j in range(len(oracle.seeds)) if j != i]
        if not others:
            continue
        lr = min(oracle.lrs, key=lambda g: sum(oracle.filled(g)[j] for j in others))
        picks.append((seed, lr, oracle.regret(lr, seed)))
    return picks


def cross_seed_table(reports: dict[str, list[TaskReport]]) -> str:
    """Hits and mean regret/τ of the other seeds' best grid LR, per task and over every task-seed."""
    rows, hits, count, regret = [], 0, 0, 0.0
    for name, tasks in reports.items():
        for report in tasks:
            oracle = report.oracle
            picks = cross_seed_picks(oracle)
            h = sum(oracle.hit(r) for _, _, r in picks)
            total = sum(min(r / oracle.tau, REGRET_CAP) for _, _, r in picks)
            hits, count, regret = hits + h, count + len(picks), regret + total
            misses = ", ".join(
                f"seed {s}: {math.log10(lr / oracle.best[0]):+.2f} dec, {r / oracle.tau:.2f} τ"
                for s, lr, r in picks
                if not oracle.hit(r)
            )
            rows.append([name, report.name, f"{h}/{len(picks)}", f"{total / max(len(picks), 1):.2f}", misses])
    share = hits / count if count else 0.0
    rows.append(["", "**all**", f"**{hits}/{count}** ({share:.0%})", f"**{regret / max(count, 1):.2f}**", ""])
    return "\n".join(
        [
            "The other seeds' best grid LR, judged on each seed (paired regret, as `lr_quality.py` judges a "
            "recommendation): hits / seeds, mean regret/τ, and where it missed.",
            "",
            table(["results", "task", "hits", "regret/τ", "misses (Δlog10 from the best, regret)"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--within", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2])
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args(argv)
    reports = {name: committed_reports(name) for name in STANDING_RESULTS}
    rows, parts = [], []
    for name, tasks in reports.items():
        totals = dict.fromkeys(args.within, (0, 0))
        for report in tasks:
            oracle = report.oracle
            cells = []
            for d in args.within:
                hits, runs = near_hits(oracle, d)
                totals[d] = (totals[d][0] + hits, totals[d][1] + runs)
                cells.append(f"{hits}/{runs}" if runs else "-")
            rows.append([name, report.name, *cells])
        rows.append([name, "**all**", *(f"**{h}/{n}**" if n else "-" for h, n in totals.values())])
        parts.append(f"`{name}`: " + ", ".join(f"{d:g} dec {h}/{n}" for d, (h, n) in totals.items() if n))
    body = "\n".join(
        [
            "Check runs (full-length `trial`s at recommenders' LRs, each on the seed that suggested it) "
            "within each distance of the oracle's best LR: hits (paired regret ≤ τ) / runs.",
            "",
            table(["results", "task", *(f"≤ {d:g} dec" for d in args.within)], rows),
            "",
            "; ".join(parts) + ".",
            "",
            "## A full-length search on other seeds",
            "",
            cross_seed_table(reports),
        ]
    )
    print(body)
    if not args.no_write:
        title = "Hit noise: how often a full-length run near the best LR is a hit"
        print(f"wrote {write_results('hit_noise', title, body, argv)}")


if __name__ == "__main__":
    main()
