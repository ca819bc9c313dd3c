"""Reconcile decisions as pure functions: (spec, children, previous status) -> (new status, what to create).

Handlers gather the inputs from the API server and apply the `Plan`; everything that decides lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from finetune_operator import naming, planning_adaptive, rendering
from finetune_operator.api import (
    Condition,
    FineTuneJobSpec,
    FineTuneJobStatus,
    LRSweepSpec,
    LRSweepStatus,
    Progress,
    RangeTestSummary,
    TrialStatus,
)
from finetune_operator.children import ChildState
from finetune_operator.sweeps import best_learning_rate, scale_learning_rate, trial_learning_rates
from finetune_trainer.config import RangeTestResult, RangeTestSpec, Spec, TrainerConfig, TrainResult

TERMINAL = ("Succeeded", "Failed")
RECOMMENDED = planning_adaptive.RECOMMENDED
WARNING_REASONS = {"WaitingForSweep", "Unschedulable"}


@dataclass(frozen=True)
class ChildRequest:
    """A trainer Job to create."""

    name: str
    role: str
    args: list[str]
    config: TrainerConfig
    trial: int | None = None
    stage: int | None = None


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
        self.create: list[ChildRequest] = []
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

    def plan(self) -> Plan:
        return Plan(self.result(), create=self.create, events=self.events)


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
    if sweep.method == "adaptive":
        return _plan_adaptive(name, sweep, b, children, samples)
    if sweep.method == "rangeTest":
        result = _range_test(name, sweep, b, children, samples)
        if result is not None:
            _range_test_verdict(b, result, sweep.range_test)
        return b.plan()
    return _plan_trials(name, sweep, b, children)


def _range_test(
    name: str, sweep: LRSweepSpec, b: _StatusBuilder, children: dict[str, ChildState], samples: dict
) -> RangeTestResult | None:
    """Create and follow the range-test Job; its result once it succeeded (written to the status)."""
    job = naming.range_test_job(name)
    child = children.get(job)
    if child is None:
        try:
            config = rendering.range_test_config(sweep)
        except ValidationError as e:
            _invalid(b, e)
            return None
        b.create.append(ChildRequest(job, "range-test", ["range-test"], config))
        b.started()
        b.phase("Pending", "JobCreated", f"created range-test Job {job}")
    elif child.phase == "Pending":
        _child_pending(b, child)
    elif child.phase == "Running":
        b.phase("Running", "RangeTestRunning", f"range test running in Job {job}")
        progress = progress_from_sample(samples.get(job), child.start_time, b.now)
        if progress:
            b.status["progress"] = progress.to_wire()
    elif child.phase == "Succeeded":
        return _range_test_result(b, child, sweep)
    else:
        _child_failed(b, child, "range test")
    return None


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


def _range_test_result(b: _StatusBuilder, child: ChildState, sweep: LRSweepSpec) -> RangeTestResult | None:
    """The finished range test's result, written to the status (curve, suggestions, window, edge)."""
    try:
        result = RangeTestResult.model_validate(child.result or {})
    except ValidationError:
        b.phase(
            "Failed", "NoResult", f"Job {child.name} succeeded but left no range-test result: {child.message}"
        )
        return None
    b.status.update(
        effectiveBatchSize=result.effective_batch_size,
        adapter=result.adapter,
        suggestions=result.suggestions,
        stopReason=result.stop_reason,
        curve=[p.to_wire() for p in result.curve[:200]],
        warnings=result.warnings[:16] or None,
        rangeTest=planning_adaptive.summarize_range_test(result).to_wire(),
    )
    if result.steps:
        b.status["progress"] = Progress(step=result.steps, total_steps=result.steps, percent=100).to_wire()
    if result.stop_reason != "completed":
        at = result.curve[-1].lr if result.curve else float("nan")
        b.condition("Diverged", True, "LossDiverged", f"loss diverged at learning rate {at:.3g}")
    else:
        b.condition("Diverged", False, "Completed", "the ramp reached its last learning rate")
    return result


