"""The learning-rate range test: ramp the LR, watch the loss, read a recommendation off the curve.

It runs on the same ``Trainer`` (optimizer, precision, clipping, accumulation, DDP) as the fine-tune it
prepares, so the LR it finds is an LR for that setup; only the schedule differs (the ramp). Each step's
loss (the training loss, or a fixed validation batch's loss in validation mode) is smoothed by a
bias-corrected EMA; the test stops on NaN/inf or when the smoothed loss exceeds ``divergenceFactor`` x the
best so far, or (with ``stopPastMinimum``, as adaptive sweeps run it) once the ramp is that many decades
past the loss minimum. The model and optimizer are thrown away afterwards: only the curve is kept.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from typing import Any

from finetune_trainer.adaptive import (
    NOISE_FLOOR,
    basin_minimum,
    divergence_edge,
    label_entropy,
    past_minimum,
)
from finetune_trainer.config import (
    CURVE_MAX,
    DIVERGED_STOPS,
    STEP_EVENT,
    CurvePoint,
    RangeTestResult,
    RangeTestSpec,
    StopReason,
    TrainerConfig,
)
from finetune_trainer.metrics import TrainerMetrics
from finetune_trainer.modeling import load_model
from finetune_trainer.priors import Prior, hidden_size_of_config, prior_for, sanity_warning, widen_window
from finetune_trainer.report import Progress, downsample
from finetune_trainer.runsetup import (
    RunPlan,
    build_trainer,
    callback_base,
    fine_tune_steps,
    prepare_run,
    training_arguments,
)
from finetune_trainer.runtime import STOP
from finetune_trainer.schedules import build_ramp, extension_steps, ramp_lr
from finetune_trainer.suggest import EmaSmoother, all_suggestions, recommend

PRIOR_BELOW = 100.0
"""An unset ``minLearningRate`` starts the ramp this many times below the model's prior."""
PRIOR_ABOVE = 10.0
"""An unset ``maxLearningRate`` plans the ramp's end this many times above the prior (extension goes on)."""


def window(spec: RangeTestSpec, prior: Prior) -> tuple[float, float]:
    """The ramp's planned ``(start, end)``: the spec's bounds, with unset ones centred on the prior."""
    lo, hi = spec.min_learning_rate, spec.max_learning_rate
    if lo is None and hi is None:
        lo, hi = prior.centre / PRIOR_BELOW, prior.centre * PRIOR_ABOVE
    elif lo is None:
        lo = min(prior.centre / PRIOR_BELOW, hi / (PRIOR_BELOW * PRIOR_ABOVE))  # type: ignore[operator]
    elif hi is None:
        hi = max(prior.centre * PRIOR_ABOVE, lo * PRIOR_BELOW * PRIOR_ABOVE)
    if spec.widen_by_prior:
        lo, hi = widen_window(lo, hi, prior)  # type: ignore[arg-type]
    return float(lo), float(hi)  # type: ignore[arg-type]


@dataclass
class RangeCurve:
    """The test's record: per step the LR, the raw and the smoothed loss; why it stopped."""

    min_lr: float
    max_lr: float
    steps: int
    mode: str
    smoothing: float
    divergence_factor: float
    ceiling: float | None = None
    past_minimum: float | None = None
    lrs: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stop_reason: StopReason = "completed"

    def __post_init__(self) -> None:
        self._ema = EmaSmoother(self.smoothing)
        self.best = math.inf

    def lr_of_step(self, step: int) -> float:
        """LR used by optimizer update ``step`` (1-based, as ``Trainer``'s ``global_step`` counts)."""
        return ramp_lr(self.min_lr, self.max_lr, self.steps, step - 1, self.mode, self.ceiling)

    def add(self, step: int, loss: float) -> bool:
        """Record the loss of update ``step``; ``True`` when the test must stop."""
        if not math.isfinite(loss):
            self.stop_reason = "nan"
            return True
        smoothed = self._ema.update(loss)
        self.lrs.append(self.lr_of_step(step))
        self.raw.append(loss)
        self.smoothed.append(smoothed)
        self.best = min(self.best, smoothed)
        if smoothed > self.divergence_factor * self.best:
            self.stop_reason = "diverged"
            return True
        if self.past_minimum is not None and past_minimum(
            self.lrs, self.smoothed, self.max_lr * (1 - 1e-9), self.past_minimum
        ):
            self.stop_reason = "past-minimum"
            return True
        return False


def _validation_loss_fn(plan: RunPlan) -> Any:
    """Loss of a fixed validation batch (same batch every step, so the curve moves only with the weights)."""
    import torch

    examples = [
        plan.data.eval[i] for i in range(min(len(plan.data.eval), plan.cfg.optimization.batch_size * 2))
    ]
    batch = plan.data.collator(examples)

    def loss_of(model: Any) -> float:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model(**{k: v.to(device) for k, v in batch.items()})
        if was_training:
            model.train()
        return float(out.loss)

    return loss_of


