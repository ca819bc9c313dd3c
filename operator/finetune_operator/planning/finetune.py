"""The FineTuneJob: resolve its learning rate (a value, a named sweep's result scaled to this batch size, or
an `auto` sweep it creates and owns), then run and follow its training Job."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from finetune_operator import distributed, naming, rendering
from finetune_operator.api import SEARCHED, FineTuneJobSpec, FineTuneJobStatus, LRSweepSpec, Progress
from finetune_operator.children import ChildState
from finetune_operator.planning import study
from finetune_operator.planning.rangetest import Samples, child_failed, child_pending
from finetune_operator.planning.status import (
    ChildRequest,
    Event,
    StatusBuilder,
    finite,
    progress_from_sample,
)
from finetune_operator.sweeps import scale_learning_rate
from finetune_trainer.config import TrainResult


@dataclass(frozen=True)
class SweepRef:
    """The LRSweep a FineTuneJob reads (named by `fromSweep`, or its `auto` sweep), as the cache holds it."""

    name: str
    status: Mapping[str, Any]
    owner_uid: str | None = None
    """The uid of the sweep's controller (ownerReferences); None when nothing owns it."""


def plan(
    name: str,
    uid: str,
    spec: FineTuneJobSpec,
    b: StatusBuilder[FineTuneJobStatus],
    children: Mapping[str, ChildState],
    sweep: SweepRef | None,
    samples: Samples,
) -> LRSweepSpec | None:
    """Decide the FineTuneJob's status and its training Job; returns the spec of the LRSweep to create
    (`auto`, when it does not exist yet)."""
    lr = b.status.learning_rate
    if lr is None:
        lr, create = _resolve_learning_rate(name, uid, spec, b, sweep)
        if lr is None:
            return create
        b.condition("WaitingForSweep", False, "LearningRateResolved", f"learning rate {lr:.3g}")
    job = naming.train_job(name)
    child = children.get(job)
    b.status.job_name = job
    if child is None:
        floor = spec.schedule.min_learning_rate
        if floor >= lr:  # a value is refused at admission; a swept one is known only now
            b.phase(
                "Failed",
                "MinLearningRateTooHigh",
                f"schedule.minLearningRate {floor:.3g} is not below the learning rate {lr:.3g} from "
                f"{b.status.learning_rate_source}: lower schedule.minLearningRate below it",
            )
            return None
        try:
            config = rendering.train_config(
                study.with_params(spec, b.status.params or {}), lr, _source_text(b.status)
            )
        except ValidationError as e:
            b.invalid(e)
            return None
        b.children.append(ChildRequest(job, "train", ["train"], config))
        b.status.world_size = distributed.world_size(spec.resources)
        b.status.effective_batch_size = config.optimization.effective_batch_size(b.status.world_size)
        b.started()
        b.phase("Pending", "JobCreated", f"created training Job {job} at learning rate {lr:.3g}")
        return None
    _count_restarts(b, child)
    if child.phase == "Pending":
        child_pending(b, child)
    elif child.phase == "Running":
        b.phase("Running", "Training", f"training in Job {job}")
        progress = progress_from_sample(samples.get(job), child.start_time, b.now, b.status.progress)
        if progress:
            b.status.progress = progress
    elif child.phase == "Succeeded":
        _trained(b, child, lr)
    else:
        child_failed(b, child, "training")
    return None


def _count_restarts(b: StatusBuilder[FineTuneJobStatus], child: ChildState) -> None:
    """Record training pods that failed and were retried, with an event for each new one (a Job that
    failed for good ends with its own event, and its last failure was not retried)."""
    retried = max(0, child.failed_pods - 1) if child.phase == "Failed" else child.failed_pods
    if retried <= (b.status.restarts or 0):
        return
    b.status.restarts = retried
    if child.phase != "Failed":
        b.events.append(
            Event(
                "Warning",
                "TrainerRestarted",
                f"attempt {retried} of training Job {child.name} failed; the Job retries it, resuming from "
                "the last checkpoint",
            )
        )


def _resumed_text(status: FineTuneJobStatus) -> str:
    """How the successful attempt began, in words ("" when it started from scratch)."""
    if status.resumed_from_step is None:
        return ""
    after = (
        f"after attempt {status.restarts} failed" if status.restarts else "after an earlier attempt stopped"
    )
    return f"resumed from checkpoint at step {status.resumed_from_step} {after}"


def _source_text(status: FineTuneJobStatus) -> str:
    """Where the learning rate came from, in words, for the model card."""
    source = status.learning_rate_source or "value"
    if source == "value":
        return "learningRate.value (set by hand)"
    kind, _, name = source.partition("/")
    how = "created by this FineTuneJob (learningRate.auto)" if kind == "auto" else "learningRate.fromSweep"
    return f"LRSweep {name}, {how}"


