"""What a child Job and its pods say, boiled down to one `ChildState`, and what changed since the last look
(pod retries, failed Jobs) for the operator's counters. Pure; input is API dicts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from finetune_operator import distributed
from finetune_trainer.config import ExitCode

ChildPhase = Literal["Pending", "Running", "Succeeded", "Failed"]

FAILURE_REASONS = {
    int(ExitCode.BAD_CONFIG): "InvalidConfig",
    int(ExitCode.DIVERGED): "Diverged",
    int(ExitCode.OUT_OF_MEMORY): "OutOfMemory",
    int(ExitCode.INTERRUPTED): "Interrupted",
    137: "Killed",
}


# Container waiting reasons that mean the pod cannot start until someone changes something.
CANNOT_START = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
    }
)
# A started Job with no pod at all: the Job controller's event reason when the API server refuses its pods.
NO_POD = "FailedCreate"
# Words of the scheduler for a pod whose volumes cannot be provided (more capacity will not help).
CLAIM_PROBLEMS = ("persistentvolumeclaim", "PersistentVolumeClaims")


@dataclass(frozen=True)
class ChildState:
    """One trainer Job as the operator sees it."""

    name: str
    phase: ChildPhase
    result: dict[str, Any] | None = None
    """The trainer's result JSON (from the termination message), when it wrote one."""
    reason: str | None = None
    """CamelCase reason when Failed (InvalidConfig, Diverged, OutOfMemory, BackoffLimitExceeded, …)."""
    message: str = ""
    """The trainer's last words, or the Job's failure message."""
    exit_code: int | None = None
    pod_ip: str | None = None
    """IP of the running pod (for polling its metrics)."""
    failed_pods: int = 0
    start_time: str | None = None
    stuck_since: str | None = None
    """Since when the Pending pod cannot start (see `CANNOT_START`, `CLAIM_PROBLEMS`): its `startTime` or
    the scheduler's verdict, else its creation."""
    expires: bool = False
    """The Job has `ttlSecondsAfterFinished` (set once its result is in the status: `planning.expiring`)."""


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "terminated" in state:
            return state["terminated"]
    return None


def parse_termination_message(message: str | None) -> tuple[dict[str, Any] | None, str]:
    """(result JSON, text): the trainer writes compact JSON; anything else is an error text (log tail)."""
    if not message:
        return None, ""
    text = message.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None, text.splitlines()[-1] if text else ""
    if isinstance(data, dict):
        return data, str(data.get("error", ""))
    return None, text


