"""What a range test's ramp says: its loss minimum, divergence edge and stop, and the ceiling they set
for the trials."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from finetune_trainer.adaptive.fit import NOISE_FLOOR, fit_parabola, vertex
from finetune_trainer.config import AdaptiveSpec, CurvePoint, RangeTestSpec

HEADROOM = 0.5
"""Decades that trials and the recommendation stay below the range test's loss minimum."""
PAST_MINIMUM = 0.5
"""Decades past the range test's loss minimum at which an adaptive sweep's ramp stops (unless
``rangeTest.stopPastMinimum`` says otherwise): the trials and the recommendation stay ``HEADROOM`` below the
minimum, so what the loss does further up is never read. One smoothing memory at the default 20 steps per
decade. A lower minimum further up, after the loss has risen, is a dip near divergence on a model that the
ramp has trained longest, and would lift the ceiling towards the edge: on three of the benchmark's MiniLM
ramps it lay 0.66-0.76 decades past the first, above the LRs where those tasks' full runs collapse."""


@dataclass(frozen=True)
class Ramp:
    """What the range test tells the stages: its divergence ``edge`` (:func:`ramp_edge`: else the highest
    LR the ramp reached), its loss ``minimum`` (:func:`ramp_minimum`; ``None`` when unknown), a
    classifier's ``baseline`` (its ``baselineLoss``, the validation labels' entropy: see
    ``candidates.label_entropy``; ``None`` for a causal LM), the optimiser ``steps`` it spent (counted
    against ``adaptive.maxFineTunes``) and its lowest smoothed ``loss`` (its ``bestLoss``: whether the ramp
    learned where no trial did)."""

    edge: float
    minimum: float | None = None
    baseline: float | None = None
    steps: int = 0
    loss: float | None = None


def shift(lr: float, decades: float) -> float:
    """``lr`` moved ``decades`` up (down when negative) on a log10 scale."""
    return lr * 10.0**decades


def _startup(n: int) -> int:
    """Points at a smoothed curve's start that are the smoothing's start-up, not evidence (a tenth)."""
    return min(n - 1, math.ceil(0.1 * n))


def _settled(losses: Sequence[float], n: int) -> list[int]:
    """Indices of the first ``n`` smoothed losses past the start-up that are finite: the points read."""
    return [i for i in range(_startup(n), n) if math.isfinite(losses[i])] if n else []


def _fall(losses: Sequence[float], settled: Sequence[int]) -> float:
    """:func:`start_fall` over the points ``settled`` names (see :func:`_settled`)."""
    if not settled or losses[settled[0]] == 0:
        return 0.0
    start = losses[settled[0]]
    return (start - min(losses[i] for i in settled)) / abs(start)


def _fell(losses: Sequence[float], settled: Sequence[int]) -> bool:
    """:func:`fell` over the points ``settled`` names."""
    return _fall(losses, settled) > NOISE_FLOOR


