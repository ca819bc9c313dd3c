"""The reconcile loop: resource keys from a work queue, one worker per key at a time, driven by changes.

Kopf watches; the event handlers in `handlers` keep `Controller.resources` current and queue a resource's
key when it, one of its Jobs or pods, or the LRSweep a FineTuneJob waits for changes. A worker snapshots the
key's inputs on the event loop (kopf's indices are not shared with threads), then, in a thread (the
Kubernetes client blocks), one reconcile:

    poll running trainers (polling)  ->  plan the desired state (planning)  ->  apply it (applier)

A key comes back after `poll_interval` while a trainer runs (live progress), after `resync_interval` while
unfinished (a safety net, not the mechanism), and with exponential back-off after an error or a refused
apply. Nothing is written to a resource but its status: no finalizers, no annotations, so deleting one
costs the garbage collector alone. Why a queue and not kopf's per-resource handlers: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kubernetes

from finetune_operator import naming, queueing, workloads
from finetune_operator.api import FINETUNEJOB, LRSWEEP, ResourceStatus
from finetune_operator.applier import Applier
from finetune_operator.children import ChildState, ChildTally, observe, until_start_deadline
from finetune_operator.metrics import Held, OperatorMetrics
from finetune_operator.planning import Resource, SweepRef, is_done, plan
from finetune_operator.planning.queued import QUEUED
from finetune_operator.planning.status import now_iso, parse_status, record_apply
from finetune_operator.polling import TrainerPoller
from finetune_operator.settings import Settings
from finetune_operator.workqueue import WorkQueue

log = logging.getLogger("finetune_operator")

Key = tuple[str, str, str]
"""(kind, namespace, name) of an LRSweep or FineTuneJob."""

MAX_BACKOFF = 60.0


@dataclass(frozen=True)
class Snapshot:
    """Everything one reconcile reads, copied off the event loop's caches."""

    key: Key
    body: dict[str, Any]
    children: dict[str, ChildState]
    sweep: SweepRef | None = None
    """The LRSweep a FineTuneJob takes its learning rate from, when it exists."""


