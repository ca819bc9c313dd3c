"""Does a ramp's shape say how far below its loss minimum the best learning rate lies?

    python benchmarks/ramp_shape_replay.py [--headrooms 0.5 0.6 0.7 0.8 0.9] [--sharp 0.5] [--no-write]

Adaptive's ceiling sits ``HEADROOM`` (half a decade) below the range test's loss minimum on every task. On
the benchmark's language models the best full-length LR lies 0.3-0.7 decades below that minimum; on its
MiniLM classifiers 0.1-1.4, mostly about one decade, which is why they hold most of adaptive's misses. A
classifier whose loss sits at the labels' entropy until the ramp is fast enough to move it falls steeply
just below its minimum; a language model's loss falls over a decade or more. This replay measures that
*fall*: decades from the ramp's steepest descent (the product's ``steepest`` rule) up to its minimum
(``basin_minimum``), on the journalled ramps of both committed ``lr_quality`` runs, each cut where an
adaptive sweep's ramp stops. It then replays a ceiling whose headroom depends on it: ramps with at most
``--sharp`` decades of fall take each of ``--headrooms``, the rest keep ``HEADROOM``, still below the
divergence edge as the product's ``ceiling`` keeps it. Regret is interpolated per seed between that seed's
own full-length runs, as in ``recalibration_replay.py``: indicative only.

Runs nothing. Needs the journals of a finished ``lr_quality.py`` run of both task files on this machine, on
the trainer the committed results ran (its range-test jobs are looked up by the same job id).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results
from benchmarks.quality.scoring import Oracle, TaskReport
from benchmarks.quality.store import CPU_RESULTS, committed_reports, job_fingerprints, job_id, read_journal
from benchmarks.ramp_stop_replay import cut, planned_end
from benchmarks.recalibration_replay import CEILING, row, seed_regret
from finetune_trainer.adaptive import (
    HEADROOM,
    PAST_MINIMUM,
    basin_minimum,
    ceiling,
    divergence_edge,
    ramp_edge,
)
from finetune_trainer.config import AdaptiveSpec
from finetune_trainer.suggest import steepest


@dataclass(frozen=True)
class Ramp:
    """One seed's journalled range test, read as adaptive reads it."""

    task: str
    seed: int
    minimum: float  # basin_minimum: the vertex of the ramp's basin
    edge: float | None  # ramp_edge: where trials must stay below
    fall: float  # decades from the steepest descent up to the minimum
    oracle: Oracle


def fall_decades(minimum: float, steepest: float) -> float:
    """Decades from the ramp's steepest descent up to its loss minimum (negative when the steepest point
    lies above the minimum, on a ramp whose last fall came after its basin)."""
    return math.log10(minimum) - math.log10(steepest)


def replayed_ceiling(minimum: float, edge: float | None, headroom: float) -> float:
    """The product's ``ceiling`` with ``headroom`` decades below the minimum in place of ``HEADROOM``: still
    never above ``spacing`` below the divergence edge."""
    moved = minimum * 10 ** (HEADROOM - headroom)
    return ceiling(AdaptiveSpec(), edge, moved)[0] if edge else moved * 10**-HEADROOM


def headroom_for(fall: float, sharp: float, sharp_headroom: float) -> float:
    """``sharp_headroom`` for a ramp whose fall is ``sharp`` decades or less, else the product's."""
    return sharp_headroom if fall <= sharp else HEADROOM


def adaptive_ramp(result: dict[str, Any]) -> tuple[list[float], list[float]]:
    """A full range test's smoothed curve cut where an adaptive sweep's ramp stops (``PAST_MINIMUM`` past
    its minimum, ``ramp_stop_replay.cut``): the same window, seed and steps per decade, so the same ramp."""
    lrs, losses = result["curve"]
    stop = cut(lrs, losses, planned_end(result), PAST_MINIMUM)[0]
    return lrs[:stop], losses[:stop]


