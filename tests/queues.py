"""Kueue objects for tests: a ResourceFlavor + ClusterQueue with a CPU/memory quota and a LocalQueue in the
test's namespace (the ClusterQueue and flavor are cluster-scoped: each test gets its own and removes it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kubernetes import client

from finetune_localcluster.processes import wait_for
from finetune_operator.queueing import KUEUE_GROUP, KUEUE_VERSION, QUEUE_LABEL

API_VERSION = f"{KUEUE_GROUP}/{KUEUE_VERSION}"


def _objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@contextlib.contextmanager
def local_queue(api: client.ApiClient, namespace: str, name: str, cpu: str, memory: str) -> Iterator[str]:
    """A LocalQueue `name` in `namespace` whose ClusterQueue admits at most `cpu` and `memory` at once."""
    objects = _objects(api)
    cluster_queue, flavor = f"cq-{namespace}"[:63], f"rf-{namespace}"[:63]
    objects.create_cluster_custom_object(
        KUEUE_GROUP,
        KUEUE_VERSION,
        "resourceflavors",
        {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": flavor}, "spec": {}},
    )
    objects.create_cluster_custom_object(
        KUEUE_GROUP,
        KUEUE_VERSION,
        "clusterqueues",
        {
            "apiVersion": API_VERSION,
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory"],
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": cpu},
                                    {"name": "memory", "nominalQuota": memory},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    objects.create_namespaced_custom_object(
        KUEUE_GROUP,
        KUEUE_VERSION,
        namespace,
        "localqueues",
        {
            "apiVersion": API_VERSION,
            "kind": "LocalQueue",
            "metadata": {"name": name},
            "spec": {"clusterQueue": cluster_queue},
        },
    )
    wait(lambda: _active(objects, cluster_queue), 60, f"ClusterQueue {cluster_queue} active")
    try:
        yield name
    finally:
        with contextlib.suppress(client.ApiException):
            objects.delete_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, "localqueues", name
            )
        with contextlib.suppress(client.ApiException):
            objects.delete_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", cluster_queue)
        with contextlib.suppress(client.ApiException):
            objects.delete_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "resourceflavors", flavor)


def _active(objects: client.CustomObjectsApi, cluster_queue: str) -> bool:
    cq = objects.get_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", cluster_queue)
    return any(
        c.get("type") == "Active" and c.get("status") == "True"
        for c in (cq.get("status") or {}).get("conditions") or []
    )


def workloads(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listing = _objects(api).list_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads")
    return list(listing.get("items") or [])


def queued_job(name: str, queue: str, pods: int, cpu: str, command: list[str]) -> dict[str, Any]:
    """An Indexed Job of `pods` pods (completions = parallelism) labelled for `queue`, created suspended.

    Kueue's side of a gang, without the operator (test_kueue.py also runs the operator's own: a
    `resources.nodes: 2` FineTuneJob)."""
    locked_down = {
        "runAsNonRoot": True,
        "runAsUser": 65534,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    amounts = {"cpu": cpu, "memory": "64Mi"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: queue}},
        "spec": {
            "suspend": True,
            "completionMode": "Indexed",
            "completions": pods,
            "parallelism": pods,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3.12-slim",
                            "command": command,
                            "resources": {"requests": amounts, "limits": amounts},
                            "securityContext": locked_down,
                        }
                    ],
                }
            },
        },
    }


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll `predicate` until it returns something truthy (that value), failing after `timeout` s."""
    return wait_for(predicate, timeout, interval=interval, what=what)


def set_cpu_quota(api: client.ApiClient, namespace: str, cpu: str) -> None:
    """Change the CPU quota of the ClusterQueue `local_queue` made for `namespace`."""
    objects = _objects(api)
    name = f"cq-{namespace}"[:63]
    cq = objects.get_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", name)
    groups = cq["spec"]["resourceGroups"]
    groups[0]["flavors"][0]["resources"][0]["nominalQuota"] = cpu
    objects.patch_cluster_custom_object(
        KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", name, {"spec": {"resourceGroups": groups}}
    )
