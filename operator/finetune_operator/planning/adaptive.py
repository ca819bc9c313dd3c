"""The adaptive LRSweep: the range test, then its trials as Jobs, then the recommendation and its evidence.

The trainer's `adaptive.next_step` decides the stages from the range test's edge and the finished trials;
this module maps its trial requests onto Jobs named per (stage, index), so the Jobs themselves are the
sweep's memory and every reconcile recomputes the same plan. A finished trial whose Job is gone (deleted
after `ttlSecondsAfterFinished`) is remembered from the status the operator wrote. Pure functions only.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from finetune_operator import naming, rendering
from finetune_operator.api import (
    TRIALS_MAX,
    LRSweepSpec,
    LRSweepStatus,
    Progress,
    RangeTestSummary,
    TrialStatus,
)
from finetune_operator.children import ChildState, never_started
from finetune_operator.planning import rangetest
from finetune_operator.planning.rangetest import RECOMMENDED, Samples
from finetune_operator.planning.remembered import JOB_GONE, remembered
from finetune_operator.planning.status import ChildRequest, StatusBuilder, finite, progress_from_sample
from finetune_trainer.adaptive import (
    Ramp,
    TrialRequest,
    ceiling,
    inside_tested_window,
    next_step,
    ramp_minimum,
    ramp_too_high,
    sized_by_range_test,
    stage_two_fits,
)
from finetune_trainer.config import Recommendation, TrialRecord, TrialResult

ACTIVE = ("Pending", "Running")


@dataclass(frozen=True)
class Trial:
    """One requested trial, its Job and, once finished, its record."""

    request: TrialRequest
    job: str
    child: ChildState | None
    record: TrialRecord | None

    def status(self, progress: Progress | None = None) -> TrialStatus:
        """The trial as the status lists it; `progress` is its live progress while it runs."""
        r = self.record
        if self.child is not None:
            phase = self.child.phase
        else:
            phase = "Pending" if r is None else ("Succeeded" if r.eval_loss is not None else "Failed")
        return TrialStatus(
            index=self.request.index,
            stage=self.request.stage,
            learning_rate=self.request.learning_rate,
            steps=r.steps if r else self.request.steps,
            phase=phase,
            eval_loss=r.eval_loss if r else None,
            diverged=r.diverged if r else False,
            job_name=self.job,
            progress=progress if phase == "Running" else None,
        )


@dataclass(frozen=True)
class AdaptiveDecision:
    """What the trials say now: every trial so far, the ones to start, and the outcome once there is one."""

    trials: tuple[Trial, ...]
    start: tuple[Trial, ...] = ()
    done: Recommendation | None = None
    config_error: ChildState | None = None
    """A trial Job that failed on a configuration error: the sweep stops with the trainer's message."""

    @property
    def finished(self) -> list[Trial]:
        return [t for t in self.trials if t.record is not None]

    @property
    def running(self) -> int:
        return sum(1 for t in self.trials if t.child is not None and t.child.phase == "Running")

    @property
    def stage(self) -> int:
        return max((t.request.stage for t in self.trials), default=1)


def trial_record(request: TrialRequest, child: ChildState | None) -> TrialRecord | None:
    """A finished trial's record (None while it has not finished). A Job that failed on divergence, or a
    result that says diverged or has a non-finite loss, is a diverged record; any other failure, or a
    malformed result, is a record without a loss."""
    if child is None or child.phase in ACTIVE:
        return None
    result: TrialResult | None = None
    if child.result and child.result.get("kind") == "trial":
        try:
            result = TrialResult.model_validate(child.result)
        except ValidationError:
            result = None
    loss = result.eval_loss if result else None
    ok = loss is not None and math.isfinite(loss)
    diverged = (child.phase == "Failed" and child.reason == "Diverged") or bool(result and result.diverged)
    diverged = diverged or (loss is not None and not ok)
    return TrialRecord(
        stage=request.stage,
        index=request.index,
        learning_rate=request.learning_rate,
        steps=result.steps if result and result.steps else request.steps,
        eval_loss=loss if ok and not diverged else None,
        diverged=diverged,
    )


def remembered_records(
    previous_trials: list[TrialStatus] | None, jobs: Container[str] = ()
) -> dict[tuple[int, int], TrialRecord]:
    """Finished adaptive trials as the last status wrote them (for Jobs deleted since; a trial last seen
    running is a failed record, see `remembered`)."""
    records: dict[tuple[int, int], TrialRecord] = {}
    for (stage, index), t in remembered(previous_trials, jobs).items():
        if stage == 0:
            continue
        try:
            records[(stage, index)] = TrialRecord(
                stage=stage,
                index=index,
                learning_rate=t.learning_rate,
                steps=t.steps or 0,
                eval_loss=finite(t.eval_loss),
                diverged=t.diverged,
            )
        except ValidationError:
            continue
    return records