def ramps_of(reports: Sequence[TaskReport]) -> tuple[list[Ramp], list[str], int]:
    """Every seed's ramp of ``reports`` as an adaptive sweep reads it; the task-seeds without one (no journal
    entry, or a ramp with no minimum or no fall to it); and on how many the product's ceiling, replayed, is
    the committed ``adaptive-ceiling`` LR."""
    fingerprint = job_fingerprints()["range-test"]
    found, missing, same = [], [], 0
    for report in reports:
        committed = row(report, CEILING)
        journal = read_journal(report.name, report.key)
        for i, lr in enumerate(committed.lrs or []):
            seed = committed.seed(i)
            job = {"kind": "range-test", "row": "range-test", "seed": seed, "source": fingerprint}
            result = journal.get(job_id(job))
            lrs, losses = adaptive_ramp(result) if result else ([], [])
            minimum = basin_minimum(lrs, losses) if lrs else None
            steep = steepest(lrs, losses) if lrs else None
            if lr is None or minimum is None or steep is None:
                missing.append(f"{report.name} seed {seed}")
                continue
            edge = ramp_edge(divergence_edge(lrs, losses, stopped_early=False), lrs[-1])
            same += abs(replayed_ceiling(minimum, edge, HEADROOM) / lr - 1) < 1e-6
            found.append(Ramp(report.name, seed, minimum, edge, fall_decades(minimum, steep), report.oracle))
    return found, missing, same


def scored(ramps: Sequence[Ramp], sharp: float, sharp_headroom: float) -> tuple[int, int, float]:
    """(hits, task-seeds, mean regret/τ) of the replayed ceiling."""
    hits, total = 0, 0.0
    for r in ramps:
        lr = replayed_ceiling(r.minimum, r.edge, headroom_for(r.fall, sharp, sharp_headroom))
        regret = seed_regret(r.oracle, lr, r.seed)
        hits += r.oracle.hit(regret)
        total += min(regret / r.oracle.tau, 100.0)
    return hits, len(ramps), total / max(len(ramps), 1)


def seed_best(oracle: Oracle, seed: int) -> float:
    """The LR of the seed's own best full-length run (oracle grid or check run)."""
    runs = oracle.runs_on(seed)
    return min(runs, key=lambda lr: runs[lr])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headrooms", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    parser.add_argument("--sharp", type=float, default=0.5, help="a fall of at most this many decades")
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args(argv)
    sets: dict[str, list[Ramp]] = {}
    gaps: list[str] = []
    reproduced = 0
    for label, name in zip(("in-sample", "held out"), CPU_RESULTS, strict=True):
        sets[label], missing, same = ramps_of(committed_reports(name))
        gaps += missing
        reproduced += same
    if gaps:
        raise SystemExit(
            f"no journalled range test with a loss minimum and a fall to it for {', '.join(gaps)}: run "
            "`python benchmarks/lr_quality.py --resume` (and with `--tasks benchmarks/tasks_heldout.yaml`) "
            "on this trainer first"
        )
    sets["pooled"] = sets["in-sample"] + sets["held out"]
    per_seed = [
        [
            r.task,
            r.seed,
            f"{r.fall:+.2f}",
            "sharp" if r.fall <= args.sharp else "",
            f"{math.log10(r.minimum / r.oracle.best[0]):+.2f}",
            f"{math.log10(r.minimum / seed_best(r.oracle, r.seed)):+.2f}",
        ]
        for r in sets["pooled"]
    ]
    replays = []
    for h in args.headrooms:
        cells = []
        for ramps in sets.values():
            hits, n, mean = scored(ramps, args.sharp, h)
            cells.append(f"{hits}/{n}, {mean:.2f} τ")
        replays.append([f"{h:g}", *cells])
    body = "\n".join(
        [
            "Each seed's ramp: *fall*, decades from its steepest descent (`steepest`) up to its loss minimum "
            "(`basin_minimum`); how far that minimum lies above the oracle's best LR (seeds' mean) and above "
            f"this seed's own best full-length run. The product's ceiling is {HEADROOM:g} decades below the "
            "minimum.",
            "",
            table(
                [
                    "task",
                    "seed",
                    "fall (dec)",
                    f"≤ {args.sharp:g}",
                    "minimum - best",
                    "minimum - seed's best",
                ],
                per_seed,
            ),
            "",
            f"The ceiling alone (no trials) with a ramp-shaped headroom: ramps whose fall is at most "
            f"{args.sharp:g} decades take the row's headroom, the rest keep {HEADROOM:g}; regret "
            "interpolated per seed between its own full-length runs, paired with its loss at the best LR; "
            "hits and mean regret/τ. Indicative only.",
            "",
            table(["sharp ramps' headroom", *sets], replays),
            "",
            f"At {HEADROOM:g} decades the replayed ceiling is the committed `{CEILING}` LR on {reproduced} "
            f"of {len(sets['pooled'])} task-seeds.",
        ]
    )
    print(body)
    if not args.no_write:
        title = "Ramp-shape replay: a headroom below the ramp's minimum set by how sharply its loss fell"
        print(f"wrote {write_results('ramp_shape_replay', title, body, argv)}")


if __name__ == "__main__":
    main()
