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

The modules, in the order a sweep meets them:

    window       what the range test's ramp says (loss minimum, divergence edge, stop) and the ceiling it sets
    budget       how long each stage's trials run, on what share of the data, within adaptive.maxFineTunes
    candidates   where each stage's trials go, and which of them learned anything
    fit          the parabola in log10(LR), its vertex and the interval within noise of a pick
    horizon      the horizon step
    decide       next_step: the whole decision, from the trials finished so far
"""

from __future__ import annotations

from finetune_trainer.adaptive.budget import (
    DEFAULT_TRIAL_STEPS,
    MIN_NARROWING,
    MIN_TRIAL_STEPS,
    TRIAL_FRACTION,
    sized_by_range_test,
    trial_budget,
    trial_sections,
    trial_steps,
)
from finetune_trainer.adaptive.candidates import (
    STAGE_1,
    STAGE_2,
    TrialRequest,
    label_entropy,
    stage_one,
    stage_two,
    stage_two_fits,
    trained,
)
from finetune_trainer.adaptive.decide import (
    AdaptiveStep,
    inside_tested_window,
    next_step,
    ramp_too_high,
    run_to_decision,
)
from finetune_trainer.adaptive.fit import (
    FIT_NEIGHBOURS,
    NOISE_FLOOR,
    fit_parabola,
    interval,
    predicted,
    vertex,
)
from finetune_trainer.adaptive.horizon import (
    HORIZON_REACH,
    at_horizon,
    fall_resolved,
    horizon_exponent,
)
from finetune_trainer.adaptive.window import (
    BASIN_POINTS,
    HEADROOM,
    PAST_MINIMUM,
    Ramp,
    basin_minimum,
    ceiling,
    curve_minimum,
    diverged_at_start,
    divergence_edge,
    fell,
    loss_minimum,
    past_minimum,
    ramp_edge,
    ramp_minimum,
    range_test_spec,
    start_fall,
    stop_step,
)

__all__ = [
    "BASIN_POINTS",
    "DEFAULT_TRIAL_STEPS",
    "FIT_NEIGHBOURS",
    "HEADROOM",
    "HORIZON_REACH",
    "MIN_NARROWING",
    "MIN_TRIAL_STEPS",
    "NOISE_FLOOR",
    "PAST_MINIMUM",
    "STAGE_1",
    "STAGE_2",
    "TRIAL_FRACTION",
    "AdaptiveStep",
    "Ramp",
    "TrialRequest",
    "at_horizon",
    "basin_minimum",
    "ceiling",
    "curve_minimum",
    "diverged_at_start",
    "divergence_edge",
    "fall_resolved",
    "fell",
    "fit_parabola",
    "horizon_exponent",
    "inside_tested_window",
    "interval",
    "label_entropy",
    "loss_minimum",
    "next_step",
    "past_minimum",
    "predicted",
    "ramp_edge",
    "ramp_minimum",
    "ramp_too_high",
    "range_test_spec",
    "run_to_decision",
    "sized_by_range_test",
    "stage_one",
    "stage_two",
    "stage_two_fits",
    "start_fall",
    "stop_step",
    "trained",
    "trial_budget",
    "trial_sections",
    "trial_steps",
    "vertex",
]
