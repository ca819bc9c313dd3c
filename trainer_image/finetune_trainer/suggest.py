"""Suggestion rules: pure functions from a range test's (learning rate, smoothed loss) curve to one LR.

Each rule is named (the names are the contract's ``SUGGESTION_RULES``) and returns ``None`` when the curve
gives it nothing to go on (too short, never falling). Every rule's value is reported; the configured one
becomes the recommendation. No torch here: the rules are plain arithmetic over two lists.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence

from finetune_trainer.adaptive import HEADROOM, PAST_MINIMUM, basin_minimum, stop_step
from finetune_trainer.config import SUGGESTION_RULES

Curve = tuple[Sequence[float], Sequence[float]]
MIN_POINTS = 5
START_SKIP = 0.1
"""Share of a curve's first points every rule that reads the loss minimum ignores (the smoothing's start-up:
the moving average rests on a few batches, so one lucky batch can put the curve's lowest points there)."""


class EmaSmoother:
    """Bias-corrected exponential moving average (as Adam corrects its moments).

    ``weight`` is the share of the newest value (the contract's ``rangeTest.smoothing``); the correction
    ``/(1 - beta^n)`` keeps the first values from being pulled towards zero.
    """

    def __init__(self, weight: float) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"smoothing weight must be in (0, 1], got {weight}")
        self.beta = 1.0 - weight
        self._avg = 0.0
        self._n = 0

    def update(self, value: float) -> float:
        self._n += 1
        self._avg = self.beta * self._avg + (1.0 - self.beta) * value
        return self._avg / (1.0 - self.beta**self._n) if self.beta > 0 else self._avg


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Bias-corrected EMA of a whole series."""
    ema = EmaSmoother(weight)
    return [ema.update(v) for v in values]


def _usable(lrs: Sequence[float], losses: Sequence[float]) -> bool:
    return len(lrs) == len(losses) and len(lrs) >= MIN_POINTS and all(math.isfinite(x) for x in losses)


def _argmin(values: Sequence[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)


def _settled(n: int) -> int:
    """Index of a curve's first point past the smoothing's start-up."""
    return max(1, math.ceil(START_SKIP * n))


def _settled_minimum(losses: Sequence[float]) -> int | None:
    """Index of the loss minimum past the start-up; ``None`` when the loss never falls below its first
    point past the start-up (the curve only rises, or its lowest points are start-up noise)."""
    first = _settled(len(losses))
    i = first + _argmin(losses[first:])
    return None if i == first else i


def steepest(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The LR where the loss falls fastest per unit of log-LR, between the start-up and the loss minimum.

    Two stretches of a range test's curve say nothing about the loss's response to the LR, so the search
    leaves them out: the first ``START_SKIP`` share of the points, where the moving average rests on few
    losses and each new batch moves it by a large step for a tiny change of LR (a noise "slope" that would
    win over the real drop), and everything from the loss minimum on (the climb and the divergence).
    """
    if not _usable(lrs, losses):
        return None
    first, end = _settled(len(lrs)), _settled_minimum(losses)
    if end is None:
        return None
    logs = [math.log10(x) for x in lrs[: end + 1]]
    ys = list(losses[: end + 1])
    best_i, best_slope = None, 0.0
    for i in range(first, end):  # central differences, like numpy.gradient on the interior
        dx = logs[i + 1] - logs[i - 1]
        if dx <= 0:
            continue
        slope = (ys[i + 1] - ys[i - 1]) / dx
        if slope < best_slope:
            best_i, best_slope = i, slope
    return None if best_i is None else float(lrs[best_i])


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """Middle of the longest decreasing run (fastai's "valley").

    The run is the longest strictly decreasing subsequence of the curve, which tolerates the small
    bumps a contiguous run would break on; the suggestion is the point half-way along it.
    """
    if not _usable(lrs, losses):
        return None
    n = len(losses)
    # Longest strictly decreasing subsequence in O(n log n) (patience sorting on the negated losses),
    # remembering where each subsequence starts.
    length, start = [1] * n, list(range(n))
    tails: list[float] = []  # tails[k]: smallest negated loss ending a run of length k + 1
    tail_index: list[int] = []
    for i, loss in enumerate(losses):
        k = bisect.bisect_left(tails, -loss)
        length[i] = k + 1
        if k > 0:
            start[i] = start[tail_index[k - 1]]
        if k == len(tails):
            tails.append(-loss)
            tail_index.append(i)
        else:
            tails[k], tail_index[k] = -loss, i
    end = max(range(n), key=lambda i: (length[i], -i))
    if length[end] < 3:
        return None
    return float(lrs[start[end] + (end - start[end]) // 2])


def minimum_over_10(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """A tenth of the LR at the loss minimum past the start-up (one decade below where things start to go
    wrong), never below the curve's first LR (the window's start is the lowest LR it has evidence for)."""
    if not _usable(lrs, losses):
        return None
    i = _settled_minimum(losses)
    if i is None:
        return None
    return max(float(lrs[i]) / 10.0, float(lrs[0]))


def max_over_3(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """Smith's rule: a third of the divergence point.

    The divergence point is the first LR after the loss minimum (past the start-up) where the smoothed loss
    climbs back above where it started once the start-up was over (training is doing harm); a curve that
    never gets there diverges, at the latest, at its last point. Never below the curve's first LR.
    """
    if not _usable(lrs, losses):
        return None
    i_min = _settled_minimum(losses)
    if i_min is None:
        return None
    start_loss = losses[_settled(len(losses))]
    i_div = next((i for i in range(i_min + 1, len(losses)) if losses[i] >= start_loss), len(losses) - 1)
    return max(float(lrs[i_div]) / 3.0, float(lrs[0]))


def ceiling(lrs: Sequence[float], losses: Sequence[float], planned_end: float | None = None) -> float | None:
    """The adaptive method's ceiling, the LR its first trial takes: ``HEADROOM`` (half a decade) below the
    loss minimum past the start-up (``adaptive.basin_minimum``), never below the curve's first LR; ``None``
    while the loss has not fallen from its start (``adaptive.fell``), as an adaptive sweep reads it.

    The curve is read as far as an adaptive sweep's ramp runs (``adaptive.stop_step``): up to the first
    point at which ``adaptive.past_minimum`` stops it, at or past ``planned_end`` (the window's top, where
    the ramp was planned to end; unset: anywhere) and ``PAST_MINIMUM`` decades past the lowest loss so far.
    A lower dip further up, after the loss has risen, is a model the ramp has trained longest, close to
    divergence, and would lift the answer towards the edge. (An adaptive sweep also keeps its trials
    ``adaptive.spacing`` below the divergence edge; at the default spacing, half a decade, the edge lies
    above the minimum and never decides.)
    """
    if not _usable(lrs, losses):
        return None
    cut = stop_step(lrs, losses, planned_end or 0.0, PAST_MINIMUM) or min(len(lrs), len(losses))
    minimum = basin_minimum(lrs[:cut], losses[:cut])
    return None if minimum is None else max(minimum * 10.0**-HEADROOM, float(lrs[0]))


RULES: dict[str, Callable[[Sequence[float], Sequence[float]], float | None]] = {
    "ceiling": ceiling,
    "steepest": steepest,
    "valley": valley,
    "minimum-over-10": minimum_over_10,
    "max-over-3": max_over_3,
}
assert tuple(RULES) == SUGGESTION_RULES, "rule names must match the contract"


def all_suggestions(
    lrs: Sequence[float], losses: Sequence[float], planned_end: float | None = None
) -> dict[str, float | None]:
    """Every rule's suggestion, by name; ``planned_end`` is where the ramp was planned to end (see
    :func:`ceiling`: a noisy plateau low in the window must not end its reading)."""
    rules = RULES | {"ceiling": functools.partial(ceiling, planned_end=planned_end)}
    return {name: rule(lrs, losses) for name, rule in rules.items()}


def recommend(suggestions: dict[str, float | None], rule: str) -> tuple[str, float | None]:
    """The configured rule's value; when it found nothing, the first rule (in contract order) that did."""
    if suggestions.get(rule) is not None:
        return rule, suggestions[rule]
    for name in SUGGESTION_RULES:
        if suggestions.get(name) is not None:
            return name, suggestions[name]
    return rule, None