@dataclass(frozen=True)
class Outcome:
    """What one reconcile did: the written resource (None when nothing was written), its status, and
    whether the API server refused a child (the key then backs off)."""

    written: dict[str, Any] | None
    status: ResourceStatus
    refused: bool = False


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a resource a reconcile reads (no managedFields, no annotations)."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {
            k: meta.get(k)
            for k in ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")
        },
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def controller_uid(body: Mapping[str, Any]) -> str | None:
    """The uid of an object's controlling owner (its `controller: true` ownerReference)."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("controller")), None)


def _newer(incoming: dict[str, Any], cached: dict[str, Any] | None) -> bool:
    """False when `incoming` is older than what the cache holds (a watch event behind our own patch)."""
    if cached is None:
        return True
    try:
        return int(incoming["metadata"]["resourceVersion"]) >= int(cached["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return True  # resource versions are opaque outside etcd: take the newest event


def sweep_waited_for(spec: Mapping[str, Any], name: str) -> str | None:
    """The LRSweep a FineTuneJob takes its learning rate from (named or `auto`), if any."""
    lr = spec.get("learningRate") or {}
    if (lr.get("fromSweep") or {}).get("name"):
        return str(lr["fromSweep"]["name"])
    return naming.auto_sweep(name) if "auto" in lr else None


class Controller:
    """Caches, queue and workers of one operator process."""

    def __init__(
        self,
        settings: Settings,
        metrics: OperatorMetrics,
        api: Callable[[], kubernetes.client.ApiClient],
        applier: Applier | None = None,
    ) -> None:
        self.settings, self.metrics = settings, metrics
        self.applier = applier or Applier(api)
        self.poller = TrainerPoller(settings.trainer_metrics_port, settings.poll_interval)
        self.resources: dict[Key, dict[str, Any]] = {}
        self.statuses: dict[Key, ResourceStatus] = {}
        """The latest status of every resource, typed: what the metrics collector reads."""
        self.waiters: dict[tuple[str, str], set[str]] = {}  # (namespace, sweep) -> FineTuneJob names
        self.queue = WorkQueue()
        self._failures: dict[Key, int] = {}
        self._tallies: dict[Key, ChildTally] = {}
        self._indices: dict[str, Mapping[Any, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        metrics.watch(self.held)

    def held(self) -> Iterator[Held]:
        """(kind, namespace, name, status) of every resource (a copy: scrapes run in another thread)."""
        for (kind, namespace, name), status in self.statuses.copy().items():
            yield kind, namespace, name, status

    # ------------------------------------------------------------------ inputs (event loop)

    def bind_indices(
        self, jobs: Mapping[Any, Any], pods: Mapping[Any, Any], sweeps: Mapping[Any, Any]
    ) -> None:
        """Kopf's live indices (passed to handlers only; the same objects on every call)."""
        if not self._indices:
            self._indices = {"jobs": jobs, "pods": pods, "sweeps": sweeps}

    def observe_resource(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of an LRSweep or FineTuneJob: update the cache, queue it if anything changed."""
        meta = body.get("metadata") or {}
        key: Key = (kind, meta.get("namespace", ""), meta.get("name", ""))
        if kind == LRSWEEP.kind:
            for ftj in self.waiters.get((key[1], key[2]), ()):
                self.queue.add((FINETUNEJOB.kind, key[1], ftj))
        if event_type == "DELETED":
            self.forget(key)
            return
        incoming, cached = slim(body), self.resources.get(key)
        if not _newer(incoming, cached):
            return
        self.resources[key] = incoming
        if (
            cached is not None
            and {**cached, "metadata": None} == {**incoming, "metadata": None}
            and (cached["metadata"]["deletionTimestamp"] == incoming["metadata"]["deletionTimestamp"])
            and cached["metadata"]["uid"] == incoming["metadata"]["uid"]
        ):
            return  # the echo of our own status patch, or a metadata-only change
        if cached is not None and cached["metadata"]["uid"] != incoming["metadata"]["uid"]:
            self._tallies.pop(key, None)  # deleted and re-created between two events: a new resource
        if kind == FINETUNEJOB.kind:
            sweep = sweep_waited_for(incoming["spec"], key[2])
            if sweep:
                self.waiters.setdefault((key[1], sweep), set()).add(key[2])
        self.queue.add(key)

    def observe_child(self, namespace: str, labels: Mapping[str, str]) -> None:
        """A Job or pod of ours changed: queue its owner."""
        for kind, label in naming.KIND_LABELS.items():
            if label in labels:
                self.queue.add((kind, namespace, labels[label]))
                return

    def forget(self, key: Key) -> None:
        kind, namespace, name = key
        tally = self._tallies.pop(key, None)
        if tally is not None:
            self.poller.forget(namespace, list(tally.retries))
        body = self.resources.pop(key, None)
        self.statuses.pop(key, None)
        self._failures.pop(key, None)
        self.queue.forget(key)
        sweep = sweep_waited_for(body["spec"], name) if body and kind == FINETUNEJOB.kind else None
        if sweep:
            waiting = self.waiters.get((namespace, sweep), set())
            waiting.discard(name)
            if not waiting:
                self.waiters.pop((namespace, sweep), None)

    def snapshot(self, key: Key) -> Snapshot | None:
        """The resource and its own children: Jobs whose controller is this resource's uid (a Job left by a
        deleted namesake is not adopted while the garbage collector removes it)."""
        body = self.resources.get(key)
        if body is None or not self._indices:
            return None
        kind, namespace, name = key
        uid = body["metadata"]["uid"]
        jobs, pods = self._indices["jobs"], self._indices["pods"]
        children: dict[str, ChildState] = {}
        for job in jobs.get((namespace, kind, name), []):
            if job.get("owner") not in (None, uid):
                continue
            job_name = job["metadata"]["name"]
            children[job_name] = observe(job, list(pods.get((namespace, job_name), [])))
        sweep_name = sweep_waited_for(body["spec"], name) if kind == FINETUNEJOB.kind else None
        sweep = None
        if sweep_name:
            found = next(iter(self._indices["sweeps"].get((namespace, sweep_name), [])), None)
            if found is not None:
                sweep = SweepRef(sweep_name, dict(found.get("status") or {}), found.get("owner"))
        return Snapshot(key, body, children, sweep)

    # ------------------------------------------------------------------ workers

    async def start(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._tasks = [asyncio.create_task(self._work(), name=f"reconcile-{i}") for i in range(workers)]

    async def stop(self) -> None:
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._process(key)
            except Exception:
                delay = self._backoff(key)
                log.exception("reconciling %s %s/%s failed (retry in %.0fs)", *key, delay)
                self.queue.add_after(key, delay)
            finally:
                self.queue.done(key)

    def _backoff(self, key: Key) -> float:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        return min(MAX_BACKOFF, 0.5 * 2**failures)

    async def _process(self, key: Key) -> None:
        snap = self.snapshot(key)
        if snap is None or snap.body["metadata"].get("deletionTimestamp"):
            return  # gone, or going: never create children the garbage collector is about to remove
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self._pool, self.reconcile, snap)
        cached = self.resources.get(key)
        if cached is None or cached["metadata"]["uid"] != snap.body["metadata"]["uid"]:
            self._tallies.pop(key, None)  # deleted while it was reconciled: keep nothing of it
            return
        self.statuses[key] = outcome.status
        if outcome.written is not None and _newer(outcome.written, cached):
            self.resources[key] = outcome.written
        if outcome.refused:
            delay = self._backoff(key)
            log.warning("%s %s/%s: the API server refused a child (retry in %.0fs)", *key, delay)
            self.queue.add_after(key, delay)
            return
        self._failures.pop(key, None)
        delay = self._next_reconcile(snap, outcome.status)
        if delay is not None:
            self.queue.add_after(key, delay)

    def _next_reconcile(self, snap: Snapshot, status: ResourceStatus) -> float | None:
        if is_done(status, snap.body["metadata"].get("generation") or 1):
            return None
        if any(c.phase == "Running" for c in snap.children.values()):
            return self.settings.poll_interval
        if any(c.type == QUEUED and c.status == "True" for c in status.conditions):
            return self.settings.poll_interval  # Kueue's verdict is on its Workload, which is not watched
        stuck = until_start_deadline(snap.children, now_iso(), self.settings.pod_start_deadline)
        if stuck is not None:  # a pod that cannot start: come back when its deadline has passed
            return min(self.settings.resync_interval, stuck + 1.0)
        return self.settings.resync_interval

    # ------------------------------------------------------------------ one reconcile (worker thread)

    def reconcile(self, snap: Snapshot) -> Outcome:
        """Poll, plan, apply: children first, then events, then the status if it changed."""
        kind = snap.key[0]
        started, failed = time.perf_counter(), True
        try:
            outcome = self._reconcile(snap)
            failed = outcome.refused
            return outcome
        finally:
            self.metrics.observe_reconcile(kind, time.perf_counter() - started, failed)

    def _reconcile(self, snap: Snapshot) -> Outcome:
        resource = Resource.from_body(snap.key[0], snap.body)
        samples = self.poller.poll(resource.namespace, snap.children)
        queue = queueing.queue_name(resource.spec.get("queueName"), self.settings.default_queue_name)
        states = (
            workloads.queue_states(self.applier, resource.namespace, queue, snap.children) if queue else {}
        )
        desired = plan(
            resource, snap.children, samples=samples, sweep=snap.sweep, settings=self.settings, queue=states
        )
        tally = self._tallies.setdefault(snap.key, ChildTally())
        self.metrics.record_children(resource.kind, tally.update(snap.children))
        applied, refused = self.applier.apply_all(desired.children)
        for job in desired.delete:
            self.applier.delete_job(resource.namespace, job)
        for job in desired.suspend:
            self.applier.suspend_job(resource.namespace, job)
        for job in desired.resume:
            self.applier.suspend_job(resource.namespace, job, suspend=False)
        for workload in desired.deactivate:
            self.applier.set_workload_active(resource.namespace, workload, False)
        for workload in desired.activate:
            self.applier.set_workload_active(resource.namespace, workload, True)
        if desired.sweep_suspend is not None:
            self.applier.suspend_sweep(resource.namespace, *desired.sweep_suspend)
        self.metrics.record_applied(resource.kind, applied)
        previous = parse_status(type(desired.status), resource.status) if refused else desired.status
        result = record_apply(desired.status, desired.events, previous, refused, now_iso())
        for event in result.events:
            self.applier.post_event(resource, event)
        written = self.applier.patch_status(resource, result.status.to_wire())
        if not refused:  # the written status holds these Jobs' results: they may go now
            for job, seconds in desired.expire.items():
                self.applier.expire_job(resource.namespace, job, seconds)
        return Outcome(slim(written) if written else None, result.status, bool(refused))
