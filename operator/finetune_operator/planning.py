"""Reconcile decisions as pure functions: (spec, children, previous status) -> (new status, what to create).

Handlers gather the inputs from the API server and apply the `Plan`; everything that decides lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from finetune_operator import naming, rendering
from finetune_operator.api import (
    Condition,
    FineTuneJobSpec,
    FineTuneJobStatus,
    LRSweepSpec,
    LRSweepStatus,
    Progress,
    TrialStatus,
)
from finetune_operator.children import ChildState
from finetune_operator.sweeps import best_learning_rate, scale_learning_rate, trial_learning_rates
from finetune_trainer.config import RangeTestResult, Spec, TrainerConfig, TrainResult, TrialResult

TERMINAL = ("Succeeded", "Failed")
WARNING_REASONS = {"WaitingForSweep", "Unschedulable"}


@dataclass(frozen=True)
class ChildRequest:
    """A trainer Job to create."""

    name: str
    role: str
    args: list[str]
    config: TrainerConfig
    trial: int | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: dict[str, Any]
    create: list[ChildRequest] = field(default_factory=list)
    create_sweep: dict[str, Any] | None = None
    """The spec of an LRSweep to create (FineTuneJob `auto`)."""
    events: list[Event] = field(default_factory=list)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Conditions with `type_` set; `lastTransitionTime` moves only when the status flips."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c["type"] == type_), None)
    since = old["lastTransitionTime"] if old and old["status"] == value else now
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    ).to_wire()
    return [c for c in conditions if c["type"] != type_] + [new]


def progress_from_sample(
    sample: dict[str, float] | None, start_time: str | None, now: str
) -> Progress | None:
    """Progress from a trainer's metrics sample (`step`, `total_steps`, `learning_rate`, `loss`, …)."""
    if not sample or "step" not in sample:
        return None
    step, total = int(sample["step"]), int(sample.get("total_steps") or 0) or None
    eta = None
    if total and step and start_time:
        elapsed = (_parse(now) - _parse(start_time)).total_seconds()
        if elapsed > 0:
            eta = max(0, int(elapsed / step * (total - step)))
    return Progress(
        step=step,
        total_steps=total,
        percent=min(100, int(100 * step / total)) if total else 0,
        epoch=_finite(sample.get("epoch")),
        learning_rate=_finite(sample.get("learning_rate")),
        loss=_finite(sample.get("loss")),
        eval_loss=_finite(sample.get("eval_loss")),
        eta_seconds=eta,
    )


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


class _StatusBuilder:
    """Shared bookkeeping: phase, conditions, times, events."""

    def __init__(self, model: type[Spec], previous: dict[str, Any], generation: int, now: str) -> None:
        self.model = model
        self.status: dict[str, Any] = {k: v for k, v in previous.items() if k in _status_keys(model)}
        self.generation, self.now = generation, now
        self.events: list[Event] = []
        self.status["observedGeneration"] = generation
        self.status.setdefault("conditions", [])

    def condition(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        self.status["conditions"] = set_condition(
            self.status["conditions"], type_, status, reason, message, self.generation, self.now
        )

    def phase(self, phase: str, reason: str, message: str = "", event: bool = True) -> None:
        """Set the phase; a Kubernetes event goes out when the phase or its reason changes."""
        if event and (self.status.get("phase") != phase or self.reason() != reason):
            warn = phase == "Failed" or reason in WARNING_REASONS
            self.events.append(Event("Warning" if warn else "Normal", reason, message or phase))
        self.status["phase"] = phase
        self.status["message"] = message or None
        if phase in TERMINAL:
            self.status["completionTime"] = self.status.get("completionTime") or self.now
            self.condition("Ready", False, reason, message)
            self.condition("Succeeded", phase == "Succeeded", reason, message)
            self.condition("Failed", phase == "Failed", reason, message)
        else:
            self.condition("Ready", phase == "Running", reason, message)

    def reason(self) -> str | None:
        """The current phase's reason (the Ready condition's)."""
        return next((c["reason"] for c in self.status["conditions"] if c["type"] == "Ready"), None)

    def started(self) -> None:
        self.status["startTime"] = self.status.get("startTime") or self.now

    def result(self) -> dict[str, Any]:
        """The status as wire JSON, checked against the status model (a drift here is a bug, not data)."""
        return self.model.model_validate(self.status).to_wire()


def _status_keys(model: type[Spec]) -> set[str]:
    return {f.alias or n for n, f in model.model_fields.items()}


def is_done(previous: dict[str, Any], generation: int) -> bool:
    """Finished for this spec generation: nothing more to reconcile."""
    return previous.get("phase") in TERMINAL and previous.get("observedGeneration") == generation


def _invalid(b: _StatusBuilder, error: ValidationError | ValueError) -> Plan:
    message = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
        for e in (error.errors() if isinstance(error, ValidationError) else [{"loc": (), "msg": str(error)}])
    )
    b.phase("Failed", "InvalidSpec", message)
    return Plan(b.result(), events=b.events)