def _trained(b: StatusBuilder[FineTuneJobStatus], child: ChildState, lr: float) -> None:
    try:
        result = TrainResult.model_validate(child.result or {})
    except ValidationError:
        b.phase(
            "Failed", "NoResult", f"Job {child.name} succeeded but left no training result: {child.message}"
        )
        return
    s = b.status
    trained = finite(result.learning_rate)
    # the LR the trainer trained at, nothing else; a trainer image from before exact scalars rounded its
    # result's floats to 4 significant digits, so a report that agrees with the resolved LR to that
    # precision keeps the resolved (exact) value
    if trained is not None and trained > 0 and not math.isclose(trained, lr, rel_tol=1e-3):
        s.learning_rate = lr = trained
    s.eval_loss, s.best_eval_loss = finite(result.eval_loss), finite(result.best_eval_loss)
    s.train_loss, s.checkpoint, s.early_stopped = (
        finite(result.train_loss),
        result.best_checkpoint or result.last_checkpoint,
        result.early_stopped,
    )
    s.best_checkpoint, s.last_checkpoint = result.best_checkpoint, result.last_checkpoint
    s.model, s.model_from, s.merged_model = result.final_model, result.final_model_from, result.merged_model
    s.model_card, s.hub_url = result.model_card, result.hub_url
    if "effectiveBatchSize" in (child.result or {}):  # a trainer from before issue 14 does not say
        s.effective_batch_size, s.world_size = result.effective_batch_size, result.world_size
    s.progress = Progress(
        step=result.steps,
        total_steps=result.total_steps or result.steps,
        percent=100,
        epoch=finite(result.epochs),
        loss=s.train_loss,
        eval_loss=s.eval_loss,
    )
    s.resumed_from_step = result.resumed_from_step
    resumed = _resumed_text(s)
    if resumed and b.status.phase != "Succeeded":
        b.events.append(Event("Normal", "ResumedFromCheckpoint", resumed[0].upper() + resumed[1:]))
    loss = "n/a" if s.eval_loss is None else f"{s.eval_loss:.4g}"
    b.phase(
        "Succeeded",
        "Trained",
        f"trained {result.steps} steps at learning rate {lr:.3g}, eval loss {loss}"
        + (f"; {resumed}" if resumed else ""),
    )


def _resolve_learning_rate(
    name: str,
    uid: str,
    spec: FineTuneJobSpec,
    b: StatusBuilder[FineTuneJobStatus],
    sweep: SweepRef | None,
) -> tuple[float | None, LRSweepSpec | None]:
    """(learning rate, or None while there is none yet; the auto sweep to create, if it is time)."""
    choice = spec.learning_rate
    if choice.value is not None:
        b.status.learning_rate, b.status.learning_rate_source = choice.value, "value"
        return choice.value, None
    if choice.from_sweep is not None:
        sweep_name, source = choice.from_sweep.name, f"sweep/{choice.from_sweep.name}"
    else:
        sweep_name, source = naming.auto_sweep(name), f"auto/{naming.auto_sweep(name)}"
    b.status.sweep_name = sweep_name
    if sweep is None:
        if choice.auto is not None:
            b.phase("Sweeping", "SweepCreated", f"created LRSweep {sweep_name} to find the learning rate")
            return None, rendering.sweep_spec_for_auto(spec)
        msg = (
            f"LRSweep {sweep_name} not found in this namespace; create it or fix learningRate.fromSweep.name"
        )
        b.condition("WaitingForSweep", True, "SweepNotFound", msg)
        b.phase("WaitingForSweep", "WaitingForSweep", msg)
        return None, None
    if choice.auto is not None and sweep.owner_uid != uid:
        msg = (
            f"LRSweep {sweep_name} exists but was not created by this FineTuneJob, so its result is not "
            f"this job's; delete LRSweep {sweep_name} or re-create this FineTuneJob under another name"
        )
        b.condition("WaitingForSweep", True, "SweepNameTaken", msg)
        b.phase("Pending", "SweepNameTaken", msg, stalled=True)
        return None, None
    status = sweep.status
    phase = status.get("phase")
    if phase == "Failed":
        b.phase("Failed", "SweepFailed", f"LRSweep {sweep_name} failed: {status.get('message', '')}")
        return None, None
    recommended = finite(_number(status.get("recommendedLearningRate")))
    if phase != "Succeeded" or recommended is None or recommended <= 0:
        waiting = "Sweeping" if choice.auto is not None else "WaitingForSweep"
        msg = f"waiting for LRSweep {sweep_name} to succeed (now {phase or 'Pending'})"
        b.condition("WaitingForSweep", True, "SweepRunning", msg)
        b.phase(waiting, "WaitingForSweep", msg, event=False)
        return None, None
    lr = recommended
    if choice.from_sweep is not None:
        params = _best_params(status) if choice.from_sweep.use == "all" else {}
        b.status.params = params or None
        own = study.with_params(spec, params).optimization.effective_batch_size(
            distributed.world_size(spec.resources)
        )
        sweep_batch = int(_number(status.get("effectiveBatchSize")) or own)
        lr = scale_learning_rate(lr, sweep_batch if sweep_batch > 0 else own, own, choice.from_sweep.scale)
    b.status.learning_rate, b.status.learning_rate_source = lr, source
    b.events.append(Event("Normal", "LearningRateResolved", f"learning rate {lr:.3g} from {source}"))
    return lr, None


def _number(value: Any) -> float | None:
    """A number another object's status claims to hold, or None (it is not ours to trust)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _best_params(status: Mapping[str, Any]) -> dict[str, float]:
    """The sweep's best trial's searched parameters a fine-tune takes (`use: all`): numbers only, and not
    the trial's own length or learning rate."""
    raw = status.get("bestParams")
    if not isinstance(raw, Mapping):
        return {}
    numbers = {
        k: _number(v) for k, v in raw.items() if k in SEARCHED and k not in ("learningRate", "maxSteps")
    }
    return {k: v for k, v in numbers.items() if v is not None}
