"""The adaptive recommender's stages, as pure functions shared by the operator and ``recommend``.

    range test ──► ceiling: half a decade below the loss minimum (and below the divergence edge)
           ──► stage 1: short trials at log-spaced candidates from the ceiling down
               (extended past its lowest candidate while the best trial sits there)
           ──► stage 2: longer trials around the stage-1 minimum ──► parabola in log10(LR) ──► LR + interval
           ──► horizon: the minimum's fall from stage-1 to stage-2 trials, when larger than the trials'
               noise, extended to the fine-tune's length

A range test finds where training breaks, not where a finished run is best, so it only bounds the search:
the LR at which a ramp's loss bottoms out is already too high for a whole run (fastai's rules take a tenth
of it), and short trials favour high LRs that a longer run pays for, so neither the trials nor the
recommendation go above that ceiling. Trials shorter than the fine-tune can still miss where a longer run's
optimum lies (a classifier that memorises noisy labels only does so late): when the minimum moved down
from the stage-1 to the twice-as-long stage-2 trials, the move is extended as a power law in steps to the
fine-tune's length (the optimum's drift with the training horizon, Bjorck et al. 2024), never upwards and
at most ``HORIZON_REACH`` decades down; and only when the stage-2 parabola puts the stage-1 minimum above its
own minimum by more than the noise (outside the interval the status reports): extending a fall the trials
do not resolve would multiply noise by the length ratio.
A classifier's trial whose loss is not below the entropy of the validation labels (the range test's
``baselineLoss``: the best that ignoring the input can score) learned nothing from its inputs, and its loss
says nothing about its LR: such trials are not extended downwards (a lower LR learns less), stage 2 then
tries the ceiling's neighbourhood at twice the length, and when no trial of either stage learned the sweep
ends ``NothingTrained`` (weak): with the ceiling, unconfirmed, when the range test's ramp learned (its lowest
loss below that entropy: the ramp trained longer than the trials), else with no LR.
Trials are judged on validation loss after a full warmup + decay, never mid-run, and (``matchEpochs``) each
trains on the share of the rows that its length is of the fine-tune's, so it makes the fine-tune's passes
over its data: memorising that only a later epoch brings shows in the trial too. The whole sweep, range test
included, spends at most ``adaptive.maxFineTunes`` fine-tunes' worth of steps: on a short fine-tune stage 2
is shortened to fit, or skipped so that stage 1 decides (no horizon step then). ``next_step`` is the whole
decision: given the edge and the trials finished so far it returns the trials the current stage needs, or
the recommendation. It keeps no state, so the operator can call it on every reconcile (trials as Jobs) and
``recommend`` in a loop (trials in-process). Only pydantic and arithmetic here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from finetune_trainer.config import (
    AdaptiveSpec,
    CurvePoint,
    Interval,
    LossFit,
    RangeTestSpec,
    Recommendation,
    TrainingSections,
    TrialRecord,
)

STAGE_1, STAGE_2 = 1, 2
MIN_TRIAL_STEPS = 20
"""Shorter trials barely move a classifier off its start: their ranking is noise."""
TRIAL_FRACTION = 8
"""A stage-1 trial runs an eighth of the planned fine-tune (when its length is known)."""
DEFAULT_TRIAL_STEPS = 50
NOISE_FLOOR = 0.005
"""The smallest loss noise assumed: 0.5% of the best loss (a fit through 3 points has no residual)."""
FIT_NEIGHBOURS = 2
"""Points on each side of the best trial that the stage-1 parabola uses."""
HEADROOM = 0.5
"""Decades that trials and the recommendation stay below the range test's loss minimum."""
PAST_MINIMUM = 0.5
"""Decades past the range test's loss minimum at which an adaptive sweep's ramp stops (unless
``rangeTest.stopPastMinimum`` says otherwise): the trials and the recommendation stay ``HEADROOM`` below the
minimum, so what the loss does further up is never read. One smoothing memory at the default 20 steps per
decade. A lower minimum further up, after the loss has risen, is a dip near divergence on a model that the
ramp has trained longest, and would lift the ceiling towards the edge: on three of the benchmark's MiniLM
ramps it lay 0.66-0.76 decades past the first, above the LRs where those tasks' full runs collapse."""
HORIZON_REACH = 1.0
"""Decades the horizon step may move the stage-2 minimum down at most: an extrapolation, so bounded by
itself, not by how far down stage 1 happened to try (its low candidates barely train in a short trial)."""
MIN_NARROWING = 1.5
"""Stage-2 trials shorter than this many stage-1 trials' lengths barely see a longer run than stage 1 did:
where ``adaptive.maxFineTunes`` leaves no room for them, stage 1 decides."""