def diverged_at_minimum(result: RangeTestResult, min_lr: float | None) -> bool:
    """True when the ramp diverged within its first decade: the window starts too high."""
    if result.stop_reason == "completed" or not result.curve or min_lr is None:
        return False
    return result.curve[-1].lr <= min_lr * 10


def still_falling(result: RangeTestResult) -> bool:
    """True when the ramp ended without diverging at its lowest loss: the minimum lies beyond it."""
    curve = result.curve
    return (
        result.stop_reason == "completed" and len(curve) >= 2 and curve[-1].loss <= min(p.loss for p in curve)
    )


def range_test_verdict(result: RangeTestResult, spec: RangeTestSpec) -> tuple[str, str]:
    """(reason, message) of a finished `rangeTest` sweep; anything but `Recommended` fails it. A
    recommendation outside the tested window, or from a curve still falling at its end, names the bound."""
    curve, rule, lr = result.curve, result.rule, result.recommended_learning_rate
    low = result.min_learning_rate or spec.min_learning_rate or (curve[0].lr if curve else None)
    high = result.max_learning_rate or (curve[-1].lr if curve else None)
    if diverged_at_minimum(result, low):
        fix = f"lower rangeTest.minLearningRate (now {low:g})"
        return (
            "DivergedAtMinimumLearningRate",
            f"the loss diverged within the first decade of the ramp; {fix}",
        )
    if lr is None:
        return (
            "NoRecommendation",
            f"rule {rule} found no learning rate on the curve; widen the range or add steps",
        )
    if low is not None and lr < low * (1 - 1e-9):
        tested = f"below the lowest learning rate tested ({low:.3g})"
        return (
            "OutsideTestedWindow",
            f"rule {rule} recommends {lr:.3g}, {tested}; lower rangeTest.minLearningRate",
        )
    if high is not None and lr > high * (1 + 1e-9):
        tested = f"above the highest learning rate tested ({high:.3g})"
        return (
            "OutsideTestedWindow",
            f"rule {rule} recommends {lr:.3g}, {tested}; raise rangeTest.maxLearningRate",
        )
    if still_falling(result):
        bound = "rangeTest.ceilingLearningRate" if spec.extend else "rangeTest.maxLearningRate"
        edge = f"the loss was still falling at the highest learning rate tested ({high:.3g})"
        return (
            "CurveStillFalling",
            f"{edge}: rule {rule}'s {lr:.3g} sits at the curve's top edge; raise {bound}",
        )
    batch = f"effective batch size {result.effective_batch_size}"
    return RECOMMENDED, f"recommended learning rate {lr:.3g} (rule {rule}, {batch})"


def _range_test_verdict(b: _StatusBuilder, result: RangeTestResult, spec: RangeTestSpec) -> None:
    b.status.update(
        recommendedLearningRate=result.recommended_learning_rate, rule=result.rule, bestLoss=result.best_loss
    )
    reason, message = range_test_verdict(result, spec)
    b.phase("Succeeded" if reason == RECOMMENDED else "Failed", reason, message)


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


# ---------------------------------------------------------------------------------------------- adaptive


