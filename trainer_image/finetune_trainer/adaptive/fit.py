"""Loss against log10(LR): the parabola fits, their vertex and the interval within noise of a pick."""

from __future__ import annotations

import math
from collections.abc import Sequence

from finetune_trainer.config import Interval, LossFit

NOISE_FLOOR = 0.005
"""The smallest loss noise assumed: 0.5% of the best loss (a fit through 3 points has no residual)."""
FIT_NEIGHBOURS = 2
"""Points on each side of the best trial that the stage-1 parabola uses."""


def fit_parabola(points: Sequence[tuple[float, float]], floor: float = NOISE_FLOOR) -> LossFit | None:
    """Least-squares ``loss = a x^2 + b x + c`` over (learning rate, loss) points, ``x = log10(lr)``.

    ``None`` for fewer than three distinct learning rates. ``noise`` is the residual's standard deviation
    (with 3 dof less), floored at ``floor`` x the best loss.
    """
    pts = sorted((math.log10(lr), y) for lr, y in points if lr > 0 and math.isfinite(y))
    if len({x for x, _ in pts}) < 3:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n  # centre x for a well-conditioned solve
    sums = [sum((x - mx) ** k for x, _ in pts) for k in range(5)]
    rhs = [sum(y * (x - mx) ** k for x, y in pts) for k in range(3)]
    matrix = [[sums[i + j] for j in range(3)] for i in range(3)]
    solved = _solve3(matrix, rhs)
    if solved is None:
        return None
    c0, b0, a = solved
    b = b0 - 2 * a * mx
    c = c0 - b0 * mx + a * mx * mx
    residual = [y - (a * x * x + b * x + c) for x, y in pts]
    dof = n - 3
    rms = math.sqrt(sum(r * r for r in residual) / dof) if dof > 0 else 0.0
    best = min(y for _, y in pts)
    return LossFit(
        a=a,
        b=b,
        c=c,
        low_learning_rate=10 ** pts[0][0],
        high_learning_rate=10 ** pts[-1][0],
        points=n,
        noise=max(rms, floor * abs(best)),
    )


def _solve3(m: list[list[float]], v: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting for a 3x3 system."""
    a = [[*row, v[i]] for i, row in enumerate(m)]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, 3):
            f = a[r][col] / a[col][col]
            for k in range(col, 4):
                a[r][k] -= f * a[col][k]
    x = [0.0, 0.0, 0.0]
    for r in (2, 1, 0):
        x[r] = (a[r][3] - sum(a[r][k] * x[k] for k in range(r + 1, 3))) / a[r][r]
    return x


def vertex(fit: LossFit) -> float | None:
    """The fit's minimum as a learning rate, clamped to the fitted points' range; ``None`` unless a basin."""
    if fit.a <= 0:
        return None
    x = -fit.b / (2 * fit.a)
    lo, hi = math.log10(fit.low_learning_rate), math.log10(fit.high_learning_rate)
    return 10 ** min(hi, max(lo, x))


def predicted(fit: LossFit, lr: float) -> float:
    x = math.log10(lr)
    return fit.a * x * x + fit.b * x + fit.c


def interval(fit: LossFit, lr: float, low: float, high: float, noise: float | None = None) -> Interval:
    """The learning rates around ``lr`` whose predicted loss is within ``noise`` of the prediction at
    ``lr``, clamped to the tested ``[low, high]``."""
    noise = fit.noise if noise is None else noise
    x0 = math.log10(lr)
    half = math.sqrt(noise / fit.a) if fit.a > 0 else math.inf
    lo = max(math.log10(low), x0 - half)
    hi = min(math.log10(high), x0 + half)
    return Interval(low=10 ** min(lo, x0), high=10 ** max(hi, x0))


def neighbourhood(points: list[tuple[float, float]], k: int) -> list[tuple[float, float]]:
    """The best point and up to ``k`` points either side of it (by learning rate)."""
    pts = sorted(points)
    i = min(range(len(pts)), key=lambda j: pts[j][1])
    lo, hi = max(0, i - k), min(len(pts), i + k + 1)
    while hi - lo < 3 and (lo > 0 or hi < len(pts)):  # keep three points at the curve's ends
        lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
    return pts[lo:hi]
