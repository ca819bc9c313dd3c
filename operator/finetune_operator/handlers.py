"""Kopf glue: watches, indices and probes; the reconciling itself lives in `controller`.

Only event handlers and indices are registered, so kopf writes nothing to our resources (no finalizers, no
progress or diff-base annotations). Indices hold what a reconcile reads about children; kopf holds every
handler back until they are filled, so a restarted operator never mistakes a not-yet-listed Job for a
missing one. Event handlers queue the affected resource's key; `Controller` workers do the rest.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
import kubernetes

from finetune_operator import distributed, naming
from finetune_operator.api import API_GROUP, FINETUNEJOB, LRSWEEP, VERSION
from finetune_operator.controller import Controller, controller_uid
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.settings import Settings

log = logging.getLogger("finetune_operator")


class State:
    """Process-wide operator state: settings, metrics, the API client and the controller."""

    settings = Settings()
    metrics = OperatorMetrics()
    controller: Controller | None = None
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
            config.connection_pool_maxsize = State.settings.workers + 4  # no worker waits for a connection
            cls._api = kubernetes.client.ApiClient(config)
        return cls._api


def configure(settings: Settings, metrics: OperatorMetrics | None = None) -> None:
    State.settings = settings
    if metrics is not None:
        State.metrics = metrics


def _controller() -> Controller:
    if State.controller is None:
        raise RuntimeError("the controller is not started (the startup handler has not run)")
    return State.controller


# ---------------------------------------------------------------------------------------------- indices


_SLIM_SPEC = ("ttlSecondsAfterFinished", "suspend")
"""The Job spec fields `children.observe` reads: whether the Job expires, and whether Kueue holds it."""


def _slim(body: kopf.Body) -> dict[str, Any]:
    """What `children.observe` reads: name, creation time, status, the controlling owner's uid, a Job's
    `_SLIM_SPEC` and an Indexed Job's pod's completion index (`distributed.leader` picks index 0 by it);
    never the rest of the spec or managedFields. (Indices hold one entry per Job and pod: full bodies
    would multiply the operator's memory.)"""
    meta = body.metadata
    slim: dict[str, Any] = {
        "metadata": {"name": meta.name, "creationTimestamp": meta.get("creationTimestamp")},
        "status": dict(body.get("status") or {}),
        "owner": controller_uid(body),
    }
    index = (meta.get("annotations") or {}).get(distributed.COMPLETION_INDEX)
    if index is not None:
        slim["metadata"]["annotations"] = {distributed.COMPLETION_INDEX: index}
    spec = body.get("spec") or {}
    kept = {k: spec[k] for k in _SLIM_SPEC if spec.get(k) is not None}
    if kept:
        slim["spec"] = kept
    return slim


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
    return {(namespace, name): {"status": dict(body.get("status") or {}), "owner": controller_uid(body)}}


# ---------------------------------------------------------------------------------------------- lifecycle


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # events are posted explicitly, not per log line
    settings.watching.server_timeout = 300
    State.api()
    if State.settings.metrics_port:
        State.metrics.serve(State.settings.metrics_port, State.settings.bind_address)
    State.controller = Controller(State.settings, State.metrics, State.api)
    await State.controller.start(State.settings.workers)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if State.controller is not None:
        await State.controller.stop()
        State.controller = None


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, else `$KUBECONFIG` (read now, not at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.probe(id="ready")
def ready(**_: Any) -> bool:
    return State.controller is not None


# ---------------------------------------------------------------------------------------------- events


@kopf.on.event(API_GROUP, VERSION, "lrsweeps")
@kopf.on.event(API_GROUP, VERSION, "finetunejobs")
async def resource_event(
    type: str | None,
    body: kopf.Body,
    resource: kopf.Resource,
    jobs_by_owner: kopf.Index,
    pods_by_job: kopf.Index,
    sweeps_by_name: kopf.Index,
    **_: Any,
) -> None:
    controller = _controller()
    controller.bind_indices(jobs_by_owner, pods_by_job, sweeps_by_name)
    kind = LRSWEEP.kind if resource.plural == LRSWEEP.plural else FINETUNEJOB.kind
    controller.observe_resource(kind, type, body)


@kopf.on.event("batch", "v1", "jobs", labels=naming.MANAGED_BY)
@kopf.on.event("", "v1", "pods", labels=naming.MANAGED_BY)
async def child_event(namespace: str, labels: dict[str, str], **_: Any) -> None:
    _controller().observe_child(namespace, labels)