# ---------------------------------------------------------------------------------------------- LRSweep


def plan_sweep(
    name: str,
    spec: dict[str, Any],
    previous: dict[str, Any] | None,
    generation: int,
    children: dict[str, ChildState],
    samples: dict[str, dict[str, float]] | None = None,
    now: str | None = None,
) -> Plan:
    """Decide the LRSweep's status and which trainer Jobs to create next."""
    previous = previous or {}
    b = _StatusBuilder(LRSweepStatus, previous, generation, now or now_iso())
    if is_done(previous, generation):
        return Plan(previous)
    try:
        sweep = LRSweepSpec.model_validate(spec)
    except ValidationError as e:
        return _invalid(b, e)
    samples = samples or {}
    if sweep.method == "rangeTest":
        return _plan_range_test(name, sweep, b, children, samples)
    return _plan_trials(name, sweep, b, children)


def _plan_range_test(
    name: str, sweep: LRSweepSpec, b: _StatusBuilder, children: dict[str, ChildState], samples: dict
) -> Plan:
    job = naming.range_test_job(name)
    child = children.get(job)
    create: list[ChildRequest] = []
    if child is None:
        try:
            config = rendering.range_test_config(sweep)
        except ValidationError as e:
            return _invalid(b, e)
        create.append(ChildRequest(job, "range-test", ["range-test"], config))
        b.started()
        b.phase("Pending", "JobCreated", f"created range-test Job {job}")
        return Plan(b.result(), create=create, events=b.events)
    if child.phase == "Pending":
        _child_pending(b, child)
    elif child.phase == "Running":
        b.phase("Running", "RangeTestRunning", f"range test running in Job {job}")
        progress = progress_from_sample(samples.get(job), child.start_time, b.now)
        if progress:
            b.status["progress"] = progress.to_wire()
    elif child.phase == "Succeeded":
        _range_test_done(b, child, sweep)
    else:
        _child_failed(b, child, "range test")
    return Plan(b.result(), create=create, events=b.events)


def _child_pending(b: _StatusBuilder, child: ChildState) -> None:
    """A Job whose pod has not started: its pod's reason if it has one. A Job that has nothing to say
    keeps its JobCreated condition (a status write fewer per Job, and the message still holds)."""
    if not (child.reason or child.message) and b.reason() == "JobCreated":
        return
    b.phase(
        "Pending",
        child.reason or "PodPending",
        child.message or f"waiting for Job {child.name} to start",
        event=bool(child.message),
    )


def diverged_at_minimum(result: RangeTestResult, min_lr: float) -> bool:
    """True when the ramp diverged within its first decade: the window starts too high."""
    if result.stop_reason == "completed" or not result.curve:
        return False
    return result.curve[-1].lr <= min_lr * 10


def _range_test_done(b: _StatusBuilder, child: ChildState, sweep: LRSweepSpec) -> None:
    try:
        result = RangeTestResult.model_validate(child.result or {})
    except ValidationError:
        b.phase(
            "Failed", "NoResult", f"Job {child.name} succeeded but left no range-test result: {child.message}"
        )
        return
    b.status.update(
        recommendedLearningRate=result.recommended_learning_rate,
        rule=result.rule,
        effectiveBatchSize=result.effective_batch_size,
        adapter=result.adapter,
        suggestions=result.suggestions,
        bestLoss=result.best_loss,
        stopReason=result.stop_reason,
        curve=[p.to_wire() for p in result.curve[:200]],
        warnings=result.warnings[:16] or None,
    )
    if result.steps:
        b.status["progress"] = Progress(
            step=result.steps, total_steps=sweep.range_test.steps, percent=100
        ).to_wire()
    if result.stop_reason != "completed":
        at = result.curve[-1].lr if result.curve else float("nan")
        b.condition("Diverged", True, "LossDiverged", f"loss diverged at learning rate {at:.3g}")
    else:
        b.condition("Diverged", False, "Completed", "the ramp reached maxLearningRate")
    if diverged_at_minimum(result, sweep.range_test.min_learning_rate):
        b.phase(
            "Failed",
            "DivergedAtMinimumLearningRate",
            f"the loss diverged within the first decade of the ramp; lower rangeTest.minLearningRate "
            f"(now {sweep.range_test.min_learning_rate:g})",
        )
    elif result.recommended_learning_rate is None:
        b.phase(
            "Failed",
            "NoRecommendation",
            f"rule {result.rule} found no learning rate on the curve; widen the range or add steps",
        )
    else:
        b.phase(
            "Succeeded",
            "Recommended",
            f"recommended learning rate {result.recommended_learning_rate:.3g} (rule {result.rule}, "
            f"effective batch size {result.effective_batch_size})",
        )


