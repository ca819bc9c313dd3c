"""Loss against learning rate as text: a log-x character plot any terminal shows (no dependency).

`panel` draws one series of (lr, loss) points on a shared log-LR axis; `axis` draws that axis with the
recommended learning rate (▲) and its interval (═) marked under it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

Y_LABEL = 8  # characters left of the plot for the loss labels


@dataclass(frozen=True)
class Scale:
    """The shared log10(LR) axis: `width` columns from `low` to `high`."""

    low: float
    high: float
    width: int = 64

    @classmethod
    def around(cls, lrs: Sequence[float], width: int = 64) -> Scale:
        logs = [math.log10(v) for v in lrs if v and v > 0 and math.isfinite(v)]
        lo, hi = (min(logs), max(logs)) if logs else (-6.0, -2.0)
        pad = max(0.1, 0.03 * (hi - lo))
        return cls(lo - pad, hi + pad, width)

    def column(self, lr: float) -> int:
        x = (math.log10(lr) - self.low) / (self.high - self.low)
        return max(0, min(self.width - 1, round(x * (self.width - 1))))


def panel(
    points: Sequence[tuple[float, float]],
    scale: Scale,
    height: int = 10,
    marker: str = "•",
    join: bool = True,
    markers: Sequence[str] | None = None,
    vertical: Sequence[float] = (),
) -> list[str]:
    """One plot of `points` (lr, loss): `marker` at each (or `markers[i]`), dots joining them when
    `join`, a dotted line at each LR in `vertical`. The loss axis frames the lowest point to a little
    above the first, so a blow-up at the end does not flatten the rest."""
    pts = [(lr, y) for lr, y in points if lr > 0 and math.isfinite(lr) and math.isfinite(y)]
    if not pts:
        return [" " * Y_LABEL + "(no points)"]
    ys = [y for _, y in pts]
    low = min(ys)
    top = max(ys) if not join else min(max(ys), pts[0][1] + 0.6 * max(pts[0][1] - low, 1e-9))
    top = top if top > low else low + 1.0
    grid = [[" "] * scale.width for _ in range(height)]

    def row(y: float) -> int | None:
        if y > top * (1 + 1e-9):
            return None  # above the frame: cut
        return max(0, min(height - 1, round((top - y) / (top - low) * (height - 1))))

    for lr in vertical:
        if lr and lr > 0:
            c = scale.column(lr)
            for r in range(height):
                grid[r][c] = "┊"
    if join:
        cols = [(scale.column(lr), y) for lr, y in pts]
        for (c0, y0), (c1, y1) in itertools.pairwise(cols):
            for c in range(c0 + 1, c1):
                r = row(y0 + (y1 - y0) * (c - c0) / (c1 - c0))
                if r is not None:
                    grid[r][c] = "·"
    for i, (lr, y) in enumerate(pts):
        r = row(y)
        grid[r if r is not None else 0][scale.column(lr)] = (
            (markers[i] if markers else marker) if r is not None else "↑"
        )
    labels = {0: top, height - 1: low, (height - 1) // 2: (top + low) / 2}
    return [
        (f"{labels[r]:>{Y_LABEL - 2}.3g} ┤" if r in labels else " " * (Y_LABEL - 1) + "│") + "".join(line)
        for r, line in enumerate(grid)
    ]


def axis(
    scale: Scale, recommended: float | None = None, interval: tuple[float, float] | None = None
) -> list[str]:
    """The LR axis: a rule with the interval (═) and the recommendation (▲), then decade labels."""
    rule = ["─"] * scale.width
    if interval:
        for c in range(scale.column(interval[0]), scale.column(interval[1]) + 1):
            rule[c] = "═"
    if recommended:
        rule[scale.column(recommended)] = "▲"
    labels = [" "] * (scale.width + 6)
    for decade in range(math.ceil(scale.low), math.floor(scale.high) + 1):
        text = f"1e{decade:+03d}".replace("+", "")
        c = scale.column(10.0**decade)
        start = max(0, c - len(text) // 2)
        if all(ch == " " for ch in labels[max(0, start - 1) : start + len(text) + 1]):
            labels[start : start + len(text)] = text
    return [" " * (Y_LABEL - 1) + "└" + "".join(rule), " " * Y_LABEL + "".join(labels).rstrip()]