def _newest(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def observe(job: dict[str, Any], pods: list[dict[str, Any]]) -> ChildState:
    """Combine a Job and its pods into one state; the newest pod speaks for the Job (of an Indexed Job, the
    newest at index 0, where rank 0 writes the result and serves metrics)."""
    name = job["metadata"]["name"]
    status = job.get("status") or {}
    failed_pods = int(status.get("failed") or 0)
    pod = _newest(distributed.leader(pods))
    terminated = _terminated(pod) if pod else None
    result, text = parse_termination_message(terminated.get("message") if terminated else None)
    exit_code = terminated.get("exitCode") if terminated else None
    if exit_code == 1 and isinstance((result or {}).get("exitCode"), int):
        exit_code = result["exitCode"]  # under torchrun the pod exits 1; rank 0's result holds the trainer's
    start = status.get("startTime")
    expires = (job.get("spec") or {}).get("ttlSecondsAfterFinished") is not None

    pod_phase = (pod or {}).get("status", {}).get("phase")
    if _condition(job, "Complete") and pod_phase not in (None, "Succeeded"):
        # the Job's update arrived before its pod's: the termination message (the result) is not read yet
        return ChildState(name, "Running", failed_pods=failed_pods, start_time=start)
    if _condition(job, "Complete"):
        return ChildState(
            name,
            "Succeeded",
            result=result,
            message=text,
            exit_code=exit_code,
            failed_pods=failed_pods,
            start_time=start,
            expires=expires,
        )
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed:
        reason = FAILURE_REASONS.get(exit_code or -1) or failed.get("reason") or "JobFailed"
        message = text or failed.get("message") or ""
        return ChildState(
            name,
            "Failed",
            result=result,
            reason=reason,
            message=message,
            exit_code=exit_code,
            failed_pods=failed_pods,
            start_time=start,
            expires=expires,
        )
    if pod_phase == "Running" or (status.get("active") and pod_phase not in (None, "Pending")):
        return ChildState(
            name,
            "Running",
            pod_ip=pod["status"].get("podIP") if pod else None,
            failed_pods=failed_pods,
            start_time=start,
        )
    stuck = _cannot_start(pod) if pod is not None else _no_pod(job)
    if stuck is not None and not _condition(job, "Suspended"):
        reason, message, since = stuck
        return ChildState(
            name,
            "Pending",
            reason=reason,
            message=f"{reason}: {message}".strip(),
            failed_pods=failed_pods,
            start_time=start,
            stuck_since=since or (pod or {}).get("metadata", {}).get("creationTimestamp"),
        )
    unscheduled = _unscheduled(pod)
    reason = (
        "Suspended"
        if _condition(job, "Suspended")
        else unscheduled and unscheduled.get("reason", "Unschedulable")
    )
    message = f"{reason}: {unscheduled.get('message', '')}".strip() if unscheduled else ""
    return ChildState(
        name, "Pending", reason=reason or None, message=message, failed_pods=failed_pods, start_time=start
    )


def _cannot_start(pod: dict[str, Any] | None) -> tuple[str, str, str | None] | None:
    """(reason, message, since) of a Pending pod that will not start as it is: a container waiting for a
    missing Secret/ConfigMap or an image it cannot pull (since the node took the pod on, `startTime`), or
    unschedulable for want of its PersistentVolumeClaim (since the scheduler said so)."""
    status = (pod or {}).get("status") or {}
    if status.get("phase", "Pending") != "Pending":
        return None
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in CANNOT_START:
            message = f"container {cs.get('name')}: {waiting.get('message', '')}"
            return waiting["reason"], message, status.get("startTime")
    unscheduled = _unscheduled(pod)
    if unscheduled and any(w in unscheduled.get("message", "") for w in CLAIM_PROBLEMS):
        reason = unscheduled.get("reason", "Unschedulable")
        return reason, unscheduled.get("message", ""), unscheduled.get("lastTransitionTime")
    return None


def _no_pod(job: dict[str, Any]) -> tuple[str, str, str | None] | None:
    """(reason, message, since) of a started Job that has no pod at all and has counted none: the Job
    controller could not create one (since the Job started)."""
    status = job.get("status") or {}
    if (job.get("spec") or {}).get("suspend") or not status.get("startTime"):
        return None
    if any(status.get(k) for k in ("active", "ready", "failed", "succeeded")):
        return None
    name = job["metadata"]["name"]
    message = (
        f"the Job controller created no pod for Job {name}: a missing serviceAccountName, or a ResourceQuota "
        f"or admission policy refusing its pods (kubectl describe job {name} shows which)"
    )
    return NO_POD, message, status["startTime"]


def past_start_deadline(
    children: Mapping[str, ChildState], now: str, deadline: float
) -> dict[str, ChildState]:
    """`children`, each one stuck for more than `deadline` seconds turned Failed with its pod's reason."""
    moment = _parse_time(now)
    out = dict(children)
    for name, child in children.items():
        since = _parse_time(child.stuck_since)
        if child.phase != "Pending" or since is None or moment is None:
            continue
        waited = (moment - since).total_seconds()
        if waited > deadline:
            message = f"its pod did not start within {deadline:g}s: {child.message}"
            out[name] = replace(child, phase="Failed", message=message)
    return out


def never_started(child: ChildState | None) -> bool:
    """Whether the child failed because its pod could not start (`past_start_deadline`): a fault of the
    setup, not evidence about the learning rate."""
    return child is not None and child.phase == "Failed" and child.stuck_since is not None


def until_start_deadline(children: Mapping[str, ChildState], now: str, deadline: float) -> float | None:
    """Seconds until the first stuck child passes `deadline` (None when no child is stuck)."""
    moment = _parse_time(now)
    waits = [
        deadline - (moment - since).total_seconds()
        for c in children.values()
        if c.phase == "Pending" and (since := _parse_time(c.stuck_since)) is not None and moment is not None
    ]
    return max(0.0, min(waits)) if waits else None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _unscheduled(pod: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pod's PodScheduled=False condition (e.g. no node has the GPUs it asks for), if any."""
    for cond in ((pod or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return cond
    return None


@dataclass(frozen=True)
class TallyDelta:
    """What a resource's children did since the last look."""

    retries: int = 0
    """Pod retries (failed pods, less the one that failed a Job for good)."""
    failures: tuple[str, ...] = ()
    """The reason of each trainer Job that failed."""


@dataclass
class ChildTally:
    """Pod retries and failed trainer Jobs of one resource, counted once each. The children present at
    the first look are the baseline (a restarted operator does not count old retries or failures again);
    a Job that appears later counts from zero, however far it got before it was seen."""

    retries: dict[str, int] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    started: bool = False

    def update(self, children: Mapping[str, ChildState]) -> TallyDelta:
        new, failures = 0, []
        for name, child in children.items():
            retries = max(0, child.failed_pods - (1 if child.phase == "Failed" else 0))
            seen = self.retries.get(name, 0 if self.started else retries)
            new += max(0, retries - seen)
            self.retries[name] = max(retries, seen)
            if child.phase == "Failed" and name not in self.failed:
                self.failed.add(name)
                if self.started:
                    failures.append(child.reason or "JobFailed")
        self.started = True
        return TallyDelta(new, tuple(failures))
