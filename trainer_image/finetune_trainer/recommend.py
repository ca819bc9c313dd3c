"""``recommend``: the adaptive recommender on one machine, the same stages an LRSweep runs as Jobs.

The range test runs first; then :func:`finetune_trainer.adaptive.run_to_decision` asks ``next_step`` which
trials the current stage needs, and they run one after another in this process (the model is reloaded for
each: every trial starts from the pretrained weights). Every optimizer step is counted into ``stepsSpent``.
"""

from __future__ import annotations

import tempfile
from typing import Any

from finetune_trainer.adaptive import (
    Ramp,
    TrialRequest,
    inside_tested_window,
    ramp_edge,
    ramp_minimum,
    ramp_too_high,
    range_test_spec,
    run_to_decision,
    sized_by_range_test,
    trial_sections,
)
from finetune_trainer.config import RecommendResult, TrainerConfig, TrialRecord
from finetune_trainer.metrics import TrainerMetrics
from finetune_trainer.rangetest import run_range_test
from finetune_trainer.report import Progress, downsample
from finetune_trainer.training import run_trial

RESULT_CURVE_POINTS = 60
"""Range-test curve points kept in the result (the full curve is in the range test's own output)."""


def trial_config(cfg: TrainerConfig, learning_rate: float, steps: int) -> TrainerConfig:
    """The config of one trial: the recipe cut to ``steps`` steps (shared with the operator's Jobs)."""
    sections = trial_sections(cfg, steps, match_epochs=cfg.adaptive.match_epochs)
    return cfg.model_copy(update={**sections, "learning_rate": learning_rate})


def run_recommend(
    cfg: TrainerConfig, progress: Progress, metrics: TrainerMetrics | None = None
) -> RecommendResult:
    """Range test, then trials until the stages decide; the result is what an LRSweep's status shows."""
    ramp_spec = range_test_spec(cfg.range_test, cfg.adaptive)
    range_result, _curve = run_range_test(cfg.model_copy(update={"range_test": ramp_spec}), progress, metrics)
    edge = ramp_edge(range_result.divergence_learning_rate, range_result.max_learning_rate)
    if edge is None:  # pragma: no cover (a range test always reports the highest LR it reached)
        raise RuntimeError("the range test reported no learning rate")
    minimum = ramp_minimum(range_result.loss_minimum_learning_rate, range_result.curve)  # as the operator
    cfg = sized_by_range_test(cfg, range_result.fine_tune_steps)  # a fine-tune sized in epochs: its steps

    def run(request: TrialRequest) -> TrialRecord:
        progress.emit(
            "trial",
            stage=request.stage,
            index=request.index,
            learningRate=request.learning_rate,
            steps=request.steps,
        )
        with tempfile.TemporaryDirectory(prefix="trial-") as scratch:
            result = run_trial(
                trial_config(cfg, request.learning_rate, request.steps),
                request.learning_rate,
                progress,
                metrics,
                scratch,
            )
        return TrialRecord(
            stage=request.stage,
            index=request.index,
            learning_rate=request.learning_rate,
            steps=result.steps,
            eval_loss=result.eval_loss,
            diverged=result.diverged,
        )

    start = range_result.min_learning_rate
    finished: list[TrialRecord] = []
    decision = ramp_too_high(start, range_result.divergence_learning_rate)
    if decision is None:
        ramp = Ramp(
            edge=edge,
            minimum=minimum,
            baseline=range_result.baseline_loss,
            steps=range_result.steps,
            loss=range_result.best_loss,
        )
        decision, finished = run_to_decision(cfg.adaptive, ramp, run, cfg.optimization.max_steps)
        decision = inside_tested_window(decision, start, finished)
    spent = range_result.steps + sum(r.steps for r in finished)
    summary: dict[str, Any] = {"curve": downsample(range_result.curve, RESULT_CURVE_POINTS)}
    warnings = list(range_result.warnings)
    if decision.weak:
        warnings.append(decision.message)
    return RecommendResult(
        **decision.model_dump(),
        trials=finished[:64],
        range_test=range_result.model_copy(update=summary),
        steps_spent=spent,
        effective_batch_size=range_result.effective_batch_size,
        world_size=range_result.world_size,
        adapter=cfg.adapter.type,
        warnings=warnings[:16],
    )
