"""Where each stage's trials go: stage 1 from the ceiling down, stage 2 around stage 1's minimum, and
which trials learned anything."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from finetune_trainer.adaptive.budget import room, trial_budget, trial_steps
from finetune_trainer.adaptive.fit import NOISE_FLOOR
from finetune_trainer.adaptive.window import Ramp, ceiling, shift
from finetune_trainer.config import AdaptiveSpec, TrialRecord

STAGE_1, STAGE_2 = 1, 2


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


def spent(trials: Sequence[TrialRequest]) -> int:
    """The optimiser steps ``trials`` take in all."""
    return sum(t.steps for t in trials)


def stage_two_fits(
    spec: AdaptiveSpec, stage1: Sequence[TrialRequest], max_steps: int | None, ramp_steps: int = 0
) -> bool:
    """Whether ``adaptive.maxFineTunes`` leaves stage 2 room after the stage-1 trials ``stage1`` (as far
    as they are known: an extension still to come can only take room away)."""
    steps1, steps2 = trial_steps(spec, max_steps)
    budget = trial_budget(spec, max_steps, ramp_steps)
    fitting, need = room(spec, steps1, steps2, None if budget is None else budget - spent(stage1))
    return fitting >= need


def stage_one(
    spec: AdaptiveSpec,
    ramp: Ramp,
    steps: int,
    finished: dict[tuple[int, int], TrialRecord],
    budget: int | None = None,
) -> tuple[list[TrialRequest], bool]:
    """Stage 1's trials so far and whether they are all finished.

    The candidates sit at the ceiling and ``spacing``, 2x``spacing``, … decades below it. While the best
    finished trial is the lowest (or every trial diverged), two more go below it, unless none of them
    :func:`trained`; while it is the highest (or none trained) and the divergence edge (not the loss
    minimum) set the ceiling, one goes half-way to the edge; at most ``maxExtensions`` times, and only
    while the stage's steps stay within ``budget`` (the candidates themselves always run).
    """
    top, capped = ceiling(spec, ramp.edge, ramp.minimum)
    room = top if capped else ramp.edge
    trials = [TrialRequest(STAGE_1, k, shift(top, -spec.spacing * k), steps) for k in range(spec.candidates)]
    for extension in range(spec.max_extensions + 1):
        results = [finished.get(t.key) for t in trials]
        if any(r is None for r in results):
            return trials, False
        extra = _extension(spec, room, trials, results, ramp.baseline)  # type: ignore[arg-type]
        if not extra or extension == spec.max_extensions or len(trials) + len(extra) > 64:
            return trials, True
        if budget is not None and spent(trials) + len(extra) * steps > budget:
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
    ok = [(t.learning_rate, float(r.eval_loss)) for t, r in zip(trials, results, strict=True) if finite(r)]  # type: ignore[arg-type]
    lowest = min(t.learning_rate for t in trials)
    below = [shift(lowest, -spec.spacing), shift(lowest, -2 * spec.spacing)]
    if not ok:
        return below
    best_lr = min(ok, key=lambda p: p[1])[0]
    learned = any_trained(ok, baseline)
    if best_lr <= lowest and learned:
        return below
    highest = max(t.learning_rate for t in trials)
    if (best_lr >= highest or not learned) and math.log10(room / highest) > 0.2:
        return [math.sqrt(highest * room)]
    return []


def stage_two(
    spec: AdaptiveSpec,
    centre: float,
    ramp: Ramp,
    steps: int,
    finished: dict[tuple[int, int], TrialRecord],
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
    edge = ramp.edge
    top, capped = ceiling(spec, edge, ramp.minimum)
    limit = top * (1 + 1e-9) if capped else edge
    # the highest finalist stays at or below the ceiling, and below the edge
    centre = min(centre, shift(top, -half * step) if capped else shift(edge, -(half + 0.5) * step))
    trials = [
        TrialRequest(STAGE_2, j, shift(centre, (j - half) * step), steps) for j in range(spec.finalists)
    ]
    for extension in range(spec.max_extensions + 1):
        results = [finished.get(t.key) for t in trials]
        if any(r is None for r in results):
            return trials, False
        ok = [(t.learning_rate, r.eval_loss) for t, r in zip(trials, results, strict=True) if finite(r)]
        if not ok or extension == spec.max_extensions:
            return trials, True
        best = min(ok, key=lambda p: p[1])[0]
        lrs = [t.learning_rate for t in trials]
        learned = any_trained(ok, ramp.baseline)  # type: ignore[arg-type]
        if (best >= max(lrs) or not learned) and shift(max(lrs), step) < limit:
            extra = shift(max(lrs), step)
        elif best <= min(lrs) and learned:
            extra = shift(min(lrs), -step)
        else:
            return trials, True
        if budget is not None and spent(trials) + steps > budget:
            return trials, True
        trials.append(TrialRequest(STAGE_2, len(trials), extra, steps))
    return trials, True  # pragma: no cover (the loop always returns)


def finite(r: TrialRecord | None) -> bool:
    """Whether a trial finished with a finite validation loss (it ran, and did not diverge)."""
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


def any_trained(points: Sequence[tuple[float, float]], baseline: float | None) -> bool:
    """Whether any of the (learning rate, loss) ``points`` :func:`trained`."""
    return any(trained(loss, baseline) for _, loss in points)
