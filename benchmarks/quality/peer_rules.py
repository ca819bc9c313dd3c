"""The peers' LR-finder rules as pure functions of a range test's curve.

fastai's rules are written from their published definitions (fastai.callback.schedule, 2.5+). fastai reads
them off the recorder's curve without the first tenth of the planned iterations and the last 5 points."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def fastai_view(
    lrs: Sequence[float], losses: Sequence[float], planned: int
) -> tuple[list[float], list[float]]:
    """The slice of the curve fastai's suggestions see: drop ``planned // 10`` first and 5 last points."""
    start = planned // 10
    end = max(len(lrs) - 5, 0)
    return list(lrs[start:end]), list(losses[start:end])


def fastai_minimum(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """A tenth of the LR at the lowest loss."""
    if len(lrs) < 2:
        return None
    i = min(range(len(losses)), key=losses.__getitem__)
    return lrs[i] / 10.0


def fastai_steep(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The LR at the start of the steepest fall of loss per log-LR (forward differences)."""
    if len(lrs) < 2:
        return None
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)
    ]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


def fastai_valley(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """Longest decreasing subsequence (the "valley"), then the point half-way into it (1/3 + 1/6)."""
    n = len(losses)
    if n < 2:
        return None
    run = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
    end = max(range(n), key=run.__getitem__)  # first index reaching the longest run
    if run[end] == 1:
        return lrs[0]  # nothing falls: fastai's search never moves off the first point
    start = end - run[end]  # fastai's start: the end index minus the run's length (indices, not the run)
    sections = (end - start) / 3
    return lrs[start + int(sections) + int(sections / 2)]


def fastai_slide(
    lrs: Sequence[float], losses: Sequence[float], lr_diff: int = 15, thresh: float = 0.005
) -> float | None:
    """Interval slide rule: from the end, slide a ``lr_diff``-point window left until the loss gradients
    at its two ends agree within ``thresh``; suggest the LR at the window's left end."""
    n = len(losses)
    if n <= lr_diff:
        return None
    grad = _np_gradient(losses)
    right, left = n - 1, n - 1 - lr_diff
    suggestion = lrs[left]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        suggestion = lrs[left]
        right, left = right - 1, left - 1
    return suggestion


def _np_gradient(ys: Sequence[float]) -> list[float]:
    """``numpy.gradient`` with unit spacing: central differences inside, one-sided at the ends."""
    n = len(ys)
    if n < 2:
        return [0.0] * n
    out = [ys[1] - ys[0]]
    out += [(ys[i + 1] - ys[i - 1]) / 2 for i in range(1, n - 1)]
    out.append(ys[-1] - ys[-2])
    return out


def lrfinder_steepest(
    lrs: Sequence[float], losses: Sequence[float], skip_start: int = 10, skip_end: int = 5
) -> float | None:
    """torch-lr-finder's suggestion: argmin of ``np.gradient(losses)`` after skipping the ends."""
    lrs = list(lrs[skip_start : len(lrs) - skip_end if skip_end else None])
    losses = list(losses[skip_start : len(losses) - skip_end if skip_end else None])
    if len(lrs) < 2:
        return None
    grad = _np_gradient(losses)
    return lrs[min(range(len(grad)), key=grad.__getitem__)]


FASTAI_RULES: dict[str, Callable[[Sequence[float], Sequence[float]], float | None]] = {
    "valley": fastai_valley,
    "slide": fastai_slide,
    "minimum": fastai_minimum,
    "steep": fastai_steep,
}