def run_range_test(
    cfg: TrainerConfig, progress: Progress, metrics: TrainerMetrics | None
) -> tuple[RangeTestResult, RangeCurve]:
    """Run the test; returns the result (curve ≤ 200 points) and the full-resolution record."""
    rt = cfg.range_test
    if metrics:
        metrics.set_phase("loading")
    plan = prepare_run(cfg, "range-test", rt.max_learning_rate or 1.0)
    model = load_model(cfg, plan.tokenizer, plan.data.num_labels, plan.data.label_names)
    config = model.config.to_dict() if hasattr(model, "config") else {}
    prior = prior_for(
        cfg.model.name, cfg.adapter.type, config.get("model_type"), hidden_size_of_config(config)
    )
    lo, hi = window(rt, prior)
    plan.learning_rate = hi
    ceiling = max(hi, rt.ceiling_learning_rate) if rt.extend else None
    total = rt.steps + (extension_steps(lo, hi, rt.steps, rt.mode, ceiling) if ceiling else 0)
    curve = RangeCurve(
        lo, hi, rt.steps, rt.mode, rt.smoothing, rt.divergence_factor, ceiling, rt.stop_past_minimum
    )
    val_loss = _validation_loss_fn(plan) if rt.use_validation_loss else None
    progress.emit(
        "start",
        command="range-test",
        minLearningRate=lo,
        maxLearningRate=hi,
        steps=rt.steps,
        extendedSteps=total - rt.steps,
        priorLearningRate=prior.centre,
        mode=rt.mode,
        effectiveBatchSize=plan.effective_batch_size,
        adapter=cfg.adapter.type,
        trainExamples=len(plan.data.train),
        validationLoss=rt.use_validation_loss,
    )

    class Record(callback_base()):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if val_loss is not None:
                self._take(state, control, val_loss(model))
            if STOP.requested:
                control.should_training_stop = True

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if val_loss is None and logs and "loss" in logs:
                self._take(state, control, float(logs["loss"]))

        def _take(self, state: Any, control: Any, loss: float) -> None:
            stop = curve.add(state.global_step, loss)
            smoothed = curve.smoothed[-1] if curve.smoothed and math.isfinite(loss) else None
            lr = curve.lr_of_step(state.global_step)
            progress.emit(
                STEP_EVENT,
                step=state.global_step,
                totalSteps=total,
                learningRate=lr,
                loss=loss,
                smoothedLoss=smoothed,
            )
            if metrics:
                metrics.set(
                    step=state.global_step,
                    learning_rate=lr,
                    loss=loss if math.isfinite(loss) else None,
                    smoothed_loss=smoothed,
                )
            if stop:
                progress.emit("stop", step=state.global_step, reason=curve.stop_reason)
                control.should_training_stop = True

    with tempfile.TemporaryDirectory(prefix="range-test-") as scratch:
        args = training_arguments(plan, scratch, max_steps=total, evaluate=False, save=False, logging_steps=1)
        trainer = build_trainer(
            plan,
            model,
            args,
            lambda opt, _n: build_ramp(opt, lo, hi, rt.steps, rt.mode, ceiling),
            [Record()],
        )
        if metrics:
            metrics.set_phase("range_test")
            metrics.set(total_steps=total)
        STOP.in_loop = True
        try:
            trainer.train()
        finally:
            STOP.in_loop = False
        del trainer, model  # the test's weights and optimizer state are never reused
    STOP.check()

    suggestions = all_suggestions(curve.lrs, curve.smoothed, planned_end=hi)
    rule, recommended = recommend(suggestions, rt.rule)
    edge = divergence_edge(curve.lrs, curve.smoothed, stopped_early=curve.stop_reason in DIVERGED_STOPS)
    minimum = basin_minimum(curve.lrs, curve.smoothed)  # none while the loss has not fell() from its start
    warnings = []
    if edge is None and curve.lrs and curve.stop_reason == "completed":
        warnings.append(
            f"the loss never turned up by learning rate {curve.lrs[-1]:.3g}: the window may end too low; "
            + ("raise rangeTest.ceilingLearningRate" if rt.extend else "set rangeTest.extend")
        )
    if curve.lrs and minimum is None:
        warnings.append(
            f"the loss never fell from where the ramp started (by more than {NOISE_FLOOR:.1%}) up to "
            f"learning rate {curve.lrs[-1]:.3g}: nothing trained, and every rule's value is noise"
        )
    if recommended is None:
        warnings.append(
            f"no rule found a learning rate in {len(curve.lrs)} steps ({curve.stop_reason}): "
            "widen the window (lower rangeTest.minLearningRate) or add steps"
        )
    if rule != rt.rule:
        warnings.append(f"rule {rt.rule} found nothing; recommended the {rule} rule's value instead")
    far = sanity_warning(recommended, prior)
    if far:
        warnings.append(far)
    for w in warnings:
        progress.emit("warning", message=w)
    result = RangeTestResult(
        recommended_learning_rate=recommended,
        rule=rule,
        suggestions=suggestions,
        curve=downsample(
            [CurvePoint(lr=lr, loss=loss) for lr, loss in zip(curve.lrs, curve.smoothed, strict=True)],
            CURVE_MAX,
        ),
        stop_reason=curve.stop_reason,
        steps=len(curve.lrs) + (1 if curve.stop_reason == "nan" else 0),
        fine_tune_steps=fine_tune_steps(cfg.optimization, plan.steps_per_epoch),
        best_loss=None if math.isinf(curve.best) else curve.best,
        effective_batch_size=plan.effective_batch_size,
        world_size=plan.world_size,
        adapter=cfg.adapter.type,
        warnings=warnings[:16],
        min_learning_rate=lo,
        max_learning_rate=curve.lrs[-1] if curve.lrs else lo,
        divergence_learning_rate=edge,
        loss_minimum_learning_rate=minimum,
        prior_learning_rate=prior.centre,
        baseline_loss=baseline_loss(plan),
    )
    return result, curve


def baseline_loss(plan: RunPlan) -> float | None:
    """A classifier's :func:`~finetune_trainer.adaptive.label_entropy` over the validation rows that trials
    are judged on; ``None`` for a causal LM or without validation rows (a trial then cannot run)."""
    if plan.cfg.model.task != "sequence-classification" or plan.data.eval is None:
        return None
    return label_entropy(list(plan.data.eval["labels"]))