def decide(
    name: str,
    spec: LRSweepSpec,
    ramp: Ramp,
    children: Mapping[str, ChildState],
    remembered: dict[tuple[int, int], TrialRecord] | None = None,
) -> AdaptiveDecision:
    """The trials the current stage needs, matched with their Jobs; which to start (at most
    `adaptive.parallelism` running); or the recommendation once the stages are done. `ramp` is what the
    range test said (see `next_step`).

    Records feed `next_step`, whose requests name the Jobs that hold further records, so the loop runs until
    no new record turns up (each round adds one, at most a few dozen rounds of arithmetic).
    """
    records = dict(remembered or {})
    requests: dict[tuple[int, int], TrialRequest] = {}
    while True:
        step = next_step(spec.adaptive, ramp, list(records.values()), spec.optimization.max_steps)
        requests.update({r.key: r for r in step.trials})
        if step.done is not None:
            break
        new = False
        for req in step.trials:
            child = children.get(job_name(name, req))
            if (
                child is not None
                and child.phase == "Failed"
                and (child.reason == "InvalidConfig" or never_started(child))
            ):
                return AdaptiveDecision(_trials(name, requests, children, records), config_error=child)
            if req.key not in records and (record := trial_record(req, child)) is not None:
                records[req.key] = record
                new = True
        if not new:
            break
    trials = _trials(name, requests, children, records)
    if step.done is not None:
        return AdaptiveDecision(trials, done=step.done)
    wanted = {r.key for r in step.trials}
    active = sum(1 for t in trials if t.child is not None and t.child.phase in ACTIVE)
    idle = [t for t in trials if t.request.key in wanted and t.child is None and t.record is None]
    return AdaptiveDecision(trials, start=tuple(idle[: max(0, spec.adaptive.parallelism - active)]))


def job_name(sweep: str, request: TrialRequest) -> str:
    return naming.adaptive_trial_job(sweep, request.stage, request.index)


def _trials(
    name: str,
    requests: dict[tuple[int, int], TrialRequest],
    children: Mapping[str, ChildState],
    records: dict[tuple[int, int], TrialRecord],
) -> tuple[Trial, ...]:
    """Every trial requested or remembered, in (stage, index) order."""
    known = dict(requests)
    for key, r in records.items():
        known.setdefault(key, TrialRequest(r.stage, r.index, r.learning_rate, r.steps))
    trials = []
    for key, req in sorted(known.items()):
        job = job_name(name, req)
        trials.append(Trial(req, job, children.get(job), records.get(key)))
    return tuple(trials)


def planned_trials(spec: LRSweepSpec, decision: AdaptiveDecision, ramp_steps: int = 0) -> int:
    """Trials the sweep expects to run in all, as far as it knows now: stage 1 so far, plus the
    finalists while still in stage 1 if ``adaptive.maxFineTunes`` leaves them room."""
    if decision.stage != 1 or decision.done is not None:
        return len(decision.trials)
    stage1 = [t.request for t in decision.trials]
    room = stage_two_fits(spec.adaptive, stage1, spec.optimization.max_steps, ramp_steps)
    return len(decision.trials) + (spec.adaptive.finalists if room else 0)


def steps_spent(summary: RangeTestSummary | None, decision: AdaptiveDecision) -> int:
    """Optimiser steps of the range test and every finished trial."""
    trial_steps = sum(t.record.steps for t in decision.finished if t.record is not None)
    return (summary.steps if summary and summary.steps else 0) + trial_steps


def verdict(rec: Recommendation) -> tuple[str, str]:
    """(reason, message): weak evidence or no learning rate is never a success; the reason is then the
    evidence and the message the trainer's, which names the bound to move."""
    lr = rec.recommended_learning_rate
    if lr is None or not rec.trusted:
        return rec.evidence, rec.message or f"no recommendation ({rec.evidence})"
    span = f", interval {rec.interval.low:.3g}-{rec.interval.high:.3g}" if rec.interval else ""
    return RECOMMENDED, f"recommended learning rate {lr:.3g}{span} ({rec.decided_by}: {rec.message})"


