"""Kueue: which queue a trainer Job goes to, and what Kueue's Workload says about it. Pure: API dicts in.

A queued trainer Job carries `QUEUE_LABEL` and is created suspended; Kueue creates a Workload for it (owned
by the Job, labelled `JOB_UID_LABEL`), reserves quota for all its pods at once and unsuspends it. The
operator never unsuspends such a Job. It reads the Workload to say why a Job waits (`Queued`, with Kueue's
reason and message) and when it was let in (`Admitted`); a queue name with no Kueue behind it (no Workload
CRD, or no such LocalQueue) is `QueueUnavailable`, naming what is missing.

Pausing (spec.suspend) a Job Kueue manages deactivates its Workload (`spec.active: false`): Kueue evicts it,
suspends the Job and its pods are deleted; resuming re-activates the Workload and Kueue admits it again when
quota allows. (Setting the Job's own `suspend` would not hold: Kueue unsuspends an admitted Job.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
"""The Workload and LocalQueue version Kueue v0.17 stores (v1beta1 is still served)."""
KUEUE_API = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
WORKLOADS = "workloads"
LOCAL_QUEUES = "localqueues"
QUEUE_LABEL = f"{KUEUE_GROUP}/queue-name"
JOB_UID_LABEL = f"{KUEUE_GROUP}/job-uid"

QueuePhase = Literal["Queued", "Admitted", "QueueUnavailable"]


def queue_name(spec_queue: str | None, default_queue: str | None) -> str | None:
    """The LocalQueue a resource's trainer Jobs go to: its own, else the operator's default, else none."""
    return spec_queue or default_queue or None


@dataclass(frozen=True)
class QueueState:
    """What Kueue says about one queued trainer Job."""

    phase: QueuePhase
    reason: str
    message: str
    workload: str | None = None
    """The Job's Workload, once Kueue created it."""
    active: bool = True
    """Whether the Workload may be admitted (`spec.active`); False while a pause holds it."""


def _condition(workload: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (workload.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def workload_state(queue: str, workload: Mapping[str, Any] | None) -> QueueState:
    """`Admitted` once Kueue admitted the Workload, else `Queued` with Kueue's own words (its QuotaReserved
    condition: e.g. `Pending` "couldn't assign flavors ... insufficient quota"; or `Evicted`/`Inactive`)."""
    if workload is None:
        message = f"queue {queue}: waiting for Kueue to create the Job's Workload"
        return QueueState("Queued", "WorkloadPending", message)
    name = (workload.get("metadata") or {}).get("name")
    active = workload_active(workload)
    admitted = _condition(workload, "Admitted")
    if admitted is not None and admitted.get("status") == "True":
        reason, message = admitted.get("reason") or "Admitted", admitted.get("message") or ""
        return QueueState("Admitted", reason, message, name, active)
    for type_ in ("Evicted", "QuotaReserved"):
        cond = _condition(workload, type_)
        if cond is not None and (type_ != "Evicted" or cond.get("status") == "True"):
            reason = cond.get("reason") or "Pending"
            message = f"queue {queue}: {cond.get('message') or ''}".rstrip(": ")
            return QueueState("Queued", reason, message, name, active)
    message = f"queue {queue}: waiting for Kueue to admit the Workload"
    return QueueState("Queued", "Pending", message, name, active)


def owning_job(workload: Mapping[str, Any]) -> str | None:
    """The name of the batch/v1 Job that owns a Workload (Kueue's ownerReference), if any."""
    for ref in (workload.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/"):
            return str(ref.get("name"))
    return None


def unavailable(queue: str, missing: str) -> QueueState:
    """A queue nothing will ever admit from: `missing` says what (no Kueue, no such LocalQueue)."""
    return QueueState(
        "QueueUnavailable",
        "QueueUnavailable",
        f"queue {queue}: {missing}; the trainer Job stays suspended until it exists (or delete the resource "
        "and re-create it without queueName)",
    )


def workload_active(workload: Mapping[str, Any]) -> bool:
    """Whether Kueue may admit the Workload (`spec.active` defaults to true)."""
    return (workload.get("spec") or {}).get("active", True) is not False
