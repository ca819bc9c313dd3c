"""Kopf handlers: thin glue between the API server and the pure planners in `planning`.

Each reconcile gathers the resource's children from in-memory indices (no extra API reads), asks the
planner what the status should be and what to create, creates it idempotently (deterministic names:
`409 AlreadyExists` is success), posts events, and patches only the status fields that changed.
A timer re-runs the reconcile while the resource is not finished; live progress comes from polling the
running trainer's metrics endpoint, throttled to one poll per `poll_interval` per Job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from finetune_operator import naming, rendering
from finetune_operator.api import API_GROUP, FINETUNEJOB, LRSWEEP, VERSION
from finetune_operator.children import ChildState, observe
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.planning import TERMINAL, Plan, is_done, plan_finetune, plan_sweep
from finetune_operator.settings import Settings

RECONCILE_INTERVAL = float(os.environ.get("FINETUNE_RECONCILE_INTERVAL", "5"))
"""Seconds between reconciles of an unfinished resource (read at import: kopf fixes timers then)."""

log = logging.getLogger("finetune_operator")


class State:
    """Process-wide operator state: settings, metrics and API clients (set by `configure`)."""

    settings = Settings()
    metrics = OperatorMetrics()
    _api: kubernetes.client.ApiClient | None = None

    @classmethod
    def api(cls) -> kubernetes.client.ApiClient:
        if cls._api is None:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                # KUBECONFIG is read now, not at import (the client library caches it at import time)
                kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            config = kubernetes.client.Configuration.get_default_copy()
            config.connection_pool_maxsize = 32  # above kopf's worker count: no waiting for a connection
            cls._api = kubernetes.client.ApiClient(config)
        return cls._api


def configure(settings: Settings, metrics: OperatorMetrics | None = None) -> None:
    State.settings = settings
    if metrics is not None:
        State.metrics = metrics


def _not_finished(status: dict[str, Any], meta: dict[str, Any], **_: Any) -> bool:
    return not is_done(status, meta.get("generation", 1))


# ---------------------------------------------------------------------------------------------- indices


def _slim(body: kopf.Body) -> dict[str, Any]:
    """What `children.observe` reads: name, creation time and status; never spec or managedFields.
    (Indices hold one entry per Job and pod: full bodies would multiply the operator's memory.)"""
    meta = body.metadata
    return {
        "metadata": {"name": meta.name, "creationTimestamp": meta.get("creationTimestamp")},
        "status": dict(body.get("status") or {}),
    }


@kopf.index("batch", "v1", "jobs", labels=naming.MANAGED_BY)
def jobs_by_owner(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> dict | None:
    for kind, label in naming.KIND_LABELS.items():
        if label in labels:
            return {(namespace, kind, labels[label]): _slim(body)}
    return None


@kopf.index("", "v1", "pods", labels=naming.MANAGED_BY)
def pods_by_job(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> dict | None:
    job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    return {(namespace, job): _slim(body)} if job else None


@kopf.index(API_GROUP, VERSION, "lrsweeps")
def sweeps_by_name(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, name): {"status": dict(body.get("status") or {}), "uid": body.metadata.uid}}


@contextlib.contextmanager
def _reconciling(kind: str) -> Iterator[None]:
    """Time one reconcile and count it as an error if it raises."""
    m = State.metrics
    with m.reconcile_seconds.labels(kind).time(), m.reconcile_errors.labels(kind).count_exceptions():
        yield


def _children(
    kind: str, namespace: str, name: str, jobs: kopf.Index, pods: kopf.Index
) -> dict[str, ChildState]:
    out: dict[str, ChildState] = {}
    for job in jobs.get((namespace, kind, name), []):
        job_name = job["metadata"]["name"]
        out[job_name] = observe(job, list(pods.get((namespace, job_name), [])))
    return out


# ---------------------------------------------------------------------------------------------- startup


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP)
    settings.posting.level = logging.WARNING  # events are posted explicitly, not per log line
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 300
    State.api()
    if State.settings.metrics_port:
        State.metrics.serve(State.settings.metrics_port, State.settings.bind_address)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, else `$KUBECONFIG` (read now, not at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.probe(id="ready")
def ready(**_: Any) -> bool:
    return True


# ---------------------------------------------------------------------------------------------- LRSweep


@kopf.on.create(API_GROUP, VERSION, "lrsweeps")
@kopf.on.resume(API_GROUP, VERSION, "lrsweeps")
@kopf.timer(API_GROUP, VERSION, "lrsweeps", interval=RECONCILE_INTERVAL, when=_not_finished)
def reconcile_lrsweep(
    body: kopf.Body,
    name: str,
    namespace: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    jobs_by_owner: kopf.Index,
    pods_by_job: kopf.Index,
    **_: Any,
) -> None:
    with _reconciling(LRSWEEP.kind):
        children = _children(LRSWEEP.kind, namespace, name, jobs_by_owner, pods_by_job)
        plan = plan_sweep(
            name,
            dict(body.spec),
            dict(body.status),
            body.metadata.get("generation", 1),
            children,
            samples=_poll_running(memo, children),
        )
        _apply(LRSWEEP.kind, body, plan, patch)
        _export_sweep(namespace, name, plan.status)


def _export_sweep(namespace: str, name: str, status: dict[str, Any]) -> None:
    m = State.metrics
    m.set_phase(LRSWEEP.kind, namespace, name, status.get("phase", "Pending"))
    _export_progress(LRSWEEP.kind, namespace, name, status)
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
            m.set_trial(namespace, name, trial["index"], trial["learningRate"], trial["evalLoss"])


def _reason(status: dict[str, Any]) -> str | None:
    return next((c["reason"] for c in status.get("conditions", []) if c["type"] == "Failed"), None)


def _export_progress(kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    progress = status.get("progress") or {}
    if progress:
        State.metrics.set_progress(
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


@kopf.on.delete(API_GROUP, VERSION, "lrsweeps", optional=True)
def forget_lrsweep(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    State.metrics.forget(LRSWEEP.kind, namespace, name)


# ---------------------------------------------------------------------------------------------- FineTuneJob


@kopf.on.create(API_GROUP, VERSION, "finetunejobs")
@kopf.on.resume(API_GROUP, VERSION, "finetunejobs")
@kopf.timer(API_GROUP, VERSION, "finetunejobs", interval=RECONCILE_INTERVAL, when=_not_finished)
def reconcile_finetunejob(
    body: kopf.Body,
    name: str,
    namespace: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    jobs_by_owner: kopf.Index,
    pods_by_job: kopf.Index,
    sweeps_by_name: kopf.Index,
    **_: Any,
) -> None:
    with _reconciling(FINETUNEJOB.kind):
        children = _children(FINETUNEJOB.kind, namespace, name, jobs_by_owner, pods_by_job)
        lr_spec = body.spec.get("learningRate") or {}
        sweep_name = (lr_spec.get("fromSweep") or {}).get("name") or (
            naming.auto_sweep(name) if "auto" in lr_spec else None
        )
        sweep = next(iter(sweeps_by_name.get((namespace, sweep_name), [])), None) if sweep_name else None
        plan = plan_finetune(
            name,
            dict(body.spec),
            dict(body.status),
            body.metadata.get("generation", 1),
            children,
            sweep,
            samples=_poll_running(memo, children),
        )
        if plan.create_sweep is not None and sweep_name:
            _create_sweep(body, sweep_name, plan.create_sweep)
        _apply(FINETUNEJOB.kind, body, plan, patch)
        m = State.metrics
        m.set_phase(FINETUNEJOB.kind, namespace, name, plan.status.get("phase", "Pending"))
        _export_progress(FINETUNEJOB.kind, namespace, name, plan.status)
        if plan.status.get("learningRate") is not None:
            m.set_resolved_lr(
                namespace, name, plan.status.get("learningRateSource", ""), plan.status["learningRate"]
            )


@kopf.on.delete(API_GROUP, VERSION, "finetunejobs", optional=True)
def forget_finetunejob(name: str, namespace: str, **_: Any) -> None:
    State.metrics.forget(FINETUNEJOB.kind, namespace, name)


# ---------------------------------------------------------------------------------------------- effects


def _owner(kind: str, body: kopf.Body) -> dict[str, Any]:
    return rendering.owner_reference(kind, body.metadata.name, body.metadata.uid)


def _create(call: Any, *args: Any) -> bool:
    """Create an object; True if created, False if it already existed (a restart or a retry)."""
    try:
        call(*args)
        return True
    except ApiException as e:
        if e.status == 409:
            return False
        raise


def _apply(kind: str, body: kopf.Body, plan: Plan, patch: kopf.Patch) -> None:
    namespace, owner_name = body.metadata.namespace, body.metadata.name
    owner = _owner(kind, body)
    core = kubernetes.client.CoreV1Api(State.api())
    batch = kubernetes.client.BatchV1Api(State.api())
    workload = (LRSWEEP if kind == LRSWEEP.kind else FINETUNEJOB).spec.model_validate(dict(body.spec))
    for child in plan.create:
        labels = naming.child_labels(kind, owner_name, child.role, child.trial)
        _create(
            core.create_namespaced_config_map,
            namespace,
            rendering.config_map(child.name, namespace, labels, owner, child.config),
        )
        job = rendering.trainer_job(
            name=child.name,
            namespace=namespace,
            kind=kind,
            owner_name=owner_name,
            owner=owner,
            role=child.role,
            args=child.args,
            workload=workload,
            settings=State.settings,
            trial=child.trial,
        )
        if _create(batch.create_namespaced_job, namespace, job):
            State.metrics.jobs_created.labels(kind).inc()
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
    old_status = body.get("status") or {}
    if plan.status.get("phase") == "Failed" and old_status.get("phase") != "Failed":
        State.metrics.jobs_failed.labels(kind, _reason(plan.status) or "Unknown").inc()
    _patch_status(body.get("status") or {}, plan.status, patch)


def _patch_status(old: dict[str, Any], new: dict[str, Any], patch: kopf.Patch) -> None:
    """Write only what changed; fields the new status drops are removed (merge-patch null)."""
    for key, value in new.items():
        if old.get(key) != value:
            patch.status[key] = value
    for key in old:
        if key not in new and key != "kopf":
            patch.status[key] = None


def _create_sweep(body: kopf.Body, sweep_name: str, spec: dict[str, Any]) -> None:
    sweep = {
        "apiVersion": f"{API_GROUP}/{VERSION}",
        "kind": LRSWEEP.kind,
        "metadata": {
            "name": sweep_name,
            "namespace": body.metadata.namespace,
            "labels": {**naming.MANAGED_BY, naming.KIND_LABELS[FINETUNEJOB.kind]: body.metadata.name},
            "ownerReferences": [_owner(FINETUNEJOB.kind, body)],
        },
        "spec": spec,
    }
    api = kubernetes.client.CustomObjectsApi(State.api())
    _create(
        api.create_namespaced_custom_object,
        API_GROUP,
        VERSION,
        body.metadata.namespace,
        LRSWEEP.plural,
        sweep,
    )


# ---------------------------------------------------------------------------------------------- live progress

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


def _poll_running(memo: kopf.Memo, children: dict[str, ChildState]) -> dict[str, dict[str, float]]:
    """Latest metrics of each running child, polled at most once per poll interval."""
    cache: dict[str, tuple[float, dict[str, float]]] = memo.setdefault("samples", {})
    now = time.monotonic()
    for child in children.values():
        if child.phase != "Running" or not child.pod_ip:
            continue
        polled_at, _ = cache.get(child.name, (0.0, {}))
        if now - polled_at < State.settings.poll_interval:
            continue
        url = f"http://{child.pod_ip}:{State.settings.trainer_metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                cache[child.name] = (now, parse_trainer_metrics(response.read().decode()))
        except OSError as e:
            log.debug("polling %s failed: %s", url, e)
            cache[child.name] = (now, cache.get(child.name, (0.0, {}))[1])
    return {name: sample for name, (_, sample) in cache.items() if name in children}
