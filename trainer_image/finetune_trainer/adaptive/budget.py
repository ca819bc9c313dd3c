"""How long each stage's trials run, what data they see, and the steps ``adaptive.maxFineTunes`` leaves
them."""

from __future__ import annotations

import math
from typing import TypeVar

from finetune_trainer.config import AdaptiveSpec, TrainingSections

MIN_TRIAL_STEPS = 20
"""Shorter trials barely move a classifier off its start: their ranking is noise."""
TRIAL_FRACTION = 8
"""A stage-1 trial runs an eighth of the planned fine-tune (when its length is known)."""
DEFAULT_TRIAL_STEPS = 50
MIN_NARROWING = 1.5
"""Stage-2 trials shorter than this many stage-1 trials' lengths barely see a longer run than stage 1 did:
where ``adaptive.maxFineTunes`` leaves no room for them, stage 1 decides."""


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


def room(spec: AdaptiveSpec, steps1: int, steps2: int, left: int | None) -> tuple[int, int]:
    """(the steps each stage-2 trial gets within the ``left`` of the budget, the least it needs to be
    worth running: see ``MIN_NARROWING``); stage 1 decides when the first is below the second."""
    if left is None:
        return steps2, 0
    return min(steps2, left // spec.finalists), min(steps2, math.ceil(MIN_NARROWING * steps1))


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
