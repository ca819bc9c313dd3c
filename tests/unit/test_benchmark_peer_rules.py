"""The peers' published rules as the benchmark applies them to a range test's curve: fastai's and
torch-lr-finder's.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.quality import peer_rules, scoring  # noqa: E402


def u_curve(n: int = 100) -> tuple[list[float], list[float]]:
    """Loss falls over log-LR, bottoms out at 1e-3, then climbs steeply."""
    lrs = scoring.log_spaced(1e-7, 1.0, n)
    losses = []
    for lr in lrs:
        x = math.log10(lr) + 3  # 0 at 1e-3
        losses.append(2.0 - 1.0 / (1 + math.exp(-3 * (-x - 2))) if x < 0 else 1.0 + 0.9 * x**2)
    return lrs, losses


def test_fastai_rules_on_a_u_shaped_curve() -> None:
    lrs, losses = u_curve()
    i_min = min(range(len(losses)), key=losses.__getitem__)
    assert peer_rules.fastai_minimum(lrs, losses) == pytest.approx(lrs[i_min] / 10)
    steep = peer_rules.fastai_steep(lrs, losses)
    assert steep is not None and 1e-6 < steep < lrs[i_min]  # on the falling side
    valley = peer_rules.fastai_valley(lrs, losses)
    assert valley is not None and lrs[0] < valley < lrs[i_min]  # inside the longest fall
    slide = peer_rules.fastai_slide(lrs, losses)
    assert slide is not None and slide < lrs[-1]
    flat = [1.0] * 30
    assert peer_rules.fastai_valley(lrs[:30], flat) == lrs[0]
    assert peer_rules.fastai_slide(lrs[:10], losses[:10]) is None


def test_fastai_view_drops_a_tenth_of_planned_steps_and_the_last_five() -> None:
    lrs, losses = u_curve(100)
    view_lrs, view_losses = peer_rules.fastai_view(lrs, losses, planned=100)
    assert view_lrs == lrs[10:95] and view_losses == losses[10:95]


def test_lrfinder_steepest_is_argmin_of_numpy_gradient_after_skipping() -> None:
    lrs = [10.0 ** (-7 + i * 0.1) for i in range(30)]
    losses = [5.0] * 30
    losses[20] = 1.0  # the sharpest drop is into index 20: gradient most negative at 19
    assert peer_rules.lrfinder_steepest(lrs, losses) == lrs[19]
    assert peer_rules.lrfinder_steepest(lrs[:12], losses[:12]) is None