def _child_failed(b: _StatusBuilder, child: ChildState, what: str) -> None:
    hint = {
        "InvalidConfig": "fix the spec field named in the message",
        "OutOfMemory": "lower optimization.batchSize or maxSeqLength, or use a LoRA adapter",
        "Diverged": "lower the learning rate",
        "DeadlineExceeded": "raise activeDeadlineSeconds",
        "BackoffLimitExceeded": "see the pod logs; retries are set by backoffLimit",
    }.get(child.reason or "", "")
    message = f"{what} Job {child.name} failed ({child.reason})" + (
        f": {child.message}" if child.message else ""
    )
    b.phase("Failed", child.reason or "JobFailed", message + (f"; {hint}" if hint else ""))


def _plan_trials(name: str, sweep: LRSweepSpec, b: _StatusBuilder, children: dict[str, ChildState]) -> Plan:
    lrs = trial_learning_rates(sweep.method, sweep.trials)
    trials: list[TrialStatus] = []
    create: list[ChildRequest] = []
    active = sum(
        1
        for i in range(len(lrs))
        if (c := children.get(naming.trial_job(name, i))) and c.phase in ("Pending", "Running")
    )
    for i, lr in enumerate(lrs):
        job = naming.trial_job(name, i)
        child = children.get(job)
        trial = TrialStatus(index=i, learning_rate=lr, job_name=job)
        if child is None:
            if active < sweep.trials.parallelism:
                try:
                    config = rendering.trial_config(sweep, lr)
                except ValidationError as e:
                    return _invalid(b, e)
                create.append(
                    ChildRequest(job, "trial", ["trial", "--learning-rate", repr(lr)], config, trial=i)
                )
                active += 1
        else:
            trial.phase = child.phase
            if child.result and child.result.get("kind") == "trial":
                r = TrialResult.model_validate(child.result)
                trial.eval_loss, trial.diverged = r.eval_loss, r.diverged
            elif child.phase == "Failed" and child.reason == "Diverged":
                trial.diverged = True
        trials.append(trial)
    if create:
        b.started()
    b.status["trials"] = [t.to_wire() for t in trials]
    finished = [t for t in trials if t.phase in TERMINAL]
    b.status["progress"] = Progress(
        step=len(finished), total_steps=len(trials), percent=int(100 * len(finished) / len(trials))
    ).to_wire()
    if len(finished) < len(trials):
        running = sum(t.phase == "Running" for t in trials)
        b.phase(
            "Running" if running else "Pending",
            "TrialsRunning",
            f"{len(finished)}/{len(trials)} trials finished, {running} running",
            event=False,
        )
        return Plan(b.result(), create=create, events=b.events)
    best = best_learning_rate([(t.learning_rate, t.eval_loss) for t in trials])
    if best is None:
        b.phase(
            "Failed", "AllTrialsFailed", "no trial produced a validation loss; lower the learning-rate window"
        )
    else:
        lr, loss = best
        eff = sweep.optimization.effective_batch_size()
        b.status.update(
            recommendedLearningRate=lr,
            rule="best-trial",
            bestLoss=loss,
            effectiveBatchSize=eff,
            adapter=sweep.adapter.type,
        )
        b.phase(
            "Succeeded",
            "Recommended",
            f"recommended learning rate {lr:.3g} (best of {len(trials)} trials, eval loss {loss:.4g})",
        )
    return Plan(b.result(), events=b.events)


# ---------------------------------------------------------------------------------------------- FineTuneJob


