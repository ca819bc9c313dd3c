"""Where does an adaptive sweep's ramp need to start? The loss minimum's place against the prior, and the
steps and ceiling of ramps started closer to it.

    python benchmarks/ramp_start_replay.py [--below 2 1 0.5] [--no-write]

Replays the full ``range-test`` ramps that ``lr_quality.py`` journalled in its work cache (planned from 100x
below the model's prior, run until the loss diverged), each cut where the product's adaptive stop
(``adaptive.range_test_spec``'s look-past) ends it and started ``--below`` decades below the prior: the
points under that start are dropped. A real ramp started there differs a little: its smoothing starts
afresh and the steps below did not train its model first. Both are far from the minimum (the smoothing
remembers about 10 steps; the minimum lies 20 or more steps above every start tried here), so the
minimum, the ceiling and the trials follow, and the steps saved are the dropped points. Runs nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results
from benchmarks.lr_quality import CACHE
from benchmarks.ramp_stop_replay import cut, ramps
from finetune_trainer.adaptive import PAST_MINIMUM, loss_minimum
from finetune_trainer.rangetest import PRIOR_ABOVE


def started(
    lrs: list[float], losses: list[float], prior: float, below: float
) -> tuple[list[float], list[float]]:
    """The ramp from ``below`` decades under ``prior`` on."""
    start = prior / 10.0**below * (1 - 1e-9)
    k = next((i for i, lr in enumerate(lrs) if lr >= start), len(lrs))
    return lrs[k:], losses[k:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--below", type=float, nargs="+", default=[2.0, 1.0, 0.5])
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args(argv)
    found = ramps()
    if not found:
        raise SystemExit(f"no range-test rows in {CACHE / 'jobs'}: run benchmarks/lr_quality.py first")
    rows, steps, moved, above = [], dict.fromkeys(args.below, 0), dict.fromkeys(args.below, 0), []
    for task, lrs, losses, end in found:
        prior = end / PRIOR_ABOVE
        minimum = loss_minimum(*cut_at_stop(lrs, losses, end))
        above.append(math.log10(minimum / prior) if minimum else math.nan)
        cells, first = [], None
        for below in args.below:
            part = started(lrs, losses, prior, below)
            stop, top, capped = cut(*part, end, PAST_MINIMUM)
            first = first or top
            differs = abs(top / first - 1) > 1e-9
            steps[below] += stop
            moved[below] += differs
            cells.append(f"{stop}, {top:.3g}{'' if capped else ' (edge)'}{' **moved**' if differs else ''}")
        rows.append([task, f"{above[-1]:+.2f}", *cells])
    headers = [
        "task",
        "minimum vs prior (dec)",
        *(f"start {b:g} dec below: steps, ceiling" for b in args.below),
    ]
    body = "\n".join(
        [
            "Each row is one full `range-test` ramp from `lr_quality.py`'s journals, cut where the "
            f"adaptive stop ({PAST_MINIMUM:g} decades past the loss minimum) ends it. *minimum vs prior*: "
            "decades from the model's prior to the ramp's loss minimum. Each cell: the ramp started that "
            "many decades below the prior, its steps and the ceiling it sets (*moved*: not the first "
            "column's).",
            "",
            table(headers, rows),
            "",
            f"{len(found)} ramps. The loss minimum lies {min(above):+.2f} to {max(above):+.2f} decades from "
            "the prior. Mean steps: "
            + ", ".join(f"{b:g} dec below {steps[b] / len(found):.1f}" for b in args.below)
            + f". Ceilings that differ from {args.below[0]:g} dec below: "
            + ", ".join(f"{b:g} dec {moved[b]}" for b in args.below[1:])
            + ".",
        ]
    )
    print(body)
    if not args.no_write:
        title = "Range-test start replay: where an adaptive ramp needs to start"
        print(f"wrote {write_results('ramp_start_replay', title, body, argv)}")


def cut_at_stop(lrs: list[float], losses: list[float], end: float) -> tuple[list[float], list[float]]:
    """The whole planned ramp, cut where the adaptive stop ends it."""
    stop, _, _ = cut(lrs, losses, end, PAST_MINIMUM)
    return lrs[:stop], losses[:stop]


if __name__ == "__main__":
    main()
