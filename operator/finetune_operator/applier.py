"""The one place that writes to the API server: apply a desired state as it is.

- Children: server-side apply (`application/apply-patch+yaml`) with field manager `finetune-operator`,
  forced for the objects the operator alone controls (Jobs, Services) and not for an LRSweep (a kind people
  also write; a conflict there is theirs to see). Apply is create-or-update in one idempotent call: no read
  first, no "already exists" branch after a restart.
- An apply the API server refuses (403 RBAC, 422 invalid, 409 conflict, any 4xx but throttling) comes back
  as an `ApplyFailure`, which the controller turns into a condition and an event on the resource; a 5xx or
  a broken connection raises (the controller retries with back-off).
- Status: one JSON merge patch of the fields that changed, and only when something did.
- Events: events.k8s.io/v1 Events about the resource; a failure to post one is logged, not raised.

Responses are read as JSON, never turned into the client's generated models (building them costs CPU, and
importing their modules ~90 MiB of memory).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import kubernetes

from finetune_operator.api import API_GROUP, API_VERSION, FINETUNEJOB, LRSWEEP
from finetune_operator.planning import Event, Resource
from finetune_operator.planning.status import ApplyFailure
from finetune_operator.queueing import KUEUE_API

log = logging.getLogger("finetune_operator")

FIELD_MANAGER = "finetune-operator"
COMPONENT = "finetune-operator"
REPORTING_INSTANCE = os.environ.get("POD_NAME") or socket.gethostname()
PLURALS: dict[tuple[str, str], str] = {
    ("batch/v1", "Job"): "jobs",
    ("v1", "Service"): "services",
    (API_VERSION, LRSWEEP.kind): LRSWEEP.plural,
    (API_VERSION, FINETUNEJOB.kind): FINETUNEJOB.plural,
    (KUEUE_API, "Workload"): "workloads",
    (KUEUE_API, "LocalQueue"): "localqueues",
}
FORCE = {"Job": True, "Service": True, LRSWEEP.kind: False}
"""Whether an apply takes over fields another manager owns (kinds the operator alone controls)."""


class ApiError(Exception):
    """A non-2xx answer of the API server, with its Status reason and message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message


