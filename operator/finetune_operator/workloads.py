"""Reads what Kueue says about a queued resource's trainer Jobs: their Workloads, and whether the queue
exists at all. The verdicts are `queueing`'s; this module only fetches (JSON, like the applier)."""

from __future__ import annotations

from collections.abc import Mapping

from finetune_operator.applier import ApiError, Applier, path
from finetune_operator.children import ChildState
from finetune_operator.queueing import (
    KUEUE_API,
    KUEUE_GROUP,
    QueueState,
    owning_job,
    unavailable,
    workload_state,
)

NO_KUEUE = f"Kueue is not installed (the API server serves no workloads.{KUEUE_GROUP})"


def queue_states(
    applier: Applier, namespace: str, queue: str, children: Mapping[str, ChildState]
) -> dict[str, QueueState]:
    """What Kueue says about each unfinished trainer Job (Pending or Running) of a resource queued in
    `queue`: one list of the namespace's Workloads, and one read of the LocalQueue while a Job waits."""
    unfinished = sorted(n for n, c in children.items() if c.phase in ("Pending", "Running"))
    if not unfinished:
        return {}
    try:
        listing = applier.request("GET", path(KUEUE_API, "Workload", namespace), None) or {}
    except ApiError as e:
        if e.code != 404:
            raise
        return {name: unavailable(queue, NO_KUEUE) for name in unfinished}
    by_job = {owning_job(w): w for w in listing.get("items") or []}
    states = {name: workload_state(queue, by_job.get(name)) for name in unfinished}
    if any(s.phase == "Queued" for s in states.values()) and not _local_queue_exists(
        applier, namespace, queue
    ):
        missing = f"there is no LocalQueue {queue} in namespace {namespace}"
        states = {n: unavailable(queue, missing) if s.phase == "Queued" else s for n, s in states.items()}
    return states


def _local_queue_exists(applier: Applier, namespace: str, queue: str) -> bool:
    try:
        applier.request("GET", path(KUEUE_API, "LocalQueue", namespace, queue), None)
    except ApiError as e:
        if e.code == 404:
            return False
        raise
    return True