@dataclass(frozen=True)
class TrialRequest:
    """A trial the current stage needs: its identity (stage, index), learning rate and length."""

    stage: int
    index: int
    learning_rate: float
    steps: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.stage, self.index)


@dataclass(frozen=True)
class AdaptiveStep:
    """What to do next: run ``trials`` (every trial of the stage so far; the finished ones included) or,
    when ``done`` is set, report it."""

    trials: tuple[TrialRequest, ...] = ()
    done: Recommendation | None = None

    @property
    def stage(self) -> int:
        return max((t.stage for t in self.trials), default=STAGE_1)


# ------------------------------------------------------------------------------------------------ window


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
    return minimum is not None and minimum > 0 and lrs[-1] >= _shift(minimum, decades)


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
    below_edge = _shift(edge, -spec.spacing)
    if minimum is not None and minimum > 0 and _shift(minimum, -HEADROOM) < below_edge:
        return _shift(minimum, -HEADROOM), True
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


def trial_steps(spec: AdaptiveSpec, max_steps: int | None) -> tuple[int, int]:
    """Optimiser steps of a stage-1 and a stage-2 trial."""
    if spec.trial_steps is not None:
        first = spec.trial_steps
    elif max_steps is not None:
        first = max(MIN_TRIAL_STEPS, math.ceil(max_steps / TRIAL_FRACTION))
    else:
        first = DEFAULT_TRIAL_STEPS
    return first, max(first, math.ceil(first * spec.narrowing_factor))


def trial_budget(spec: AdaptiveSpec, max_steps: int | None, ramp_steps: int = 0) -> int | None:
    """Optimiser steps that the trials may spend in all: ``adaptive.maxFineTunes`` fine-tunes' worth less
    the range test's ``ramp_steps``; ``None`` when unbounded (a run sized in epochs)."""
    if max_steps is None:
        return None
    return max(0, math.floor(spec.max_fine_tunes * max_steps) - ramp_steps)


def _spent(trials: Sequence[TrialRequest]) -> int:
    return sum(t.steps for t in trials)


