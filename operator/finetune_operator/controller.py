"""The reconcile loop: resource keys from a work queue, one worker per key at a time, driven by changes.

Kopf watches; the event handlers in `handlers` keep `Controller.resources` current and queue a resource's
key when it, one of its Jobs or pods, or the LRSweep a FineTuneJob waits for changes. A worker snapshots the
key's inputs on the event loop (kopf's indices are not shared with threads), then plans and applies in a
thread (the Kubernetes client blocks). A key comes back after `poll_interval` while a trainer runs (live
progress), after `resync_interval` while unfinished (a safety net, not the mechanism), and with
exponential back-off after an error. Nothing is written to a resource but its status: no finalizers, no
annotations, so deleting one costs the garbage collector alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from finetune_operator import naming, rendering
from finetune_operator.api import API_GROUP, FINETUNEJOB, LRSWEEP, VERSION, KindInfo
from finetune_operator.children import ChildState, observe
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.planning import TERMINAL, Event, Plan, is_done, plan_finetune, plan_sweep
from finetune_operator.settings import Settings
from finetune_operator.workqueue import WorkQueue

log = logging.getLogger("finetune_operator")

Key = tuple[str, str, str]
"""(kind, namespace, name) of an LRSweep or FineTuneJob."""

MAX_BACKOFF = 60.0
COMPONENT = "finetune-operator"
REPORTING_INSTANCE = os.environ.get("POD_NAME") or socket.gethostname()


@dataclass(frozen=True)
class Snapshot:
    """Everything one reconcile reads, copied off the event loop's caches."""

    key: Key
    body: dict[str, Any]
    children: dict[str, ChildState]
    sweep_name: str | None = None
    """The LRSweep a FineTuneJob takes its learning rate from (`sweep_waited_for`)."""
    sweep: dict[str, Any] | None = None


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
    ) -> None:
        self.settings, self.metrics, self._api = settings, metrics, api
        self.resources: dict[Key, dict[str, Any]] = {}
        self.waiters: dict[tuple[str, str], set[str]] = {}  # (namespace, sweep) -> FineTuneJob names
        self.queue = WorkQueue()
        self._failures: dict[Key, int] = {}
        self._samples: dict[tuple[str, str], tuple[float, dict[str, float]]] = {}  # (ns, Job) -> (at, sample)
        self._retries: dict[Key, dict[str, int]] = {}  # resource -> Job name -> pod retries seen
        self._indices: dict[str, Mapping[Any, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: ThreadPoolExecutor | None = None

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
        ):
            return  # the echo of our own status patch, or a metadata-only change
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
        for job in self._retries.pop(key, {}):  # every Job of the resource the controller has seen
            self._samples.pop((namespace, job), None)
        body = self.resources.pop(key, None)
        self._failures.pop(key, None)
        self.queue.forget(key)
        sweep = sweep_waited_for(body["spec"], name) if body and kind == FINETUNEJOB.kind else None
        if sweep:
            waiting = self.waiters.get((namespace, sweep), set())
            waiting.discard(name)
            if not waiting:
                self.waiters.pop((namespace, sweep), None)
        self.metrics.forget(kind, namespace, name)

    def snapshot(self, key: Key) -> Snapshot | None:
        body = self.resources.get(key)
        if body is None or not self._indices:
            return None
        kind, namespace, name = key
        jobs, pods = self._indices["jobs"], self._indices["pods"]
        children: dict[str, ChildState] = {}
        for job in jobs.get((namespace, kind, name), []):
            job_name = job["metadata"]["name"]
            children[job_name] = observe(job, list(pods.get((namespace, job_name), [])))
        sweep_name = sweep_waited_for(body["spec"], name) if kind == FINETUNEJOB.kind else None
        sweep = (
            next(iter(self._indices["sweeps"].get((namespace, sweep_name), [])), None) if sweep_name else None
        )
        return Snapshot(key, body, children, sweep_name, dict(sweep) if sweep else None)

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
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(MAX_BACKOFF, 0.5 * 2**failures)
                log.exception("reconciling %s %s/%s failed (retry in %.0fs)", *key, delay)
                self.queue.add_after(key, delay)
            finally:
                self.queue.done(key)

    async def _process(self, key: Key) -> None:
        snap = self.snapshot(key)
        if snap is None or snap.body["metadata"].get("deletionTimestamp"):
            return  # gone, or going: never create children the garbage collector is about to remove
        loop = asyncio.get_running_loop()
        written, status = await loop.run_in_executor(self._pool, self.reconcile, snap)
        self._failures.pop(key, None)
        if written is not None and key in self.resources and _newer(written, self.resources[key]):
            self.resources[key] = written
        delay = self._next_reconcile(snap, status)
        if delay is not None:
            self.queue.add_after(key, delay)

    def _next_reconcile(self, snap: Snapshot, status: dict[str, Any]) -> float | None:
        if is_done(status, snap.body["metadata"].get("generation") or 1):
            return None
        if any(c.phase == "Running" for c in snap.children.values()):
            return self.settings.poll_interval
        return self.settings.resync_interval

    # ------------------------------------------------------------------ one reconcile (worker thread)

    def reconcile(self, snap: Snapshot) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Plan and apply; returns the patched resource (None when nothing was written) and the new status."""
        kind, namespace, name = snap.key
        info = LRSWEEP if kind == LRSWEEP.kind else FINETUNEJOB
        m = self.metrics
        with m.reconcile_seconds.labels(kind).time(), m.reconcile_errors.labels(kind).count_exceptions():
            body, generation = snap.body, snap.body["metadata"].get("generation") or 1
            samples = self._poll_running(namespace, snap.children)
            if kind == LRSWEEP.kind:
                plan = plan_sweep(name, body["spec"], body["status"], generation, snap.children, samples)
            else:
                plan = plan_finetune(
                    name, body["spec"], body["status"], generation, snap.children, snap.sweep, samples
                )
                if plan.create_sweep is not None and snap.sweep_name:
                    self._create_sweep(body, snap.sweep_name, plan.create_sweep)
            retried = new_retries(self._retries.setdefault(snap.key, {}), snap.children)
            if retried:
                m.jobs_retried.labels(kind).inc(retried)
            written = self._apply(info, body, plan)
            self._export(kind, namespace, name, plan.status)
            return written, plan.status

    def _apply(self, info: KindInfo, body: dict[str, Any], plan: Plan) -> dict[str, Any] | None:
        meta = body["metadata"]
        namespace, owner_name = meta["namespace"], meta["name"]
        owner = rendering.owner_reference(info.kind, owner_name, meta["uid"])
        api = self._api()
        batch = kubernetes.client.BatchV1Api(api)
        if plan.create:
            workload = info.spec.model_validate(body["spec"])
        for child in plan.create:
            job = rendering.trainer_job(
                name=child.name,
                namespace=namespace,
                kind=info.kind,
                owner_name=owner_name,
                owner=owner,
                role=child.role,
                args=child.args,
                config=child.config,
                workload=workload,
                settings=self.settings,
                trial=child.trial,
                stage=child.stage,
            )
            if _create(batch.create_namespaced_job, namespace, job):
                self.metrics.jobs_created.labels(info.kind).inc()
        if plan.events:
            events = kubernetes.client.EventsV1Api(api)
            for event in plan.events:
                post_event(events, info, meta, event)
        old = body["status"]
        if plan.status.get("phase") == "Failed" and old.get("phase") != "Failed":
            self.metrics.jobs_failed.labels(info.kind, _reason(plan.status) or "Unknown").inc()
        delta = status_delta(old, plan.status)
        if not delta:
            return None
        custom = kubernetes.client.CustomObjectsApi(api)
        try:
            written = custom.patch_namespaced_custom_object_status(
                API_GROUP, VERSION, namespace, info.plural, owner_name, {"status": delta}
            )
        except ApiException as e:
            if e.status == 404:
                return None  # deleted meanwhile
            raise
        return slim(written)

    def _create_sweep(self, body: dict[str, Any], sweep_name: str, spec: dict[str, Any]) -> None:
        meta = body["metadata"]
        sweep = {
            "apiVersion": f"{API_GROUP}/{VERSION}",
            "kind": LRSWEEP.kind,
            "metadata": {
                "name": sweep_name,
                "namespace": meta["namespace"],
                "labels": {**naming.MANAGED_BY, naming.KIND_LABELS[FINETUNEJOB.kind]: meta["name"]},
                "ownerReferences": [rendering.owner_reference(FINETUNEJOB.kind, meta["name"], meta["uid"])],
            },
            "spec": spec,
        }
        api = kubernetes.client.CustomObjectsApi(self._api())
        _create(
            api.create_namespaced_custom_object, API_GROUP, VERSION, meta["namespace"], LRSWEEP.plural, sweep
        )

    def _poll_running(self, namespace: str, children: dict[str, ChildState]) -> dict[str, dict[str, float]]:
        """Latest metrics of each running child, polled at most once per poll interval."""
        now = time.monotonic()
        for child in children.values():
            if child.phase != "Running" or not child.pod_ip:
                continue
            polled_at, last = self._samples.get((namespace, child.name), (0.0, {}))
            if now - polled_at < self.settings.poll_interval * 0.9:
                continue
            url = f"http://{child.pod_ip}:{self.settings.trainer_metrics_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    sample = parse_trainer_metrics(response.read().decode())
                self._samples[(namespace, child.name)] = (now, sample)
            except OSError as e:
                log.debug("polling %s failed: %s", url, e)
                self._samples[(namespace, child.name)] = (now, last)
        for job, child in children.items():
            if child.phase in TERMINAL:
                self._samples.pop((namespace, job), None)
        return {
            job: self._samples[(namespace, job)][1] for job in children if (namespace, job) in self._samples
        }

    # ------------------------------------------------------------------ metrics

    def _export(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        m = self.metrics
        m.set_phase(kind, namespace, name, status.get("phase", "Pending"))
        progress = status.get("progress") or {}
        if progress:
            m.set_progress(
                kind,
                namespace,
                name,
                step=progress.get("step"),
                total_steps=progress.get("totalSteps"),
                learning_rate=progress.get("learningRate"),
                loss=progress.get("loss"),
                eval_loss=progress.get("evalLoss") or status.get("evalLoss"),
                eta_seconds=progress.get("etaSeconds"),
            )
        if kind == FINETUNEJOB.kind:
            if status.get("learningRate") is not None:
                m.set_resolved_lr(
                    namespace, name, status.get("learningRateSource", ""), status["learningRate"]
                )
            return
        if status.get("phase") in TERMINAL:
            m.set_sweep_result(
                namespace,
                name,
                recommended=status.get("recommendedLearningRate"),
                rule=status.get("rule"),
                suggestions=status.get("suggestions"),
                curve=[(p["lr"], p["loss"]) for p in status.get("curve") or []],
                diverged_at_min=_reason(status) == "DivergedAtMinimumLearningRate",
            )
        for trial in status.get("trials") or []:
            if trial.get("evalLoss") is not None:
                # adaptive trials are numbered per stage: the label is `<stage>-<index>` there
                label = f"{trial['stage']}-{trial['index']}" if trial.get("stage") else str(trial["index"])
                m.set_trial(namespace, name, label, trial["learningRate"], trial["evalLoss"])


# ---------------------------------------------------------------------------------------------- helpers


def new_retries(seen: dict[str, int], children: Mapping[str, ChildState]) -> int:
    """Pod retries since the last look (failed pods, less the one that failed a Job for good). A Job seen
    for the first time only sets the baseline, so a restarted operator does not count old retries again."""
    new = 0
    for name, child in children.items():
        retries = max(0, child.failed_pods - (1 if child.phase == "Failed" else 0))
        if name in seen:
            new += max(0, retries - seen[name])
        seen[name] = max(retries, seen.get(name, 0))
    return new


def status_delta(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from `old` to `new`: changed keys, and null for dropped ones (kopf's own kept)."""
    delta = {k: v for k, v in new.items() if old.get(k) != v}
    delta.update({k: None for k in old if k not in new and k != "kopf"})
    return delta


def _reason(status: dict[str, Any]) -> str | None:
    return next((c["reason"] for c in status.get("conditions", []) if c["type"] == "Failed"), None)


def _discard(response: Any) -> None:
    """Read an unparsed response to its end and return its connection to the pool (a connection given
    back with unread bytes would hand them to the next request as its status line)."""
    response.drain_conn()
    response.release_conn()


def _create(call: Callable[..., Any], *args: Any) -> bool:
    """Create an object; True if created, False if it already existed (a restart or a retry).
    The response is not turned into client models: building them costs CPU, and importing the
    generated model modules costs the process ~90 MiB."""
    try:
        _discard(call(*args, _preload_content=False))
        return True
    except ApiException as e:
        if e.status == 409:
            return False
        raise


def post_event(
    events: kubernetes.client.EventsV1Api, info: KindInfo, meta: dict[str, Any], event: Event
) -> None:
    """An events.k8s.io/v1 Event about the resource (`kubectl describe` and `kubectl events` show it);
    a failure is logged, not raised: an event is worth less than the reconcile that posts it."""
    body = {
        # named like client-go's recorder does: <object>.<time in hex nanoseconds>
        "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
        "regarding": {
            "apiVersion": f"{API_GROUP}/{VERSION}",
            "kind": info.kind,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": event.type,
        "reason": event.reason,
        "action": "Reconcile",
        "note": event.message[:1024],
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "reportingController": f"{API_GROUP}/{COMPONENT}",
        "reportingInstance": REPORTING_INSTANCE,
    }
    try:
        _discard(events.create_namespaced_event(meta["namespace"], body, _preload_content=False))
    except ApiException as e:
        log.warning("posting event %s on %s/%s failed: %s", event.reason, meta["namespace"], meta["name"], e)


TRAINER_SERIES = {
    "finetune_trainer_step": "step",
    "finetune_trainer_total_steps": "total_steps",
    "finetune_trainer_learning_rate": "learning_rate",
    "finetune_trainer_loss": "loss",
    "finetune_trainer_eval_loss": "eval_loss",
    "finetune_trainer_epoch": "epoch",
    "finetune_trainer_samples_per_second": "samples_per_second",
}


def parse_trainer_metrics(text: str) -> dict[str, float]:
    """The trainer's progress series, by short name, from its Prometheus text exposition."""
    sample: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in TRAINER_SERIES:
                sample[TRAINER_SERIES[s.name]] = float(s.value)
    return sample
