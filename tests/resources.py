"""Creating the operator's custom resources in tests, as a user's `kubectl create` would."""

from __future__ import annotations

from typing import Any

from kubernetes import client

GROUP, VERSION = "finetune.dev", "v1alpha1"
PLURALS = {"LRSweep": "lrsweeps", "FineTuneJob": "finetunejobs"}


def create(
    api: client.ApiClient, namespace: str, kind: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """Create a `kind` named `name` with `spec`; the created object as the API server returns it."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], body
    )


def create_finetunejob(
    api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """Create a FineTuneJob named `name` with `spec`."""
    return create(api, namespace, "FineTuneJob", name, spec)
