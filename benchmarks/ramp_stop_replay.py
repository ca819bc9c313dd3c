"""Where would an adaptive sweep's range test stop, and which ceiling would it set, at other look-pasts?

    python benchmarks/ramp_stop_replay.py [--decades 1.0 0.7 0.5 0.3] [--no-write]

Replays the ``range-test`` rows that ``lr_quality.py`` journalled in its work cache (full ramps, run until
the loss diverged) through the product's own stop and ceiling rules (``adaptive.past_minimum``,
``basin_minimum``, ``ceiling``), cutting each ramp where ``rangeTest.stopPastMinimum`` at each look-past would
have stopped it. An adaptive sweep's ramp is that same ramp cut short (same window, seed and steps per
decade), so this gives its steps and ceiling without running anything. Needs a finished ``lr_quality.py``
run (either task file) on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results
from benchmarks.quality.store import CACHE
from finetune_trainer.adaptive import basin_minimum, ceiling, divergence_edge, ramp_edge, stop_step
from finetune_trainer.config import AdaptiveSpec
from finetune_trainer.rangetest import PRIOR_ABOVE, PRIOR_BELOW


def ramps(folder: Path = CACHE / "jobs") -> list[tuple[str, list[float], list[float], float]]:
    """Every distinct full ramp in the journals in ``folder`` (``lr_quality.py``'s work cache unless told):
    (task, LRs, smoothed losses, :func:`planned_end`)."""
    found, seen = [], set()
    for path in sorted(folder.glob("*.jsonl")):
        task = path.stem.rsplit("-", 1)[0]
        for line in path.read_text().splitlines():
            result = json.loads(line)["result"]
            if "suggestions" not in result:
                continue
            lrs, losses = result["curve"]
            key = (task, len(lrs), lrs[0], losses[-1])
            if key not in seen:
                seen.add(key)
                found.append((task, lrs, losses, planned_end(result)))
    return found


def planned_end(result: dict[str, Any]) -> float:
    """Where a journalled ramp was planned to end: the benchmark leaves the window unset, so the ramp ran
    from 100x below the prior (its window's start) to 10x above it."""
    return result["window"][0] * PRIOR_BELOW * PRIOR_ABOVE


def cut(lrs: list[float], losses: list[float], end: float, decades: float) -> tuple[int, float, bool]:
    """Steps the ramp runs with this look-past, and the ceiling it sets (and whether the minimum set it)."""
    stop = stop_step(lrs, losses, end, decades) or len(lrs)
    lrs, losses = lrs[:stop], losses[:stop]
    edge = ramp_edge(divergence_edge(lrs, losses, stopped_early=False), lrs[-1])
    top, capped = ceiling(AdaptiveSpec(), edge, basin_minimum(lrs, losses))
    return stop, top, capped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decades", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.3])
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args(argv)
    found = ramps()
    if not found:
        raise SystemExit(f"no range-test rows in {CACHE / 'jobs'}: run benchmarks/lr_quality.py first")
    base = args.decades[0]
    rows, steps, moved = [], dict.fromkeys(args.decades, 0), dict.fromkeys(args.decades, 0)
    for task, lrs, losses, end in found:
        cells, first = [], None
        for d in args.decades:
            stop, top, capped = cut(lrs, losses, end, d)
            first = first or top
            differs = abs(top / first - 1) > 1e-9
            steps[d] += stop
            moved[d] += differs
            cells.append(f"{stop}, {top:.3g}{'' if capped else ' (edge)'}{' **moved**' if differs else ''}")
        rows.append([task, len(lrs), *cells])
    headers = ["task", "full ramp", *(f"{d:g} dec: steps, ceiling" for d in args.decades)]
    body = "\n".join(
        [
            "Each row is one full `range-test` ramp from `lr_quality.py`'s journals (run until the loss "
            "diverged); each cell is where the adaptive stop (`adaptive.past_minimum`) at that look-past "
            "ends it, and the ceiling it then sets (*moved*: not the first column's).",
            "",
            table(headers, rows),
            "",
            f"{len(found)} ramps. Mean steps: "
            + ", ".join(f"{d:g} dec {steps[d] / len(found):.1f}" for d in args.decades)
            + f". Ceilings that differ from {base:g} dec: "
            + ", ".join(f"{d:g} dec {moved[d]}" for d in args.decades[1:])
            + ".",
        ]
    )
    print(body)
    if not args.no_write:
        title = "Range-test stop replay: an adaptive ramp's steps and ceiling at several look-pasts"
        print(f"wrote {write_results('ramp_stop_replay', title, body, argv)}")


if __name__ == "__main__":
    main()
