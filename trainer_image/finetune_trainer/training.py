"""``train`` and ``trial``: a fine-tune with warmup and decay on Hugging Face ``Trainer``, and a short one
at one learning rate that reports its validation loss.

The shared set-up (checks, ``RunPlan``, ``TrainingArguments``, the ``Trainer``) is
:mod:`finetune_trainer.runsetup`. Here: the callbacks (progress, metrics, divergence, signals, early
stopping) and the two commands; :func:`run_train` resumes from the newest checkpoint in the output
directory automatically (that is how a retried pod continues).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer.artifacts import FINAL, finish
from finetune_trainer.config import (
    EVAL_EVENT,
    MAX_EVALS,
    STEP_EVENT,
    EvalPoint,
    TrainerConfig,
    TrainResult,
    TrialResult,
)
from finetune_trainer.exitcodes import ConfigError, DivergedError
from finetune_trainer.metrics import TrainerMetrics
from finetune_trainer.modeling import load_model, parameter_counts
from finetune_trainer.report import Progress
from finetune_trainer.runsetup import (
    RunPlan,
    best_model_warning,
    build_trainer,
    callback_base,
    keeps_best,
    prepare_run,
    training_arguments,
)
from finetune_trainer.runtime import STOP
from finetune_trainer.schedules import build_scheduler, plan_from_spec
from finetune_trainer.suggest import EmaSmoother


def fine_tune_schedule(plan: RunPlan) -> Callable[[Any, int], Any]:
    """The configured warmup/decay, resolved against the step count ``Trainer`` computes."""

    def factory(optimizer: Any, num_training_steps: int) -> Any:
        spec_plan = plan_from_spec(plan.cfg.schedule, num_training_steps)
        return build_scheduler(optimizer, spec_plan)

    return factory


@dataclass
class RunLog:
    """What the callbacks saw: losses, evaluations, why the run stopped."""

    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    diverged: str | None = None
    early_stopped: bool = False
    interrupted: bool = False


def make_callbacks(
    plan: RunPlan,
    progress: Progress,
    metrics: TrainerMetrics | None,
    log: RunLog,
    *,
    save_on_signal: bool,
    divergence_factor: float | None = None,
) -> list[Any]:
    """Progress/metrics reporting, divergence detection, signal stop, early stopping.

    Divergence: a NaN/inf loss, or (with ``divergence_factor``) an EMA of the loss above that many times the
    first logged loss.
    """
    base = callback_base()
    cfg = plan.cfg
    tokens = plan.data.tokens_per_example
    gauges = metrics  # HF passes evaluation results as ``metrics=``: keep the names apart

    class Report(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.last_time = time.monotonic()
            self.last_step = 0
            self.ema = EmaSmoother(0.1)  # a single spike must not end a long run

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.last_time, self.last_step = time.monotonic(), state.global_step
            if gauges:
                gauges.set(total_steps=state.max_steps)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                return
            loss = float(logs["loss"])
            now = time.monotonic()
            steps = state.global_step - self.last_step
            sps = (
                steps * plan.effective_batch_size / (now - self.last_time)
                if steps > 0 and now > self.last_time
                else None
            )
            self.last_time, self.last_step = now, state.global_step
            log.losses.append(loss)
            progress.emit(
                STEP_EVENT,
                step=state.global_step,
                totalSteps=state.max_steps,
                loss=loss,
                learningRate=logs.get("learning_rate"),
                epoch=logs.get("epoch"),
                gradNorm=logs.get("grad_norm"),
                samplesPerSecond=sps,
            )
            if gauges:
                gauges.set(
                    step=state.global_step,
                    loss=loss if math.isfinite(loss) else None,
                    learning_rate=logs.get("learning_rate"),
                    epoch=logs.get("epoch"),
                    samples_per_second=sps,
                    tokens_per_second=sps * tokens if sps is not None and tokens else None,
                )
            if not math.isfinite(loss):
                log.diverged = f"training loss became {loss} at step {state.global_step}"
            else:
                smoothed = self.ema.update(loss)
                if divergence_factor and smoothed > divergence_factor * log.losses[0]:
                    log.diverged = (
                        f"smoothed training loss {smoothed:.4g} exceeded {divergence_factor:g}x its start "
                        f"({log.losses[0]:.4g})"
                    )
            if log.diverged:
                control.should_training_stop = True

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any) -> None:
            value = (metrics or {}).get("eval_loss")
            if value is None:
                return
            log.evals.append((state.global_step, float(value)))
            progress.emit(EVAL_EVENT, step=state.global_step, evalLoss=float(value))
            if gauges:
                gauges.set(eval_loss=value, eval_step=state.global_step)

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            progress.emit("checkpoint", step=state.global_step, path=f"checkpoint-{state.global_step}")

    class StopOnSignal(base):  # type: ignore[misc, valid-type]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if STOP.requested:
                log.interrupted = True
                control.should_save = save_on_signal
                control.should_training_stop = True

    class EarlyStop(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.best = math.inf
            self.bad = 0

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any) -> None:
            value = (metrics or {}).get("eval_loss")
            if value is None:
                return
            if value < self.best - cfg.early_stopping.min_delta:
                self.best, self.bad = value, 0
                return
            self.bad += 1
            if self.bad >= cfg.early_stopping.patience:
                log.early_stopped = True
                progress.emit("earlyStop", step=state.global_step, bestEvalLoss=self.best)
                control.should_training_stop = True

    callbacks: list[Any] = [Report(), StopOnSignal()]
    if cfg.early_stopping.enabled:
        callbacks.append(EarlyStop())
    return callbacks


# --- commands ---------------------------------------------------------------------------------------------


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest *complete* ``checkpoint-N`` in ``output_dir``, or ``None``.

    ``Trainer`` writes ``trainer_state.json`` last, so a checkpoint without a readable one was cut off
    mid-save (a pod killed while saving); it is skipped rather than resumed from, which would fail on
    every retry.
    """
    path = Path(output_dir)
    if not path.is_dir():
        return None
    steps = []
    for child in path.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if match and child.is_dir():
            steps.append((int(match.group(1)), child))
    for _, child in sorted(steps, reverse=True):
        try:
            json.loads((child / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(child)
    return None


def _final_eval(trainer: Any, log: RunLog, step: int) -> float | None:
    if trainer.eval_dataset is None:
        return None
    if log.evals and log.evals[-1][0] == step:
        return log.evals[-1][1]  # just evaluated at this step: no duplicate work
    value = trainer.evaluate().get("eval_loss")
    return None if value is None else float(value)


def run_train(
    cfg: TrainerConfig,
    learning_rate: float | None,
    progress: Progress,
    metrics: TrainerMetrics | None,
    *,
    main_process: bool = True,
) -> TrainResult:
    """Fine-tune with warmup/decay, resuming from the newest checkpoint in ``cfg.output_dir`` if any."""
    started = time.monotonic()
    if metrics:
        metrics.set_phase("loading")
    plan = prepare_run(cfg, "train", learning_rate if learning_rate is not None else cfg.learning_rate)
    model = load_model(cfg, plan.tokenizer, plan.data.num_labels, plan.data.label_names)
    trainable, total = parameter_counts(model)
    out = Path(cfg.output_dir)
    resume = latest_checkpoint(out)
    resumed_step = int(Path(resume).name.split("-")[-1]) if resume else None
    progress.emit(
        "start",
        command="train",
        learningRate=plan.learning_rate,
        totalSteps=plan.total_steps,
        warmupSteps=plan.warmup_steps,
        effectiveBatchSize=plan.effective_batch_size,
        trainExamples=len(plan.data.train),
        evalExamples=len(plan.data.eval) if plan.data.eval is not None else 0,
        trainableParameters=trainable,
        parameters=total,
        precision=plan.precision,
        resumeFrom=resume and Path(resume).name,
    )
    log = RunLog()
    evaluate = plan.data.eval is not None
    keep_best = keeps_best(cfg, evaluate)
    warning = best_model_warning(cfg, evaluate)
    if warning:
        progress.emit("warning", message=warning)
    args = training_arguments(
        plan,
        out,
        max_steps=cfg.optimization.max_steps,
        evaluate=evaluate,
        save=True,
        logging_steps=max(1, min(10, plan.total_steps // 200)),
        keep_best=keep_best,
    )
    callbacks = make_callbacks(
        plan,
        progress,
        metrics,
        log,
        save_on_signal=True,
        divergence_factor=cfg.optimization.divergence_factor,
    )
    trainer = build_trainer(plan, model, args, fine_tune_schedule(plan), callbacks)
    if args.world_size > 1:  # what accelerate set up, not only what was asked for
        progress.emit(
            "distributed", strategy="fsdp" if trainer.is_fsdp_enabled else "ddp", worldSize=args.world_size
        )
    if metrics:
        metrics.set_phase("training")
        metrics.set(total_steps=plan.total_steps)
    STOP.in_loop = True
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    finally:
        STOP.in_loop = False
    state = trainer.state
    if log.interrupted:
        STOP.check()
    if log.diverged:
        raise DivergedError(f"{log.diverged}: lower the learning rate ({plan.learning_rate:g})")
    if metrics:
        metrics.set_phase("evaluating")
    eval_loss = _final_eval(trainer, log, state.global_step)
    if metrics:
        metrics.set(eval_loss=eval_loss)
        metrics.set_phase("saving")
    final_from = "best" if keep_best and state.best_model_checkpoint else "last"
    if cfg.checkpoints.save_final_model:
        trainer.save_model(str(out / FINAL))
        if main_process:
            plan.tokenizer.save_pretrained(str(out / FINAL))
    evals = [v for _, v in log.evals] + ([eval_loss] if eval_loss is not None else [])
    best_ckpt, last_ckpt = state.best_model_checkpoint, latest_checkpoint(out)
    result = TrainResult(
        learning_rate=plan.learning_rate,
        steps=state.global_step,
        total_steps=state.max_steps,
        epochs=round(float(state.epoch or 0.0), 4),
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        eval_loss=eval_loss,
        best_eval_loss=min(evals) if evals else None,
        best_checkpoint=str(Path(best_ckpt).relative_to(out))
        if best_ckpt and Path(best_ckpt).exists()
        else None,
        last_checkpoint=Path(last_ckpt).name if last_ckpt else None,
        final_model_from=final_from if cfg.checkpoints.save_final_model else None,
        early_stopped=log.early_stopped,
        resumed_from_step=resumed_step,
        runtime_seconds=round(time.monotonic() - started, 2),
        effective_batch_size=plan.effective_batch_size,
        world_size=plan.world_size,
    )
    found = finish(
        cfg,
        out,
        result.to_wire(),
        plan.tokenizer,
        result.final_model_from,
        main_process,
        plan.data.num_labels,
        plan.data.data_type if cfg.model.task == "causal-lm" else None,
    )
    return result.model_copy(
        update={
            "final_model": found.final_model,
            "merged_model": found.merged_model,
            "model_card": found.model_card,
            "hub_url": found.hub_url,
        }
    )


def run_trial(
    cfg: TrainerConfig,
    learning_rate: float,
    progress: Progress,
    metrics: TrainerMetrics | None,
    scratch_dir: str | Path,
) -> TrialResult:
    """A short fine-tune at one LR (no checkpoints) reporting the final validation loss."""
    if metrics:
        metrics.set_phase("loading")
    plan = prepare_run(cfg, "trial", learning_rate)
    if plan.data.eval is None:
        raise ConfigError("dataset.validationFraction", "a trial needs validation data", "set it above 0")
    model = load_model(cfg, plan.tokenizer, plan.data.num_labels, plan.data.label_names)
    progress.emit(
        "start",
        command="trial",
        learningRate=plan.learning_rate,
        totalSteps=plan.total_steps,
        effectiveBatchSize=plan.effective_batch_size,
    )
    log = RunLog()
    args = training_arguments(
        plan,
        scratch_dir,
        max_steps=cfg.optimization.max_steps,
        evaluate=True,
        save=False,
        logging_steps=1,
    )
    callbacks = make_callbacks(
        plan,
        progress,
        metrics,
        log,
        save_on_signal=False,
        divergence_factor=cfg.optimization.divergence_factor,
    )
    trainer = build_trainer(plan, model, args, fine_tune_schedule(plan), callbacks)
    if metrics:
        metrics.set_phase("training")
    STOP.in_loop = True
    try:
        trainer.train()
    finally:
        STOP.in_loop = False
    if log.interrupted:
        STOP.check()
    step = trainer.state.global_step
    tail = [x for x in log.losses[-10:] if math.isfinite(x)]
    if log.diverged:
        return TrialResult(
            learning_rate=plan.learning_rate,
            steps=step,
            diverged=True,
            train_loss=sum(tail) / len(tail) if tail else None,
            effective_batch_size=plan.effective_batch_size,
            world_size=plan.world_size,
        )
    eval_loss = _final_eval(trainer, log, step)
    diverged = eval_loss is None or not math.isfinite(eval_loss)
    seen = dict(log.evals) | ({} if eval_loss is None else {step: eval_loss})
    evals = [EvalPoint(step=s, eval_loss=v) for s, v in sorted(seen.items()) if math.isfinite(v)]
    return TrialResult(
        evals=evals[-MAX_EVALS:],
        learning_rate=plan.learning_rate,
        eval_loss=None if diverged else eval_loss,
        train_loss=sum(tail) / len(tail) if tail else None,
        steps=step,
        diverged=diverged,
        effective_batch_size=plan.effective_batch_size,
        world_size=plan.world_size,
    )
