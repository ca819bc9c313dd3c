"""Suggestion rules on synthetic curves whose answers are known."""

from __future__ import annotations

import math

import pytest

from finetune_trainer.adaptive import (
    PAST_MINIMUM,
    basin_minimum,
    divergence_edge,
    past_minimum,
    ramp_edge,
)
from finetune_trainer.adaptive import (
    ceiling as adaptive_ceiling,
)
from finetune_trainer.config import AdaptiveSpec
from finetune_trainer.suggest import (
    START_SKIP,
    EmaSmoother,
    all_suggestions,
    ceiling,
    max_over_3,
    minimum_over_10,
    recommend,
    smooth,
    steepest,
    valley,
)


def classic_curve(n: int = 121) -> tuple[list[float], list[float]]:
    """Plateau at 2.0, a sigmoid drop to 0.5 centred at 1e-4, an explosion from ~1e-2.

    x = log10(lr) from -7 to -1 in steps of 0.05.
    """
    xs = [-7 + 6 * i / (n - 1) for i in range(n)]
    lrs = [10**x for x in xs]
    losses = [0.5 + 1.5 / (1 + math.exp(3 * (x + 4))) + math.exp(4 * (x + 2)) for x in xs]
    return lrs, losses


def test_steepest_is_the_sigmoid_centre() -> None:
    lrs, losses = classic_curve()
    assert steepest(lrs, losses) == pytest.approx(1e-4, rel=0.01)


def with_startup_transient(lrs: list[float], losses: list[float]) -> tuple[list[float], list[float]]:
    """The curve plus a sharp fall over its first few points, as a moving average resting on only a few
    batches produces: steeper per log-LR than the real drop, and meaningless."""
    return lrs, [y + 1.0 * math.exp(-i) for i, y in enumerate(losses)]


def test_steepest_ignores_the_start_up_transient() -> None:
    lrs, losses = with_startup_transient(*classic_curve())
    assert steepest(lrs, losses) == pytest.approx(1e-4, rel=0.01)


def test_steepest_on_a_smoothed_noisy_curve_lands_on_the_drop_not_the_first_points() -> None:
    import random

    lrs, clean = classic_curve()
    rng = random.Random(0)
    losses = smooth([y + rng.gauss(0.0, 0.3) for y in clean], 0.05)  # the range test's own smoothing
    got = steepest(lrs, losses)
    assert got is not None
    assert 1e-5 < got < lrs[losses.index(min(losses))]


@pytest.mark.parametrize("rule", [ceiling, steepest, minimum_over_10, max_over_3])
def test_rules_need_a_minimum_past_the_start_up(rule: object) -> None:
    lrs = [10.0**-i for i in range(20, 0, -1)]
    losses = [1.0, 0.5, *(0.6 + 0.01 * i for i in range(18))]  # lowest at the second point
    assert rule(lrs, losses) is None  # type: ignore[operator]


def with_startup_dip(lrs: list[float], losses: list[float]) -> tuple[list[float], list[float]]:
    """The curve with its first two points far below everything after, as a moving average resting on one
    lucky batch produces: the curve's minimum, and meaningless."""
    return lrs, [y - dip for y, dip in zip(losses, [1.0, 1.7], strict=False)] + losses[2:]


@pytest.mark.parametrize("rule", [ceiling, steepest, minimum_over_10, max_over_3])
def test_rules_reading_the_minimum_ignore_a_start_up_dip(rule: object) -> None:
    lrs, clean = classic_curve()
    _, dipped = with_startup_dip(lrs, clean)
    assert min(dipped) == dipped[1]
    want = rule(lrs, clean)  # type: ignore[operator]
    assert want is not None and rule(lrs, dipped) == want  # type: ignore[operator]


def test_minimum_rules_never_go_below_the_curves_first_lr() -> None:
    lrs = [10 ** (-5 + 0.05 * i) for i in range(20)]  # a short window: one decade
    losses = [2.0, 1.9, 1.8, 1.7, 1.6, 2.5, *(3.0 + i for i in range(14))]  # minimum at the fifth point
    assert lrs[4] / 10 < lrs[0] and lrs[5] / 3 < lrs[0]  # what the bare rules would say
    assert minimum_over_10(lrs, losses) == lrs[0]
    assert max_over_3(lrs, losses) == lrs[0]
    assert ceiling(lrs, losses) == lrs[0]