def plan(
    name: str,
    sweep: LRSweepSpec,
    b: StatusBuilder[LRSweepStatus],
    children: Mapping[str, ChildState],
    samples: Samples,
) -> None:
    """The range test; then the adaptive stages' trials as Jobs; then the recommendation and its evidence."""
    summary = _remembered_range_test(b)
    if summary is None:
        result = rangetest.range_test(name, sweep, b, children, samples)
        if result is None:
            return
        summary = rangetest.summarize(result)
    sweep = sized_by_range_test(sweep, summary.fine_tune_steps)  # sized in epochs: the steps it counted
    edge = summary.edge_learning_rate
    if edge is None:
        b.phase(
            "Failed",
            "NoEdge",
            "the range test reported neither a divergence edge nor the highest learning rate it reached "
            "(a trainer image older than the adaptive method?); update the trainer image",
        )
        return
    if (too_high := ramp_too_high(summary.min_learning_rate, summary.divergence_learning_rate)) is not None:
        b.status.evidence, b.status.decided_by = too_high.evidence, too_high.decided_by
        b.status.steps_spent = summary.steps or 0
        b.phase("Failed", *verdict(too_high))
        return
    previous = {(t.stage, t.index): t for t in b.status.trials or []}
    minimum = ramp_minimum(summary.loss_minimum_learning_rate, b.status.curve or [])  # as `recommend`
    records = remembered_records(b.status.trials, children)
    ramp = Ramp(
        edge=edge,
        minimum=minimum,
        baseline=summary.baseline_loss,
        steps=summary.steps or 0,
        loss=summary.best_loss,
    )
    decision = decide(name, sweep, ramp, children, records)
    for t in decision.start:
        req = t.request
        try:
            config = rendering.trial_config(
                sweep, req.learning_rate, req.steps, match_epochs=sweep.adaptive.match_epochs
            )
        except ValidationError as e:
            b.invalid(e)
            return
        args = ["trial", "--learning-rate", repr(req.learning_rate)]
        b.children.append(ChildRequest(t.job, "trial", args, config, trial=req.index, stage=req.stage))
    if decision.start:
        b.started()
    finished, planned = len(decision.finished), planned_trials(sweep, decision, ramp.steps)
    kept = remembered(b.status.trials, children)
    b.status.trials = [
        _lost(t.status(_live(t, previous.get(t.request.key), samples, b.now)), t, kept.get(t.request.key))
        for t in decision.trials[:TRIALS_MAX]
    ]
    b.status.steps_spent = steps_spent(summary, decision)
    b.status.progress = Progress(
        step=finished, total_steps=planned, percent=100 if decision.done else int(100 * finished / planned)
    )
    if decision.config_error is not None:
        rangetest.child_failed(b, decision.config_error, "trial")
        return
    rec = decision.done
    if rec is not None:
        tried = [t.record for t in decision.finished if t.record is not None]
        rec = inside_tested_window(rec, summary.min_learning_rate, tried)
    if rec is None:
        running = decision.running
        b.phase(
            "Running" if running else "Pending",
            "TrialsRunning",
            f"stage {decision.stage}: {finished}/{len(decision.trials)} trials finished, {running} running "
            f"(under the ceiling {ceiling(sweep.adaptive, edge, minimum)[0]:.3g})",
            event=False,
        )
        return
    s = b.status
    s.recommended_learning_rate = finite(rec.recommended_learning_rate)
    s.rule = "adaptive"
    s.interval = rec.interval
    s.decided_by = rec.decided_by
    s.evidence = rec.evidence
    s.fit = rec.fit
    s.best_loss = finite(rec.best_loss)
    reason, message = verdict(rec)
    b.phase("Succeeded" if reason == RECOMMENDED else "Failed", reason, message)


def _lost(status: TrialStatus, trial: Trial, last: TrialStatus | None) -> TrialStatus:
    """A trial whose Job went before its result was read keeps saying so."""
    if trial.child is None and last is not None and last.reason == JOB_GONE:
        status.reason, status.message = last.reason, last.message
    return status


def _live(trial: Trial, previous: TrialStatus | None, samples: Samples, now: str) -> Progress | None:
    """A running trial's progress from its trainer's latest sample."""
    if trial.child is None or trial.child.phase != "Running":
        return None
    last = previous.progress if previous is not None else None
    return progress_from_sample(samples.get(trial.job), trial.child.start_time, now, last)


def _remembered_range_test(b: StatusBuilder[LRSweepStatus]) -> RangeTestSummary | None:
    """The range test as the status recorded it: final once recorded, whether its Job is gone or going
    (a Job the TTL controller deletes in the foreground loses its pod, and with it the result, first)."""
    summary = b.status.range_test
    if summary is None or not summary.edge_learning_rate:
        return None
    return summary