def _plan_adaptive(
    name: str, sweep: LRSweepSpec, b: _StatusBuilder, children: dict[str, ChildState], samples: dict
) -> Plan:
    """The range test; then the adaptive stages' trials as Jobs; then the recommendation and its evidence."""
    summary = _remembered_range_test(name, b, children)
    if summary is None:
        result = _range_test(name, sweep, b, children, samples)
        if result is None:
            return b.plan()
        summary = planning_adaptive.summarize_range_test(result)
    edge = summary.edge_learning_rate
    if edge is None:
        b.phase(
            "Failed",
            "NoEdge",
            "the range test reported neither a divergence edge nor the highest learning rate it reached "
            "(a trainer image older than the adaptive method?); update the trainer image",
        )
        return b.plan()
    remembered = planning_adaptive.remembered_records(b.status.get("trials"))
    decision = planning_adaptive.decide(name, sweep, edge, children, remembered)
    for t in decision.start:
        req = t.request
        try:
            config = rendering.trial_config(sweep, req.learning_rate, req.steps)
        except ValidationError as e:
            return _invalid(b, e)
        args = ["trial", "--learning-rate", repr(req.learning_rate)]
        b.create.append(ChildRequest(t.job, "trial", args, config, trial=req.index, stage=req.stage))
    if decision.start:
        b.started()
    finished, planned = len(decision.finished), planning_adaptive.planned_trials(sweep, decision)
    b.status["trials"] = [t.status().to_wire() for t in decision.trials[:64]]
    b.status["stepsSpent"] = planning_adaptive.steps_spent(summary, decision)
    b.status["progress"] = Progress(
        step=finished, total_steps=planned, percent=100 if decision.done else int(100 * finished / planned)
    ).to_wire()
    if decision.config_error is not None:
        _child_failed(b, decision.config_error, "trial")
        return b.plan()
    rec = decision.done
    if rec is None:
        running = decision.running
        b.phase(
            "Running" if running else "Pending",
            "TrialsRunning",
            f"stage {decision.stage}: {finished}/{len(decision.trials)} trials finished, {running} running "
            f"(below the range test's edge {edge:.3g})",
            event=False,
        )
        return b.plan()
    b.status.update(
        recommendedLearningRate=rec.recommended_learning_rate,
        rule="adaptive",
        interval=rec.interval.to_wire() if rec.interval else None,
        decidedBy=rec.decided_by,
        evidence=rec.evidence,
        fit=rec.fit.to_wire() if rec.fit else None,
        bestLoss=rec.best_loss,
    )
    reason, message = planning_adaptive.verdict(rec)
    b.phase("Succeeded" if reason == RECOMMENDED else "Failed", reason, message)
    return b.plan()


def _remembered_range_test(
    name: str, b: _StatusBuilder, children: dict[str, ChildState]
) -> RangeTestSummary | None:
    """The range test as the status recorded it, when its Job is gone (deleted after its TTL)."""
    wire = b.status.get("rangeTest")
    if naming.range_test_job(name) in children or not wire or not wire.get("edgeLearningRate"):
        return None
    try:
        return RangeTestSummary.model_validate(wire)
    except ValidationError:
        return None


# ---------------------------------------------------------------------------------------------- grid/random


def _plan_trials(name: str, sweep: LRSweepSpec, b: _StatusBuilder, children: dict[str, ChildState]) -> Plan:
    lrs = trial_learning_rates(sweep.method, sweep.trials)
    trials: list[TrialStatus] = []
    active = sum(
        1
        for i in range(len(lrs))
        if (c := children.get(naming.trial_job(name, i))) and c.phase in ("Pending", "Running")
    )
    for i, lr in enumerate(lrs):
        job = naming.trial_job(name, i)
        child = children.get(job)
        trial = TrialStatus(index=i, learning_rate=lr, steps=sweep.trials.steps, job_name=job)
        if child is None:
            if active < sweep.trials.parallelism:
                try:
                    config = rendering.trial_config(sweep, lr, sweep.trials.steps)
                except ValidationError as e:
                    return _invalid(b, e)
                b.create.append(
                    ChildRequest(job, "trial", ["trial", "--learning-rate", repr(lr)], config, trial=i)
                )
                active += 1
        else:
            trial.phase = child.phase
            request = planning_adaptive.TrialRequest(1, i, lr, sweep.trials.steps)
            record = planning_adaptive.trial_record(request, child)
            if record is not None:
                trial.eval_loss, trial.diverged = record.eval_loss, record.diverged
        trials.append(trial)
    if b.create:
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
        return b.plan()
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
    return b.plan()


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
