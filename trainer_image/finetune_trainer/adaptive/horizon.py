"""The horizon step: extending the optimum's fall from stage-1 to stage-2 trials to the fine-tune's length."""

from __future__ import annotations

import math

from finetune_trainer.adaptive.fit import predicted
from finetune_trainer.config import LossFit

HORIZON_REACH = 1.0
"""Decades the horizon step may move the stage-2 minimum down at most: an extrapolation, so bounded by
itself, not by how far down stage 1 happened to try (its low candidates barely train in a short trial)."""


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