def test_minimum_over_10_is_a_decade_below_the_minimum() -> None:
    lrs, losses = classic_curve()
    i = losses.index(min(losses))
    assert minimum_over_10(lrs, losses) == pytest.approx(lrs[i] / 10)
    assert 1e-4 < lrs[i] < 1e-2


def test_the_ceiling_is_half_a_decade_below_the_minimum() -> None:
    lrs, losses = classic_curve()
    i = losses.index(min(losses))
    minimum = basin_minimum(lrs, losses)  # the vertex of the basin around the lowest point
    assert minimum is not None and abs(math.log10(minimum / lrs[i])) < 0.5
    assert ceiling(lrs, losses) == pytest.approx(minimum / 10**0.5)


def test_the_ceiling_ignores_a_lower_dip_after_the_loss_has_risen() -> None:
    """A full range test runs on to divergence; a dip past the first minimum (a model trained longest, close
    to divergence) would lift ``minimum-over-10`` towards the edge, but not the ceiling."""
    lrs, losses = classic_curve()
    i = losses.index(min(losses))
    j = i + 14  # 0.7 decades further up, where the loss has risen
    dipped = [*losses[:j], losses[i] - 0.05, *losses[j + 1 :]]
    assert minimum_over_10(lrs, dipped) == pytest.approx(lrs[j] / 10)
    assert ceiling(lrs, dipped) == pytest.approx(ceiling(lrs, losses))
    assert ceiling(lrs, dipped) == pytest.approx(basin_minimum(lrs[: j - 3], losses[: j - 3]) / 10**0.5)


@pytest.mark.parametrize("planned_end", [1e-4, 1e-3])
def test_the_ceiling_rule_is_where_an_adaptive_sweeps_trials_start(planned_end: float) -> None:
    """One ceiling: the rule read off a whole ramp (a `rangeTest` sweep's, run on to divergence) equals the
    ceiling an adaptive sweep computes from its own ramp, which stops past the minimum, on a noisy curve."""
    import random

    lrs, clean = classic_curve()
    rng = random.Random(3)
    losses = smooth([y + rng.gauss(0.0, 0.2) for y in clean], 0.1)
    stop = next(
        n for n in range(1, len(lrs) + 1) if past_minimum(lrs[:n], losses[:n], planned_end, PAST_MINIMUM)
    )
    ramp, ramp_losses = lrs[:stop], losses[:stop]
    assert stop < len(lrs), "the adaptive ramp stopped before the end of the curve"
    edge = ramp_edge(divergence_edge(ramp, ramp_losses, stopped_early=False), ramp[-1])
    assert edge is not None
    top, by_minimum = adaptive_ceiling(AdaptiveSpec(), edge, basin_minimum(ramp, ramp_losses))
    assert by_minimum
    assert ceiling(lrs, losses, planned_end) == pytest.approx(top)
    assert all_suggestions(lrs, losses, planned_end)["ceiling"] == pytest.approx(top)
    assert ceiling(lrs, losses) < top / 100, "without the planned end, the noisy plateau ends the reading"


def test_the_ceiling_reads_no_minimum_where_an_adaptive_sweep_reads_none() -> None:
    """A new head's loss sits at the labels' entropy until the LR is high enough: a noise dip there (0.2%,
    under the noise floor) is no minimum for an adaptive sweep (``adaptive.fell``), so it neither ends the
    ceiling's reading nor sets it; the ceiling comes from the minimum where the loss really fell. A ramp that
    never falls has no ceiling at all, not one from its noise."""
    lrs = [10 ** (-7 + 0.05 * i) for i in range(101)]  # 1e-7 .. 1e-2
    plateau = [0.69] * 50  # up to 3e-5: nothing learned
    plateau[20] = 0.69 * (1 - 0.002)  # a noise dip at 1e-6
    fall = [0.69 - 0.3 * math.sin(math.pi * i / 50) for i in range(1, 51)]  # down to 0.39 and back up
    losses = [*plateau, *fall, 0.8]
    minimum = basin_minimum(lrs, losses)
    assert minimum is not None and 1e-4 < minimum < 1e-3
    assert ceiling(lrs, losses) == pytest.approx(minimum / 10**0.5)
    flat = [*plateau, *(0.69 + 0.001 * (i % 2) for i in range(51))]
    assert basin_minimum(lrs, flat) is None and ceiling(lrs, flat) is None
    assert all_suggestions(lrs, flat)["ceiling"] is None