def loss_minimum(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The learning rate at a range test's lowest smoothed loss (start-up skipped); ``None`` if no finite
    point, or while the loss has not :func:`fell` from where the ramp started. The ramp stops past it; the
    trials are placed below :func:`basin_minimum`."""
    finite = _settled(losses, min(len(lrs), len(losses)))
    if not _fell(losses, finite):
        return None
    return float(lrs[min(finite, key=lambda i: losses[i])])


def start_fall(losses: Sequence[float]) -> float:
    """How far a ramp's lowest smoothed loss lies below its start, as a share of the start: both read past
    the smoothing's start-up, non-finite points skipped; 0 without a finite point."""
    return _fall(losses, _settled(losses, len(losses)))


def fell(losses: Sequence[float]) -> bool:
    """Whether a ramp's smoothed loss has fallen from its start by more than the noise floor
    (:func:`start_fall`). Until it has, the ramp has trained nothing, and its lowest point and any rise
    above the start are noise: a new classifier head's loss hovers at the labels' entropy until the LR is
    high enough to learn. On a 0.36B classifier (the first design of ``benchmarks/tasks_gpu_cls.yaml``) a
    ramp whose lowest point was its start read its next point as a divergence edge, and the sweep ended
    ``DivergedAtMinimumLearningRate``, advising a lower window."""
    return _fell(losses, _settled(losses, len(losses)))


BASIN_POINTS = 5
"""Fewest ramp points around the lowest one that :func:`basin_minimum` fits a parabola through."""


def basin_minimum(lrs: Sequence[float], losses: Sequence[float], reach: float = PAST_MINIMUM) -> float | None:
    """Where a range test's smoothed loss bottoms out: the vertex of a parabola in log10(LR) fitted to the
    points within ``reach`` decades of the lowest one (the start-up skipped; the ramp's stretch past the
    lowest point), clamped to them; the lowest point's LR with fewer than ``BASIN_POINTS`` there or no
    basin (a fit that opens downwards). ``None`` if no finite point.

    A smoothed curve is flat and noisy at its bottom, so its lowest point wanders with the batches a seed
    draws; on the benchmark's ramps the vertex of the whole basin wandered less from seed to seed and sat
    closer to where full runs do best (``benchmarks/README.md``)."""
    lowest = loss_minimum(lrs, losses)
    if lowest is None or lowest <= 0:
        return lowest
    n = min(len(lrs), len(losses))
    centre = math.log10(lowest)
    points = [
        (float(lrs[i]), float(losses[i]))
        for i in range(_startup(n), n)
        if math.isfinite(losses[i]) and lrs[i] > 0 and abs(math.log10(lrs[i]) - centre) <= reach + 1e-9
    ]
    fit = fit_parabola(points) if len(points) >= BASIN_POINTS else None
    return (vertex(fit) if fit else None) or lowest


def past_minimum(lrs: Sequence[float], losses: Sequence[float], planned_end: float, decades: float) -> bool:
    """True once a ramp has reached its ``planned_end`` and run ``decades`` past its loss minimum (see
    :func:`loss_minimum`) without a lower one: the minimum is known."""
    if not lrs or lrs[-1] < planned_end:
        return False
    minimum = loss_minimum(lrs, losses)
    return minimum is not None and minimum > 0 and lrs[-1] >= shift(minimum, decades)


def stop_step(
    lrs: Sequence[float], losses: Sequence[float], planned_end: float, decades: float
) -> int | None:
    """How many points of a finished ramp an adaptive ramp would have run: the first prefix that
    :func:`past_minimum` stops (``planned_end`` read with a hair of tolerance, so a ramp that ends exactly
    there counts as having reached it); ``None`` when none does. ``suggest.ceiling`` and the benchmark's
    replays read a whole ramp this way."""
    end = planned_end * (1 - 1e-9)
    n = min(len(lrs), len(losses))
    return next((k for k in range(1, n + 1) if past_minimum(lrs[:k], losses[:k], end, decades)), None)


def range_test_spec(spec: RangeTestSpec, adaptive: AdaptiveSpec) -> RangeTestSpec:
    """The range test an adaptive sweep runs: the sweep's, stopping ``PAST_MINIMUM`` decades past the loss
    minimum, or ``adaptive.spacing`` if wider, unless ``stopPastMinimum`` is set (shared by ``recommend``
    and the operator's range-test Job). A ramp that stops before the loss climbs back has no divergence
    edge, and its last LR stands in for it; the ceiling stays ``spacing`` below the edge, so a shorter look
    would put that stand-in, not the minimum, in charge of the ceiling."""
    if spec.stop_past_minimum is not None:
        return spec
    return spec.model_copy(update={"stop_past_minimum": max(PAST_MINIMUM, adaptive.spacing)})


def curve_minimum(curve: Sequence[CurvePoint]) -> float | None:
    """:func:`basin_minimum` of a range-test curve as results and LRSweep statuses carry it, its non-finite
    points dropped first (the status never holds them), so ``recommend``, the operator and the plugin
    read the same minimum from the same curve."""
    points = [p for p in curve if math.isfinite(p.lr) and math.isfinite(p.loss)]
    return basin_minimum([p.lr for p in points], [p.loss for p in points])


def ramp_edge(divergence: float | None, highest: float | None) -> float | None:
    """The edge adaptive trials sit below: the range test's divergence edge, else the highest LR its ramp
    reached (a ramp stopped past its minimum never climbed back, and its last LR stands in); ``None``
    unless that is a positive number. ``recommend``, the operator and the benchmark's replay read it here."""
    edge = _number(divergence) or _number(highest)
    return edge if edge is not None and edge > 0 else None


def _number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def ramp_minimum(reported: float | None, curve: Sequence[CurvePoint]) -> float | None:
    """The range test's loss minimum as its result reports it (``lossMinimumLearningRate``, read from every
    step of the ramp), else :func:`curve_minimum` of its thinned curve (a result from a trainer that did
    not report it). ``recommend``, the operator and the plugin read it here, so they agree for any ramp:
    the curve a pod's termination message carries is cut to 100 points or fewer, ``recommend``'s to 200."""
    if reported is not None and math.isfinite(reported) and reported > 0:
        return reported
    return curve_minimum(curve)


def ceiling(spec: AdaptiveSpec, edge: float, minimum: float | None) -> tuple[float, bool]:
    """The highest learning rate trials and the recommendation may take, and whether the loss minimum
    (``HEADROOM`` decades below it) rather than the divergence edge (``spacing`` below it) set it."""
    below_edge = shift(edge, -spec.spacing)
    if minimum is not None and minimum > 0 and shift(minimum, -HEADROOM) < below_edge:
        return shift(minimum, -HEADROOM), True
    return below_edge, False


def divergence_edge(lrs: Sequence[float], losses: Sequence[float], stopped_early: bool) -> float | None:
    """Where training breaks on a range test's smoothed curve.

    The first LR after the loss minimum at which the smoothed loss is back above where the ramp started
    (training does harm from there on); when the ramp stopped on divergence or NaN first, its last LR. The
    start is read after the smoothing's start-up (the first tenth), whose first points are not evidence.
    ``None`` when the loss never turned up (the ramp ended still falling), or never fell (:func:`fell`: a
    rise above the start of a loss that has not come down is noise, not harm).
    """
    n = min(len(lrs), len(losses))
    if n == 0:
        return None
    finite = _settled(losses, n)
    if _fell(losses, finite):
        i_min = min(finite, key=lambda i: losses[i])
        start = losses[finite[0]]
        for i in range(i_min + 1, n):
            if math.isfinite(losses[i]) and losses[i] >= start:
                return float(lrs[i])
    return float(lrs[n - 1]) if stopped_early else None


def diverged_at_start(start: float | None, divergence: float | None) -> bool:
    """True when a ramp that started at ``start`` broke (its divergence edge, ``divergence``) within its
    first decade: the window starts too high."""
    return start is not None and divergence is not None and 0 < divergence <= start * 10