def path(api_version: str, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    """The REST path of a namespaced object (or its collection, or a subresource)."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base, "namespaces", namespace, PLURALS[(api_version, kind)], name, sub]
    return "/".join(p for p in parts if p)


def status_delta(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new`: changed keys, and null for dropped ones."""
    delta = {k: v for k, v in new.items() if old.get(k) != v}
    delta.update({k: None for k in old if k not in new})
    return delta


class Applier:
    """Applies children, patches status and posts events through one API client."""

    def __init__(self, api: Callable[[], kubernetes.client.ApiClient]) -> None:
        self._api = api

    def apply_all(
        self, manifests: Iterable[Mapping[str, Any]]
    ) -> tuple[list[Mapping[str, Any]], list[ApplyFailure]]:
        """Apply each manifest; (applied, refused)."""
        applied, failures = [], []
        for manifest in manifests:
            meta = manifest["metadata"]
            try:
                self.apply(manifest)
                applied.append(manifest)
            except ApiError as e:
                if not 400 <= e.code < 500 or e.code == 429:
                    raise
                failures.append(ApplyFailure(manifest["kind"], meta["name"], e.code, e.reason, e.message))
        return applied, failures

    def apply(self, manifest: Mapping[str, Any]) -> None:
        """Server-side apply one object."""
        meta, kind = manifest["metadata"], manifest["kind"]
        query = [("fieldManager", FIELD_MANAGER), ("force", "true" if FORCE.get(kind, True) else "false")]
        self.request(
            "PATCH",
            path(manifest["apiVersion"], kind, meta["namespace"], meta["name"]),
            manifest,
            "application/apply-patch+yaml",
            query,
        )

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a child Job and its pods (a pruned trial); one already gone is fine."""
        try:
            self.request(
                "DELETE",
                path("batch/v1", "Job", namespace, name),
                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except ApiError as e:
            if e.code != 404:
                raise

    def expire_job(self, namespace: str, name: str, seconds: int) -> None:
        """Give a finished Job `ttlSecondsAfterFinished` (a mutable field): Kubernetes' TTL controller then
        deletes it and its pods that long after its end. One already gone is fine."""
        try:
            self.request(
                "PATCH",
                path("batch/v1", "Job", namespace, name),
                {"spec": {"ttlSecondsAfterFinished": seconds}},
                "application/merge-patch+json",
            )
        except ApiError as e:
            if e.code != 404:
                raise

    def patch_status(
        self, resource: Resource, new: Mapping[str, Any], old: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Patch the fields of the status that differ from `old` (the resource's own by default); the
        written object, or None when nothing changed or the resource is gone."""
        delta = status_delta(resource.status if old is None else old, new)
        if not delta:
            return None
        try:
            return self.request(
                "PATCH",
                path(API_VERSION, resource.kind, resource.namespace, resource.name, "status"),
                {"status": delta},
                "application/merge-patch+json",
            )
        except ApiError as e:
            if e.code == 404:
                return None  # deleted meanwhile
            raise

    def suspend_job(self, namespace: str, name: str, suspend: bool = True) -> None:
        """Suspend a trainer Job (the Job controller deletes its pods), or unsuspend it; a Job already gone
        is fine. Never called to unsuspend a Job a Kueue queue manages."""
        self._merge_patch(path("batch/v1", "Job", namespace, name), {"spec": {"suspend": suspend}})

    def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        """Deactivate a Kueue Workload (Kueue evicts it: the Job is suspended, its pods deleted) or
        re-activate it (Kueue admits it again); one already gone is fine."""
        self._merge_patch(path(KUEUE_API, "Workload", namespace, name), {"spec": {"active": active}})

    def suspend_sweep(self, namespace: str, name: str, suspend: bool) -> None:
        """Pause (`spec.suspend: true`) or resume (the field removed: `false` would contradict a
        `queueName`) the LRSweep of an `auto` FineTuneJob; a no-op patch when it already matches."""
        self._merge_patch(
            path(API_VERSION, LRSWEEP.kind, namespace, name), {"spec": {"suspend": suspend or None}}
        )

    def _merge_patch(self, object_path: str, patch: Mapping[str, Any]) -> None:
        try:
            self.request("PATCH", object_path, patch, "application/merge-patch+json")
        except ApiError as e:
            if e.code != 404:
                raise

    def post_event(self, resource: Resource, event: Event) -> None:
        """An events.k8s.io/v1 Event about the resource (`kubectl describe` and `kubectl events` show it)."""
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            # named like client-go's recorder does: <object>.<time in hex nanoseconds>
            "metadata": {"name": f"{resource.name}.{time.time_ns():x}", "namespace": resource.namespace},
            "regarding": {
                "apiVersion": API_VERSION,
                "kind": resource.kind,
                "name": resource.name,
                "namespace": resource.namespace,
                "uid": resource.uid,
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
            self.request("POST", f"/apis/events.k8s.io/v1/namespaces/{resource.namespace}/events", body)
        except (ApiError, OSError) as e:
            log.warning(
                "posting event %s on %s/%s failed: %s", event.reason, resource.namespace, resource.name, e
            )

    def request(
        self,
        method: str,
        resource_path: str,
        body: Any,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any] | None:
        """One call; the answer's JSON. Non-2xx raises `ApiError`. The connection goes back to the pool
        read to its end (one given back with unread bytes would hand them to the next request)."""
        api = self._api()
        params = api.param_serialize(
            method=method,
            resource_path=resource_path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = api.call_api(*params)
        try:
            data = response.read()
        finally:
            response.response.release_conn()
        answer = _json(data)
        if not 200 <= response.status <= 299:
            answer = answer or {}
            reason = str(answer.get("reason") or response.reason or "Error")
            raise ApiError(
                response.status, reason, str(answer.get("message") or data[:512].decode(errors="replace"))
            )
        return answer


def _json(data: bytes | None) -> dict[str, Any] | None:
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