def _room(spec: AdaptiveSpec, steps1: int, steps2: int, left: int | None) -> tuple[int, int]:
    """(the steps each stage-2 trial gets within the ``left`` of the budget, the least it needs to be
    worth running: see ``MIN_NARROWING``); stage 1 decides when the first is below the second."""
    if left is None:
        return steps2, 0
    return min(steps2, left // spec.finalists), min(steps2, math.ceil(MIN_NARROWING * steps1))


def stage_two_fits(
    spec: AdaptiveSpec, stage1: Sequence[TrialRequest], max_steps: int | None, ramp_steps: int = 0
) -> bool:
    """Whether ``adaptive.maxFineTunes`` leaves stage 2 room after the stage-1 trials ``stage1`` (as far
    as they are known: an extension still to come can only take room away)."""
    steps1, steps2 = trial_steps(spec, max_steps)
    budget = trial_budget(spec, max_steps, ramp_steps)
    fitting, need = _room(spec, steps1, steps2, None if budget is None else budget - _spent(stage1))
    return fitting >= need


Sections = TypeVar("Sections", bound=TrainingSections)


def sized_by_range_test(sections: Sections, fine_tune_steps: int | None) -> Sections:
    """``sections`` with ``optimization.maxSteps`` set to the fine-tune's length that the range test counted
    (its ``fineTuneSteps``) when the fine-tune is sized in epochs: the trials' lengths, their share of the
    data and the ``adaptive.maxFineTunes`` budget follow the fine-tune's steps, and only the trainer, which
    reads the data, can count them. Unchanged when ``maxSteps`` is set or the count is unknown."""
    if sections.optimization.max_steps is not None or not fine_tune_steps:
        return sections
    optimization = sections.optimization.model_copy(update={"max_steps": fine_tune_steps})
    return sections.model_copy(update={"optimization": optimization})


def trial_sections(sections: TrainingSections, steps: int, match_epochs: bool = False) -> dict[str, object]:
    """The training sections of a trial of ``steps`` steps: the recipe cut short, with its warmup and decay
    scaled to fit and a validation pass at the end (keyword arguments for ``TrainerConfig``). With
    ``match_epochs`` (an adaptive sweep's trials, ``adaptive.matchEpochs``) the trial trains on the share of
    the data that its length is of the planned fine-tune's, so it passes over it as often."""
    optimization = sections.optimization.model_copy(update={"max_steps": steps})
    schedule = sections.schedule
    if schedule.warmup_steps is not None and schedule.warmup_steps >= steps:
        schedule = schedule.model_copy(update={"warmup_steps": None, "warmup_ratio": 0.1})
    evaluation = sections.evaluation.model_copy(update={"every_steps": steps})
    dataset = sections.dataset
    planned = sections.optimization.max_steps
    if match_epochs and planned is not None and steps < planned:
        share = steps / planned * (dataset.sample_fraction or 1.0)
        dataset = dataset.model_copy(update={"sample_fraction": share})
    return {
        "model": sections.model,
        "dataset": dataset,
        "adapter": sections.adapter,
        "optimization": optimization,
        "schedule": schedule,
        "evaluation": evaluation,
    }


# ------------------------------------------------------------------------------------------ candidates


def _shift(lr: float, decades: float) -> float:
    return lr * 10.0**decades


def stage_one(
    spec: AdaptiveSpec,
    edge: float,
    steps: int,
    finished: dict[tuple[int, int], TrialRecord],
    minimum: float | None = None,
    baseline: float | None = None,
    budget: int | None = None,
) -> tuple[list[TrialRequest], bool]:
    """Stage 1's trials so far and whether they are all finished.

    The candidates sit at the ceiling and ``spacing``, 2x``spacing``, … decades below it. While the best
    finished trial is the lowest (or every trial diverged), two more go below it, unless none of them
    :func:`trained`; while it is the highest (or none trained) and the divergence edge (not the loss
    minimum) set the ceiling, one goes half-way to the edge; at most ``maxExtensions`` times, and only
    while the stage's steps stay within ``budget`` (the candidates themselves always run).
    """
    top, capped = ceiling(spec, edge, minimum)
    room = top if capped else edge
    trials = [TrialRequest(STAGE_1, k, _shift(top, -spec.spacing * k), steps) for k in range(spec.candidates)]
    for extension in range(spec.max_extensions + 1):
        results = [finished.get(t.key) for t in trials]
        if any(r is None for r in results):
            return trials, False
        extra = _extension(spec, room, trials, results, baseline)  # type: ignore[arg-type]
        if not extra or extension == spec.max_extensions or len(trials) + len(extra) > 64:
            return trials, True
        if budget is not None and _spent(trials) + len(extra) * steps > budget:
            return trials, True
        trials += [TrialRequest(STAGE_1, len(trials) + j, lr, steps) for j, lr in enumerate(extra)]
    return trials, True  # pragma: no cover (the loop always returns)


def _extension(
    spec: AdaptiveSpec,
    room: float,
    trials: Sequence[TrialRequest],
    results: Sequence[TrialRecord],
    baseline: float | None = None,
) -> list[float]:
    """Candidates past stage 1's ends: two below the lowest, or one half-way from the highest up to
    ``room`` (the only way when no trial trained: a lower LR trains less)."""
    ok = [(t.learning_rate, float(r.eval_loss)) for t, r in zip(trials, results, strict=True) if _finite(r)]  # type: ignore[arg-type]
    lowest = min(t.learning_rate for t in trials)
    below = [_shift(lowest, -spec.spacing), _shift(lowest, -2 * spec.spacing)]
    if not ok:
        return below
    best_lr = min(ok, key=lambda p: p[1])[0]
    learned = _any_trained(ok, baseline)
    if best_lr <= lowest and learned:
        return below
    highest = max(t.learning_rate for t in trials)
    if (best_lr >= highest or not learned) and math.log10(room / highest) > 0.2:
        return [math.sqrt(highest * room)]
    return []


def stage_two(
    spec: AdaptiveSpec,
    centre: float,
    edge: float,
    steps: int,
    finished: dict[tuple[int, int], TrialRecord],
    minimum: float | None = None,
    baseline: float | None = None,
    budget: int | None = None,
) -> tuple[list[TrialRequest], bool]:
    """Stage 2's trials so far and whether they are all finished.

    ``finalists`` longer trials, half a ``spacing`` apart, centred on the stage-1 minimum. While the best
    of them is the lowest or the highest, one more goes half a ``spacing`` further out (never above the
    ceiling, never up to the divergence edge; never down when none of them :func:`trained`), at most
    ``maxExtensions`` times, and only while the stage's steps stay within ``budget``: the final parabola
    then brackets its minimum.
    """
    step = spec.spacing / 2
    half = (spec.finalists - 1) / 2
    top, capped = ceiling(spec, edge, minimum)
    limit = top * (1 + 1e-9) if capped else edge
    # the highest finalist stays at or below the ceiling, and below the edge
    centre = min(centre, _shift(top, -half * step) if capped else _shift(edge, -(half + 0.5) * step))
    trials = [
        TrialRequest(STAGE_2, j, _shift(centre, (j - half) * step), steps) for j in range(spec.finalists)
    ]
    for extension in range(spec.max_extensions + 1):
        results = [finished.get(t.key) for t in trials]
        if any(r is None for r in results):
            return trials, False
        ok = [(t.learning_rate, r.eval_loss) for t, r in zip(trials, results, strict=True) if _finite(r)]
        if not ok or extension == spec.max_extensions:
            return trials, True
        best = min(ok, key=lambda p: p[1])[0]
        lrs = [t.learning_rate for t in trials]
        learned = _any_trained(ok, baseline)  # type: ignore[arg-type]
        if (best >= max(lrs) or not learned) and _shift(max(lrs), step) < limit:
            extra = _shift(max(lrs), step)
        elif best <= min(lrs) and learned:
            extra = _shift(min(lrs), -step)
        else:
            return trials, True
        if budget is not None and _spent(trials) + steps > budget:
            return trials, True
        trials.append(TrialRequest(STAGE_2, len(trials), extra, steps))
    return trials, True  # pragma: no cover (the loop always returns)


def _finite(r: TrialRecord | None) -> bool:
    return r is not None and not r.diverged and r.eval_loss is not None and math.isfinite(r.eval_loss)


def label_entropy(labels: Sequence[int]) -> float | None:
    """The entropy of a classifier's validation labels: the lowest validation loss that any prediction
    ignoring the input can score (the labels' own frequencies, known in hindsight), so a model that learned
    only the label frequencies, or nothing, scores at or above it. ``None`` with fewer than two distinct
    labels (a constant then scores nothing: the loss cannot tell learning apart)."""
    counts = Counter(labels)
    if len(counts) < 2:
        return None
    n = len(labels)
    return -sum(c / n * math.log(c / n) for c in counts.values())


def trained(loss: float, baseline: float | None) -> bool:
    """Whether a trial's loss lies below the ``baseline`` (see :func:`label_entropy`) by more than the noise
    floor; always, when there is no baseline (a causal LM's trials always move its loss)."""
    return baseline is None or loss < baseline * (1 - NOISE_FLOOR)


def _any_trained(points: Sequence[tuple[float, float]], baseline: float | None) -> bool:
    return any(trained(loss, baseline) for _, loss in points)


# ------------------------------------------------------------------------------------------------ fit


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


def _neighbourhood(points: list[tuple[float, float]], k: int) -> list[tuple[float, float]]:
    """The best point and up to ``k`` points either side of it (by learning rate)."""
    pts = sorted(points)
    i = min(range(len(pts)), key=lambda j: pts[j][1])
    lo, hi = max(0, i - k), min(len(pts), i + k + 1)
    while hi - lo < 3 and (lo > 0 or hi < len(pts)):  # keep three points at the curve's ends
        lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
    return pts[lo:hi]


# ------------------------------------------------------------------------------------------------ stages


def next_step(
    spec: AdaptiveSpec,
    edge: float,
    finished: Sequence[TrialRecord],
    max_steps: int | None = None,
    minimum: float | None = None,
    baseline: float | None = None,
    ramp_steps: int = 0,
    ramp_loss: float | None = None,
) -> AdaptiveStep:
    """The next thing to do, given the divergence edge, the range test's loss minimum (see
    :func:`loss_minimum`; ``None`` when unknown), its ``baselineLoss`` (see :func:`label_entropy`;
    ``None`` for a causal LM), the optimiser steps it spent (``ramp_steps``, counted against
    ``adaptive.maxFineTunes``), its lowest smoothed loss (``ramp_loss``, its ``bestLoss``: whether the ramp
    learned where no trial did) and every trial finished so far."""
    done = {(r.stage, r.index): r for r in finished}
    steps1, steps2 = trial_steps(spec, max_steps)
    budget = trial_budget(spec, max_steps, ramp_steps)
    top, capped = ceiling(spec, edge, minimum)
    stage1, complete = stage_one(spec, edge, steps1, done, minimum, baseline, budget)
    if not complete:
        return AdaptiveStep(tuple(stage1))
    records1 = [done[t.key] for t in stage1]
    ok1 = [(r.learning_rate, float(r.eval_loss)) for r in records1 if _finite(r)]  # type: ignore[arg-type]
    tested = [t.learning_rate for t in stage1]
    if not ok1:
        lowest = min(tested)
        return _finish(
            None,
            "AllTrialsDiverged",
            f"every trial diverged, down to learning rate {lowest:.3g}, though the range test's ramp "
            f"did not diverge below {edge:.3g}: check the recipe (warmup, maxGradNorm), or raise "
            f"adaptive.maxExtensions (now {spec.max_extensions}) to try lower",
            "stage-1-best",
        )
    best_lr, best_loss = min(ok1, key=lambda p: p[1])
    learned1 = _any_trained(ok1, baseline)
    fit1 = fit_parabola(_neighbourhood(ok1, FIT_NEIGHBOURS)) if len(ok1) >= 3 and learned1 else None
    noise = fit1.noise if fit1 else NOISE_FLOOR * abs(best_loss)
    if learned1 and best_lr <= min(tested):
        # the budget stopped stage 1 where, unbounded, it would have gone lower
        no_room = budget is not None and len(stage_one(spec, edge, steps1, done, minimum, baseline)[0]) > len(
            stage1
        )
        return _finish(
            best_lr,
            "BestAtLowerEdge",
            f"the best trial is the lowest learning rate tried ({best_lr:.3g}): the optimum may lie lower; "
            "raise adaptive.maxExtensions or adaptive.spacing"
            + (
                f", or adaptive.maxFineTunes (now {spec.max_fine_tunes:g}), which left no room"
                if no_room
                else ""
            ),
            "stage-1-best",
            best_loss=best_loss,
        )
    if learned1 and max(y for _, y in ok1) - best_loss <= noise:
        return _finish(
            best_lr,
            "FlatCurve",
            f"every candidate's loss lies within noise ({noise:.3g}) of the best: the learning rate barely "
            "matters in this window, or the trials are too short to tell; raise adaptive.trialSteps",
            "stage-1-best",
            best_loss=best_loss,
        )
    left = None if budget is None else budget - _spent(stage1)
    fitting, need = _room(spec, steps1, steps2, left)
    if fitting < need:
        window = (edge, top, capped, minimum)
        return _stage_one_decision(
            spec, window, ok1, fit1, tested, steps1, (fitting, need), baseline, ramp_loss
        )
    steps2 = fitting
    # nothing to rank when no trial learned: the ceiling's neighbourhood, in trials twice as long
    centre = ((vertex(fit1) if fit1 else None) or best_lr) if learned1 else top
    stage2, complete = stage_two(spec, centre, edge, steps2, done, minimum, baseline, left)
    if not complete:
        return AdaptiveStep(tuple(stage1 + stage2))
    ok2 = [(r.learning_rate, float(r.eval_loss)) for t in stage2 if _finite(r := done[t.key])]  # type: ignore[arg-type]
    everything = tested + [t.learning_rate for t in stage2]
    low, high = min(everything), max(everything)
    if not learned1 and not _any_trained(ok2, baseline):
        return _nothing_trained(
            f"{_nothing_below(baseline, high, steps2)}: the trials are too short for this task to learn "
            "anything",
            "adaptive.trialSteps",
            "stage-2-best",
            top=top,
            ramp_loss=ramp_loss,
            baseline=baseline,
            best_loss=min((y for _, y in ok1 + ok2), default=None),
        )
    untrained = (
        f"; stage 1 learned nothing (no trial below {baseline:.4g}, the validation labels' entropy), so "
        "stage 2 tried the ceiling"
        if not learned1 and baseline is not None
        else ""
    )
    fit2 = fit_parabola(_neighbourhood(ok2, FIT_NEIGHBOURS)) if len(ok2) >= 3 else None
    lr2 = vertex(fit2) if fit2 else None
    best2, loss2 = min(ok2, key=lambda p: p[1]) if ok2 else (centre, best_loss)
    if ok2 and not capped:
        highest = max(t.learning_rate for t in stage2)
        if (upper := _upper_edge(spec, edge, best2, highest, loss2, "stage-2-best")) is not None:
            return upper
    if fit2 is not None and lr2 is not None:
        noise2 = max(noise * _scale(ok2, best_loss), fit2.noise)
        fit2 = fit2.model_copy(update={"noise": noise2})
        at_ceiling = _held_at_ceiling(lr2, top, capped, minimum)
        message = (
            f"stage-2 parabola minimum at {lr2:.3g} over {len(ok2)} trials of {steps2} steps{at_ceiling}"
            f"{untrained}"
        )
        span = interval(fit2, lr2, low, high)
        resolved = learned1 and fall_resolved(fit2, centre, lr2)
        beta = horizon_exponent(centre, steps1, lr2, steps2) if resolved else 0.0
        floor = _shift(lr2, -HORIZON_REACH)
        lr = at_horizon(lr2, steps2, beta, max_steps, floor)
        moved = lr < lr2 * (1 - 1e-9)
        if moved:
            factor = lr / lr2
            span = Interval(low=max(floor, span.low * factor), high=max(floor, span.high * factor))
            message += (
                f"; moved to {lr:.3g} for the {max_steps}-step fine-tune: the minimum fell from {centre:.3g} "
                f"({steps1}-step trials) to {lr2:.3g} ({steps2} steps), steps^-{beta:.2f}"
            )
        elif learned1 and not resolved and centre > lr2 * (1 + 1e-9) and max_steps and max_steps > steps2:
            message += (
                f"; not moved for the {max_steps}-step fine-tune: the minimum's fall from {centre:.3g} "
                f"({steps1}-step trials) is within the noise ({fit2.noise:.3g})"
            )
        return _finish(
            lr,
            "Fitted",
            message,
            "stage-2-horizon" if moved else "stage-2-fit",
            fit=fit2,
            span=span,
            best_loss=min(y for _, y in ok2),
        )
    if ok2:
        return _finish(
            best2,
            "BestTrial",
            f"best stage-2 trial at {best2:.3g}{untrained}",
            "stage-2-best",
            best_loss=loss2,
            span=interval(fit1, best2, low, high) if fit1 else None,
        )
    return _finish(
        centre,
        "Fitted" if fit1 else "BestTrial",
        f"every stage-2 trial diverged; the stage-1 minimum {centre:.3g} stands",
        "stage-1-fit" if fit1 else "stage-1-best",
        fit=fit1,
        span=interval(fit1, centre, low, high) if fit1 else None,
        best_loss=best_loss,
    )


def _nothing_trained(
    why: str,
    fix: str,
    decided_by: str,
    *,
    top: float,
    ramp_loss: float | None,
    baseline: float | None,
    best_loss: float | None,
) -> AdaptiveStep:
    """Weak ``NothingTrained`` evidence: no trial learned (``why``; ``fix`` names the fields to raise).
    When the range test's lowest loss (``ramp_loss``) fell below the labels' entropy (``baseline``), the
    ramp learned what the trials were too short to, and its ceiling ``top`` is reported, unconfirmed (the
    sweep still fails and ``auto`` does not train with it); else no LR."""
    if ramp_loss is None or not math.isfinite(ramp_loss) or not trained(ramp_loss, baseline):
        return _finish(None, "NothingTrained", f"{why}: raise {fix}", decided_by, best_loss=best_loss)
    return _finish(
        top,
        "NothingTrained",
        f"{why}; the range test's ramp did learn (its loss fell to {ramp_loss:.4g}), so its ceiling "
        f"{top:.3g} is reported, unconfirmed by any trial: raise {fix} to confirm it",
        decided_by,
        best_loss=best_loss,
    )


def _nothing_below(baseline: float | None, high: float, steps: int) -> str:
    return (
        f"no trial's validation loss fell below {baseline:.4g}, the validation labels' entropy (what "
        f"ignoring the input scores at best), up to learning rate {high:.3g} in {steps} steps"
    )


def _upper_edge(
    spec: AdaptiveSpec, edge: float, best: float, highest: float, loss: float | None, decided_by: str
) -> AdaptiveStep | None:
    """``BestAtUpperEdge`` when the best trial is the highest tried and half a ``spacing`` above it is the
    divergence edge (only asked when the edge, not the loss minimum, set the ceiling)."""
    if best < highest or _shift(highest, spec.spacing / 2) < edge:
        return None
    return _finish(
        best,
        "BestAtUpperEdge",
        f"the best trial is the highest learning rate tried ({best:.3g}), next to the divergence "
        f"edge {edge:.3g}: the optimum may lie higher; raise rangeTest.divergenceFactor",
        decided_by,
        best_loss=loss,
    )


def _held_at_ceiling(lr: float, top: float, capped: bool, minimum: float | None) -> str:
    """The note that ``lr`` is the ceiling the range test's loss minimum set, or nothing."""
    if not (capped and minimum is not None and lr >= top * (1 - 1e-6)):
        return ""
    return (
        f"; held at the ceiling {top:.3g}, {HEADROOM:g} decades below the range test's loss minimum "
        f"{minimum:.3g}"
    )


def _stage_one_decision(
    spec: AdaptiveSpec,
    window: tuple[float, float, bool, float | None],
    ok1: list[tuple[float, float]],
    fit1: LossFit | None,
    tested: list[float],
    steps1: int,
    room: tuple[int, int],
    baseline: float | None,
    ramp_loss: float | None,
) -> AdaptiveStep:
    """Stage 1 decides when ``adaptive.maxFineTunes`` leaves stage 2 no room (``room``: the steps a
    finalist would get, and the least it needs): the stage-1 parabola's minimum, or its best trial; no
    horizon step (no second trial length). ``window`` is the edge, the ceiling, whether the loss minimum
    set it, and that minimum; ``baseline`` the labels' entropy and ``ramp_loss`` the range test's lowest
    loss."""
    edge, top, capped, minimum = window
    fitting, need = room
    skipped = (
        f"stage 2 skipped: adaptive.maxFineTunes ({spec.max_fine_tunes:g} fine-tunes' worth, range test "
        f"included) leaves {max(fitting, 0)} steps for each of its {spec.finalists} trials, short of the "
        f"{need} that a longer trial than stage 1's {steps1} takes"
    )
    best_lr, best_loss = min(ok1, key=lambda p: p[1])
    low, high = min(tested), max(tested)
    if not _any_trained(ok1, baseline):
        return _nothing_trained(
            f"{_nothing_below(baseline, high, steps1)}, and {skipped}",
            "adaptive.trialSteps or adaptive.maxFineTunes",
            "stage-1-best",
            top=top,
            ramp_loss=ramp_loss,
            baseline=baseline,
            best_loss=best_loss,
        )
    if (
        not capped
        and (upper := _upper_edge(spec, edge, best_lr, high, best_loss, "stage-1-best")) is not None
    ):
        return upper
    lr = vertex(fit1) if fit1 else None
    held = _held_at_ceiling(lr or best_lr, top, capped, minimum)
    if fit1 is not None and lr is not None:
        return _finish(
            lr,
            "Fitted",
            f"stage-1 parabola minimum at {lr:.3g} over {len(ok1)} trials of {steps1} steps{held}; {skipped}",
            "stage-1-fit",
            fit=fit1,
            span=interval(fit1, lr, low, high),
            best_loss=best_loss,
        )
    return _finish(
        best_lr,
        "BestTrial",
        f"best stage-1 trial at {best_lr:.3g}{held}; {skipped}",
        "stage-1-best",
        best_loss=best_loss,
        span=interval(fit1, best_lr, low, high) if fit1 else None,
    )


def run_to_decision(
    spec: AdaptiveSpec,
    edge: float,
    run: Callable[[TrialRequest], TrialRecord],
    max_steps: int | None = None,
    minimum: float | None = None,
    baseline: float | None = None,
    ramp_steps: int = 0,
    ramp_loss: float | None = None,
) -> tuple[Recommendation, list[TrialRecord]]:
    """:func:`next_step` in a loop, ``run`` running each trial it asks for, one after another, until it
    decides: ``recommend``'s loop (the operator runs the same requests as Jobs). Returns the decision and
    every trial's record in the order run."""
    finished: list[TrialRecord] = []
    step = next_step(spec, edge, finished, max_steps, minimum, baseline, ramp_steps, ramp_loss)
    while step.done is None:
        done = {(r.stage, r.index) for r in finished}
        finished += [run(request) for request in step.trials if request.key not in done]
        step = next_step(spec, edge, finished, max_steps, minimum, baseline, ramp_steps, ramp_loss)
    return step.done, finished


def diverged_at_start(start: float | None, divergence: float | None) -> bool:
    """True when a ramp that started at ``start`` broke (its divergence edge, ``divergence``) within its
    first decade: the window starts too high."""
    return start is not None and divergence is not None and 0 < divergence <= start * 10


def ramp_too_high(start: float | None, divergence: float | None) -> Recommendation | None:
    """The sweep's end, with no learning rate, when the range test diverged within its first decade (see
    :func:`diverged_at_start`): the trials would sit below the edge, under anything the ramp tested.
    ``None`` when they have room."""
    if not diverged_at_start(start, divergence):
        return None
    return Recommendation(
        decided_by="range-test",
        evidence="DivergedAtMinimumLearningRate",
        message=f"the range test's loss diverged at {divergence:.3g}, within the first decade of its ramp "
        f"from {start:.3g}: the window starts too high; lower rangeTest.minLearningRate",
    )


def inside_tested_window(
    rec: Recommendation, start: float | None, trials: Sequence[TrialRecord]
) -> Recommendation:
    """``rec``, or weak ``OutsideTestedWindow`` evidence when its learning rate lies below everything tested
    (the range test's ramp and every trial): only the horizon step goes below the trials, and an
    extrapolation past the tested window is not evidence."""
    lr = rec.recommended_learning_rate
    tested = [t.learning_rate for t in trials] + ([start] if start else [])
    if lr is None or rec.weak or not tested or lr >= min(tested) * (1 - 1e-9):
        return rec
    return rec.model_copy(
        update={
            "evidence": "OutsideTestedWindow",
            "message": f"{rec.message}; {lr:.3g} lies below the lowest learning rate tested "
            f"({min(tested):.3g}): lower rangeTest.minLearningRate",
        }
    )


def horizon_exponent(lr1: float, steps1: int, lr2: float, steps2: int) -> float:
    """How fast the optimum fell with the trial length: ``β`` in ``lr* ∝ steps^-β`` through the stage-1
    and stage-2 minima; 0 when it did not fall (an optimum that rises with length is not extended: the
    ceiling already bounds it, and a higher LR risks divergence)."""
    if steps2 <= steps1 or lr1 <= 0 or lr2 <= 0:
        return 0.0
    return max(0.0, math.log10(lr1 / lr2) / math.log10(steps2 / steps1))


def fall_resolved(fit: LossFit, before: float, after: float) -> bool:
    """Whether ``fit`` predicts the loss at ``before`` (the stage-1 minimum) above the loss at ``after`` (the
    stage-2 minimum) by more than its noise: a fall the trials resolve, ``before`` outside the interval."""
    return before > after and predicted(fit, before) - predicted(fit, after) > fit.noise


def at_horizon(lr: float, steps: int, beta: float, max_steps: int | None, floor: float) -> float:
    """``lr``, found with trials of ``steps``, moved to a run of ``max_steps`` by ``lr* ∝ steps^-β``; kept
    at or above ``floor``."""
    if not max_steps or max_steps <= steps or beta <= 0:
        return lr
    return max(floor, lr * (max_steps / steps) ** -beta)


def _scale(points: Sequence[tuple[float, float]], reference: float) -> float:
    """Ratio of a stage's best loss to ``reference`` (noise scales with the loss level)."""
    best = min(y for _, y in points)
    return best / reference if reference > 0 else 1.0


def _finish(
    lr: float | None,
    evidence: str,
    message: str,
    decided_by: str,
    *,
    fit: LossFit | None = None,
    span: Interval | None = None,
    best_loss: float | None = None,
) -> AdaptiveStep:
    return AdaptiveStep(
        done=Recommendation(
            recommended_learning_rate=lr,
            interval=span,
            decided_by=decided_by,
            evidence=evidence,  # type: ignore[arg-type]
            message=message,
            fit=fit,
            best_loss=best_loss,
        )
    )