def plan_finetune(
    name: str,
    spec: dict[str, Any],
    previous: dict[str, Any] | None,
    generation: int,
    children: dict[str, ChildState],
    sweep: dict[str, Any] | None,
    samples: dict[str, dict[str, float]] | None = None,
    now: str | None = None,
) -> Plan:
    """Decide the FineTuneJob's status: resolve the learning rate, then run and follow the training Job.

    `sweep` is the LRSweep object named by `fromSweep` (or owned by `auto`), None when it does not exist.
    """
    previous = previous or {}
    b = _StatusBuilder(FineTuneJobStatus, previous, generation, now or now_iso())
    if is_done(previous, generation):
        return Plan(previous)
    try:
        job_spec = FineTuneJobSpec.model_validate(spec)
    except ValidationError as e:
        return _invalid(b, e)

    lr = previous.get("learningRate")
    plan = Plan({})
    if lr is None:
        lr = _resolve_learning_rate(name, job_spec, b, sweep, plan)
        if lr is None:
            plan.status = b.result()
            plan.events = b.events
            return plan
        b.condition("WaitingForSweep", False, "LearningRateResolved", f"learning rate {lr:.3g}")
    job = naming.train_job(name)
    child = children.get(job)
    b.status["jobName"] = job
    if child is None:
        try:
            config = rendering.train_config(job_spec, lr)
        except ValidationError as e:
            return _invalid(b, e)
        plan.create.append(ChildRequest(job, "train", ["train"], config))
        b.started()
        b.phase("Pending", "JobCreated", f"created training Job {job} at learning rate {lr:.3g}")
    elif child.phase == "Pending":
        _child_pending(b, child)
    elif child.phase == "Running":
        b.phase("Running", "Training", f"training in Job {job}")
        progress = progress_from_sample((samples or {}).get(job), child.start_time, b.now)
        if progress:
            b.status["progress"] = progress.to_wire()
    elif child.phase == "Succeeded":
        try:
            result = TrainResult.model_validate(child.result or {})
        except ValidationError:
            b.phase("Failed", "NoResult", f"Job {job} succeeded but left no training result: {child.message}")
        else:
            b.status.update(
                evalLoss=result.eval_loss,
                bestEvalLoss=result.best_eval_loss,
                trainLoss=result.train_loss,
                checkpoint=result.best_checkpoint,
                earlyStopped=result.early_stopped,
            )
            b.status["progress"] = Progress(
                step=result.steps,
                total_steps=result.total_steps or result.steps,
                percent=100,
                epoch=result.epochs,
                loss=result.train_loss,
                eval_loss=result.eval_loss,
            ).to_wire()
            loss = "n/a" if result.eval_loss is None else f"{result.eval_loss:.4g}"
            b.phase(
                "Succeeded",
                "Trained",
                f"trained {result.steps} steps at learning rate {lr:.3g}, eval loss {loss}",
            )
    else:
        _child_failed(b, child, "training")
    plan.status, plan.events = b.result(), b.events
    return plan


def _resolve_learning_rate(
    name: str, spec: FineTuneJobSpec, b: _StatusBuilder, sweep: dict[str, Any] | None, plan: Plan
) -> float | None:
    choice = spec.learning_rate
    if choice.value is not None:
        b.status.update(learningRate=choice.value, learningRateSource="value")
        return choice.value
    if choice.from_sweep is not None:
        sweep_name, source = choice.from_sweep.name, f"sweep/{choice.from_sweep.name}"
    else:
        sweep_name, source = naming.auto_sweep(name), f"auto/{naming.auto_sweep(name)}"
    b.status["sweepName"] = sweep_name
    if sweep is None:
        if choice.auto is not None:
            plan.create_sweep = rendering.sweep_spec_for_auto(spec).to_wire()
            b.phase("Sweeping", "SweepCreated", f"created LRSweep {sweep_name} to find the learning rate")
            return None
        msg = (
            f"LRSweep {sweep_name} not found in this namespace; create it or fix learningRate.fromSweep.name"
        )
        b.condition("WaitingForSweep", True, "SweepNotFound", msg)
        b.phase("WaitingForSweep", "WaitingForSweep", msg)
        return None
    sweep_status = sweep.get("status") or {}
    phase = sweep_status.get("phase")
    if phase == "Failed":
        b.phase("Failed", "SweepFailed", f"LRSweep {sweep_name} failed: {sweep_status.get('message', '')}")
        return None
    recommended = sweep_status.get("recommendedLearningRate")
    if phase != "Succeeded" or recommended is None:
        waiting = "Sweeping" if choice.auto is not None else "WaitingForSweep"
        msg = f"waiting for LRSweep {sweep_name} to succeed (now {phase or 'Pending'})"
        b.condition("WaitingForSweep", True, "SweepRunning", msg)
        b.phase(waiting, "WaitingForSweep", msg, event=False)
        return None
    lr = float(recommended)
    if choice.from_sweep is not None:
        sweep_batch = int(sweep_status.get("effectiveBatchSize") or spec.optimization.effective_batch_size())
        lr = scale_learning_rate(
            lr, sweep_batch, spec.optimization.effective_batch_size(), choice.from_sweep.scale
        )
    b.status.update(learningRate=lr, learningRateSource=source)
    b.events.append(Event("Normal", "LearningRateResolved", f"learning rate {lr:.3g} from {source}"))
    return lr
