"""The decision: :func:`next_step` reads the trials finished so far and asks for more or recommends."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from finetune_trainer.adaptive.budget import room, trial_budget, trial_steps
from finetune_trainer.adaptive.candidates import (
    STAGE_1,
    TrialRequest,
    any_trained,
    finite,
    spent,
    stage_one,
    stage_two,
    trained,
)
from finetune_trainer.adaptive.fit import (
    FIT_NEIGHBOURS,
    NOISE_FLOOR,
    fit_parabola,
    interval,
    neighbourhood,
    vertex,
)
from finetune_trainer.adaptive.horizon import HORIZON_REACH, at_horizon, fall_resolved, horizon_exponent
from finetune_trainer.adaptive.window import HEADROOM, Ramp, ceiling, diverged_at_start, shift
from finetune_trainer.config import AdaptiveSpec, Interval, LossFit, Recommendation, TrialRecord


@dataclass(frozen=True)
class AdaptiveStep:
    """What to do next: run ``trials`` (every trial of the stage so far; the finished ones included) or,
    when ``done`` is set, report it."""

    trials: tuple[TrialRequest, ...] = ()
    done: Recommendation | None = None

    @property
    def stage(self) -> int:
        return max((t.stage for t in self.trials), default=STAGE_1)


def next_step(
    spec: AdaptiveSpec, ramp: Ramp, finished: Sequence[TrialRecord], max_steps: int | None = None
) -> AdaptiveStep:
    """The next thing to do, given what the range test said (``ramp``), every trial finished so far and
    the fine-tune's length (``max_steps``; ``None`` when sized in epochs)."""
    edge, minimum, baseline = ramp.edge, ramp.minimum, ramp.baseline
    done = {(r.stage, r.index): r for r in finished}
    steps1, steps2 = trial_steps(spec, max_steps)
    budget = trial_budget(spec, max_steps, ramp.steps)
    top, capped = ceiling(spec, edge, minimum)
    stage1, complete = stage_one(spec, ramp, steps1, done, budget)
    if not complete:
        return AdaptiveStep(tuple(stage1))
    records1 = [done[t.key] for t in stage1]
    ok1 = [(r.learning_rate, float(r.eval_loss)) for r in records1 if finite(r)]  # type: ignore[arg-type]
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
    learned1 = any_trained(ok1, baseline)
    fit1 = fit_parabola(neighbourhood(ok1, FIT_NEIGHBOURS)) if len(ok1) >= 3 and learned1 else None
    noise = fit1.noise if fit1 else NOISE_FLOOR * abs(best_loss)
    if learned1 and best_lr <= min(tested):
        # the budget stopped stage 1 where, unbounded, it would have gone lower
        no_room = budget is not None and len(stage_one(spec, ramp, steps1, done)[0]) > len(stage1)
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
    left = None if budget is None else budget - spent(stage1)
    fitting, need = room(spec, steps1, steps2, left)
    if fitting < need:
        return _stage_one_decision(spec, ramp, ok1, fit1, tested, steps1, (fitting, need))
    steps2 = fitting
    # nothing to rank when no trial learned: the ceiling's neighbourhood, in trials twice as long
    centre = ((vertex(fit1) if fit1 else None) or best_lr) if learned1 else top
    stage2, complete = stage_two(spec, centre, ramp, steps2, done, left)
    if not complete:
        return AdaptiveStep(tuple(stage1 + stage2))
    ok2 = [(r.learning_rate, float(r.eval_loss)) for t in stage2 if finite(r := done[t.key])]  # type: ignore[arg-type]
    everything = tested + [t.learning_rate for t in stage2]
    low, high = min(everything), max(everything)
    if not learned1 and not any_trained(ok2, baseline):
        return _nothing_trained(
            f"{_nothing_below(baseline, high, steps2)}: the trials are too short for this task to learn "
            "anything",
            "adaptive.trialSteps",
            "stage-2-best",
            top=top,
            ramp=ramp,
            best_loss=min((y for _, y in ok1 + ok2), default=None),
        )
    untrained = (
        f"; stage 1 learned nothing (no trial below {baseline:.4g}, the validation labels' entropy), so "
        "stage 2 tried the ceiling"
        if not learned1 and baseline is not None
        else ""
    )
    fit2 = fit_parabola(neighbourhood(ok2, FIT_NEIGHBOURS)) if len(ok2) >= 3 else None
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
        floor = shift(lr2, -HORIZON_REACH)
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
    ramp: Ramp,
    best_loss: float | None,
) -> AdaptiveStep:
    """Weak ``NothingTrained`` evidence: no trial learned (``why``; ``fix`` names the fields to raise).
    When the range test's lowest loss (``ramp.loss``) fell below the labels' entropy (``ramp.baseline``),
    the ramp learned what the trials were too short to, and its ceiling ``top`` is reported, unconfirmed
    (the sweep still fails and ``auto`` does not train with it); else no LR."""
    ramp_loss = ramp.loss
    if ramp_loss is None or not math.isfinite(ramp_loss) or not trained(ramp_loss, ramp.baseline):
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
    if best < highest or shift(highest, spec.spacing / 2) < edge:
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
    ramp: Ramp,
    ok1: list[tuple[float, float]],
    fit1: LossFit | None,
    tested: list[float],
    steps1: int,
    room: tuple[int, int],
) -> AdaptiveStep:
    """Stage 1 decides when ``adaptive.maxFineTunes`` leaves stage 2 no room (``room``: the steps a
    finalist would get, and the least it needs): the stage-1 parabola's minimum, or its best trial; no
    horizon step (no second trial length)."""
    edge, minimum, baseline = ramp.edge, ramp.minimum, ramp.baseline
    top, capped = ceiling(spec, edge, minimum)
    fitting, need = room
    skipped = (
        f"stage 2 skipped: adaptive.maxFineTunes ({spec.max_fine_tunes:g} fine-tunes' worth, range test "
        f"included) leaves {max(fitting, 0)} steps for each of its {spec.finalists} trials, short of the "
        f"{need} that a longer trial than stage 1's {steps1} takes"
    )
    best_lr, best_loss = min(ok1, key=lambda p: p[1])
    low, high = min(tested), max(tested)
    if not any_trained(ok1, baseline):
        return _nothing_trained(
            f"{_nothing_below(baseline, high, steps1)}, and {skipped}",
            "adaptive.trialSteps or adaptive.maxFineTunes",
            "stage-1-best",
            top=top,
            ramp=ramp,
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
    spec: AdaptiveSpec, ramp: Ramp, run: Callable[[TrialRequest], TrialRecord], max_steps: int | None = None
) -> tuple[Recommendation, list[TrialRecord]]:
    """:func:`next_step` in a loop, ``run`` running each trial it asks for, one after another, until it
    decides: ``recommend``'s loop (the operator runs the same requests as Jobs). Returns the decision and
    every trial's record in the order run."""
    finished: list[TrialRecord] = []
    step = next_step(spec, ramp, finished, max_steps)
    while step.done is None:
        done = {(r.stage, r.index) for r in finished}
        finished += [run(request) for request in step.trials if request.key not in done]
        step = next_step(spec, ramp, finished, max_steps)
    return step.done, finished


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
