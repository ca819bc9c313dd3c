"""Operator-side LR decisions: which LRs a sweep tries, which wins, how an LR moves with batch size."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from finetune_operator.api import TrialsSpec


def trial_learning_rates(method: str, trials: TrialsSpec) -> list[float]:
    """The learning rates of a grid (log-spaced or explicit) or random (seeded log-uniform) sweep."""
    if trials.learning_rates:
        return sorted(trials.learning_rates)
    lo, hi, n = math.log10(trials.min_learning_rate), math.log10(trials.max_learning_rate), trials.count
    if method == "random":
        rng = random.Random(trials.seed)
        return sorted(10 ** rng.uniform(lo, hi) for _ in range(n))
    return [10 ** (lo + (hi - lo) * i / (n - 1)) for i in range(n)]


def best_learning_rate(results: Sequence[tuple[float, float | None]]) -> tuple[float, float] | None:
    """(learning rate, eval loss) of the best trial; interior bests are refined by a parabola in log-LR.

    `results` pairs each trial's LR with its final eval loss (None when it diverged or failed). The parabola
    through the best point and its neighbours gives the vertex; it is used only when it lies between the
    neighbours (a convex bracket), else the best trial's own LR stands.
    """
    done = sorted((lr, loss) for lr, loss in results if loss is not None and math.isfinite(loss))
    if not done:
        return None
    i = min(range(len(done)), key=lambda k: done[k][1])
    lr, loss = done[i]
    if 0 < i < len(done) - 1:
        (x0, y0), (x1, y1), (x2, y2) = ((math.log10(a), b) for a, b in done[i - 1 : i + 2])
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
        if a > 0:
            vertex = -b / (2 * a)
            if x0 < vertex < x2:
                return 10**vertex, loss
    return lr, loss


def scale_learning_rate(lr: float, from_batch: int, to_batch: int, rule: str) -> float:
    """Move an LR found at one effective batch size to another: `none`, `sqrt` or `linear` scaling."""
    if from_batch <= 0 or to_batch <= 0:
        raise ValueError("effective batch sizes must be positive")
    ratio = to_batch / from_batch
    if rule == "none":
        return lr
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    if rule == "linear":
        return lr * ratio
    raise ValueError(f"learningRate.fromSweep.scale must be none, sqrt or linear, got {rule!r}")