def test_max_over_3_is_a_third_of_where_loss_climbs_back_above_its_start() -> None:
    lrs, losses = classic_curve()
    i_min = losses.index(min(losses))
    start = losses[math.ceil(START_SKIP * len(losses))]  # where it started once the start-up was over
    i_div = next(i for i in range(i_min, len(losses)) if losses[i] >= start)
    assert max_over_3(lrs, losses) == pytest.approx(lrs[i_div] / 3)
    assert 1e-2 < lrs[i_div] < 1e-1


def test_max_over_3_without_divergence_uses_the_last_point() -> None:
    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert max_over_3(lrs, [5, 4, 3, 2, 1]) == pytest.approx(1e-1 / 3)


def test_valley_is_the_middle_of_the_longest_decreasing_run() -> None:
    lrs = [float(10**-i) for i in range(10, 0, -1)]  # 1e-10 .. 1e-1
    # a noisy descent (bumps at 1 and 4 are skipped by the subsequence), then a rise
    losses = [3.0, 3.1, 2.9, 2.5, 2.7, 2.0, 1.5, 1.0, 2.0, 4.0]
    # longest decreasing subsequences (length 6) end at index 7 and start at 0 or 1; the one through the
    # higher loss 3.1 (index 1) is kept, as it can be extended furthest → indices 1 … 7, middle index 4
    assert valley(lrs, losses) == lrs[4]


def test_valley_is_fast_on_long_curves() -> None:
    import time

    lrs, losses = classic_curve(20001)
    started = time.perf_counter()
    assert valley(lrs, losses) is not None
    assert time.perf_counter() - started < 1.0  # O(n log n): a 10,000-step range test is not a bottleneck


def test_valley_on_the_classic_curve_sits_inside_the_drop() -> None:
    lrs, losses = classic_curve()
    got = valley(lrs, losses)
    assert got is not None
    assert 1e-6 < got < lrs[losses.index(min(losses))]


@pytest.mark.parametrize("rule", [ceiling, steepest, valley, minimum_over_10, max_over_3])
def test_rules_return_none_when_the_curve_says_nothing(rule: object) -> None:
    assert rule([1e-5, 1e-4], [1.0, 0.9]) is None  # type: ignore[operator]  # too short
    rising = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    lrs = [10.0**-i for i in range(6, 0, -1)]
    assert rule(lrs, rising) is None  # type: ignore[operator]  # never falls
    assert rule(lrs, [1.0, 0.9, float("nan"), 0.7, 0.6, 0.5]) is None  # type: ignore[operator]


def test_all_suggestions_names_every_rule() -> None:
    lrs, losses = classic_curve()
    got = all_suggestions(lrs, losses)
    assert set(got) == {"ceiling", "steepest", "valley", "minimum-over-10", "max-over-3"}
    assert all(v is not None and v > 0 for v in got.values())


def test_recommend_falls_back_in_contract_order() -> None:
    assert recommend({"valley": 1e-4, "steepest": 2e-4}, "valley") == ("valley", 1e-4)
    assert recommend({"valley": None, "steepest": 2e-4}, "valley") == ("steepest", 2e-4)
    assert recommend({"valley": None}, "valley") == ("valley", None)


def test_ema_is_bias_corrected() -> None:
    ema = EmaSmoother(0.05)
    assert ema.update(4.0) == pytest.approx(4.0)  # no pull towards zero at the start
    assert ema.update(4.0) == pytest.approx(4.0)
    assert smooth([1.0, 3.0], 1.0) == [1.0, 3.0]  # weight 1 = no smoothing
    got = smooth([2.0, 4.0], 0.5)
    assert got[1] == pytest.approx((0.5 * 0.5 * 2.0 + 0.5 * 4.0) / (1 - 0.25))
