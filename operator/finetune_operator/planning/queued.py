"""Queued and paused runs: the conditions Kueue's word gives a resource, and which trainer Jobs to pause or
resume (`spec.suspend`, the one spec field that may change).

    Queued            True while a trainer Job waits in its Kueue queue (reason and message: Kueue's)
    Admitted          True once Kueue admitted a trainer Job (False while one waits)
    QueueUnavailable  True when nothing can admit it: no Kueue, or no such LocalQueue (the run is Stalled)
    Suspended         True while spec.suspend pauses the run

Pausing a Job Kueue manages deactivates its Workload (Kueue evicts it, suspends the Job, deletes its pods);
resuming re-activates it and Kueue admits it again. Other Jobs are suspended and unsuspended directly. A
suspended Job's pods are deleted; the Job's next pod resumes from the last checkpoint on the output PVC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from finetune_operator.children import ChildState
from finetune_operator.planning.status import StatusBuilder, condition
from finetune_operator.queueing import QueueState

QUEUED, ADMITTED, UNAVAILABLE, SUSPENDED = "Queued", "Admitted", "QueueUnavailable", "Suspended"


def record_queue(b: StatusBuilder, states: Mapping[str, QueueState]) -> None:
    """Set Queued/Admitted/QueueUnavailable from what Kueue says about each unfinished trainer Job; a
    Pending resource takes the waiting Job's reason as its own."""
    if not states:
        return
    by_phase: dict[str, list[tuple[str, QueueState]]] = {}
    for name, state in sorted(states.items()):
        by_phase.setdefault(state.phase, []).append((name, state))
    if UNAVAILABLE in by_phase:
        name, state = by_phase[UNAVAILABLE][0]
        message = f"Job {name}: {state.message}"
        b.condition(UNAVAILABLE, True, state.reason, message)
        b.condition(QUEUED, True, state.reason, message)
        if b.status.phase == "Pending":
            b.phase("Pending", UNAVAILABLE, message, stalled=True)
        return
    if (old := condition(b.status, UNAVAILABLE)) is not None and old.status == "True":
        b.condition(UNAVAILABLE, False, "QueueAvailable", "")
    if QUEUED in by_phase:
        name, state = by_phase[QUEUED][0]
        message = f"Job {name}: {state.message}"
        b.condition(QUEUED, True, state.reason, message)
        if ADMITTED not in by_phase:
            b.condition(ADMITTED, False, state.reason, message)
        if b.status.phase == "Pending":
            b.phase("Pending", QUEUED, message, event=b.reason() != QUEUED)
        return
    name, state = by_phase[ADMITTED][0]
    message = f"Job {name}: {state.message or 'admitted by Kueue'}"
    b.condition(QUEUED, False, ADMITTED, message)
    b.condition(ADMITTED, True, state.reason, message)
    if b.status.phase == "Pending" and b.reason() in (QUEUED, UNAVAILABLE):
        b.phase("Pending", ADMITTED, message)


@dataclass
class PauseActions:
    """What to change so that the trainer Jobs match `spec.suspend`."""

    suspend: list[str] = field(default_factory=list)
    """Jobs to suspend (not managed by Kueue)."""
    resume: list[str] = field(default_factory=list)
    """Jobs to unsuspend (not managed by Kueue)."""
    deactivate: list[str] = field(default_factory=list)
    """Kueue Workloads to deactivate (`spec.active: false`)."""
    activate: list[str] = field(default_factory=list)
    """Kueue Workloads to re-activate."""


def pause_actions(
    b: StatusBuilder,
    paused: bool,
    queued: bool,
    children: Mapping[str, ChildState],
    states: Mapping[str, QueueState],
) -> PauseActions:
    """Pause or resume the unfinished trainer Jobs (`queued`: Kueue manages them, so their Workloads)."""
    actions = PauseActions()
    for name, child in sorted(children.items()):
        if child.phase not in ("Pending", "Running"):
            continue
        if queued:
            state = states.get(name)
            if state is None or state.workload is None:
                continue  # no Workload yet: Kueue creates it, and the next reconcile sees it
            if paused and state.active:
                actions.deactivate.append(state.workload)
            elif not paused and not state.active:
                actions.activate.append(state.workload)
        elif paused and child.reason != SUSPENDED:
            actions.suspend.append(name)
        elif not paused and child.reason == SUSPENDED:
            actions.resume.append(name)
    old = condition(b.status, SUSPENDED)
    if paused:
        b.condition(SUSPENDED, True, "SuspendedBySpec", "spec.suspend is true: trainer Jobs are suspended")
    elif old is not None and old.status == "True":
        b.condition(SUSPENDED, False, "Resumed", "spec.suspend was cleared: trainer Jobs resume")
    return actions
