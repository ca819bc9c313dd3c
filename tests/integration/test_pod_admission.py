"""What a kubelet and scheduler refuse, the local pod runner refuses too (on the real API server).

A pod naming a missing or unbound PersistentVolumeClaim stays Pending and unscheduled; a missing Secret or
ConfigMap leaves its container waiting in CreateContainerConfigError; a Job naming a missing ServiceAccount
never gets a pod (the API server's ServiceAccount admission refuses it; the Job controller records why).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import client
from test_control_plane import CLAIM, python_container, read_pod, wait_for

pytestmark = pytest.mark.integration


def pod_with(name: str, volumes: list[dict[str, Any]] | None = None, **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [python_container("print('ran')", **container)],
            "volumes": volumes or [],
        },
    }


def scheduled_condition(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    pod = read_pod(core, namespace, name)
    return next(
        (
            c
            for c in pod["status"].get("conditions") or []
            if c["type"] == "PodScheduled" and c["status"] == "False"
        ),
        None,
    )


def claim_volume(claim: str) -> list[dict[str, Any]]:
    return [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]


@pytest.fixture
def core(kube_cluster, kube_api) -> client.CoreV1Api:
    if kube_cluster.runner is None:
        pytest.skip("checks the local pod runner")
    return client.CoreV1Api(kube_api)


def test_a_missing_claim_keeps_the_pod_unscheduled_until_the_claim_exists_and_binds(core, namespace):
    core.create_namespaced_pod(namespace, pod_with("waits", claim_volume("ckpt")))
    cond = wait_for("the scheduler's verdict", lambda: scheduled_condition(core, namespace, "waits"))
    assert cond["reason"] == "Unschedulable"
    assert cond["message"] == '0/1 nodes are available: persistentvolumeclaim "ckpt" not found.'
    assert not read_pod(core, namespace, "waits")["spec"].get("nodeName")
    # Once the claim exists, the default class's provisioner binds it and the pod runs.
    core.create_namespaced_persistent_volume_claim(namespace, CLAIM)
    done = wait_for(
        "the pod to finish",
        lambda: (s := read_pod(core, namespace, "waits")["status"]).get("phase") == "Succeeded" and s,
        timeout=90,
    )
    assert done["phase"] == "Succeeded"
    claim = core.read_namespaced_persistent_volume_claim("ckpt", namespace)
    assert claim.status.phase == "Bound" and claim.spec.storage_class_name == "local-runner"


def test_an_unbound_claim_keeps_the_pod_unscheduled(core, namespace):
    # A class nobody provisions: the claim stays Pending, as on a cluster without that provisioner.
    unbound = {
        "metadata": {"name": "nowhere"},
        "spec": {**CLAIM["spec"], "storageClassName": "no-such-class"},
    }
    core.create_namespaced_persistent_volume_claim(namespace, unbound)
    core.create_namespaced_pod(namespace, pod_with("stuck", claim_volume("nowhere")))
    cond = wait_for("the scheduler's verdict", lambda: scheduled_condition(core, namespace, "stuck"))
    assert cond["reason"] == "Unschedulable"
    assert cond["message"] == "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."
    time.sleep(2)
    pod = read_pod(core, namespace, "stuck")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


@pytest.mark.parametrize(
    ("name", "container", "volumes", "missing"),
    [
        (
            "env-secret",
            {"env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}]},
            None,
            'secret "hub" not found',
        ),
        (
            "env-configmap",
            {"envFrom": [{"configMapRef": {"name": "settings"}}]},
            None,
            'configmap "settings" not found',
        ),
        (
            "volume-secret",
            {"volumeMounts": [{"name": "creds", "mountPath": "/creds"}]},
            [{"name": "creds", "secret": {"secretName": "creds"}}],
            'secret "creds" not found',
        ),
    ],
)
def test_a_missing_secret_or_configmap_is_a_create_container_config_error(
    core, namespace, name, container, volumes, missing
):
    core.create_namespaced_pod(namespace, pod_with(name, volumes, **container))

    def waiting() -> dict[str, Any] | None:
        statuses = read_pod(core, namespace, name)["status"].get("containerStatuses") or []
        return next((s["state"]["waiting"] for s in statuses if "waiting" in s.get("state", {})), None)

    state = wait_for("the container's waiting state", waiting)
    assert state["reason"] == "CreateContainerConfigError"
    assert missing in state["message"]
    pod = read_pod(core, namespace, name)
    assert pod["status"]["phase"] == "Pending" and pod["spec"]["nodeName"]  # bound, never started
    assert pod["status"]["startTime"]  # the node took it on, as a kubelet records before creating containers


def test_an_image_name_no_runtime_could_parse_is_an_invalid_image_name(core, namespace):
    core.create_namespaced_pod(namespace, pod_with("upper", image="Private/Trainer:1"))

    def waiting() -> dict[str, Any] | None:
        statuses = read_pod(core, namespace, "upper")["status"].get("containerStatuses") or []
        return next((s["state"]["waiting"] for s in statuses if "waiting" in s.get("state", {})), None)

    state = wait_for("the container's waiting state", waiting)
    assert state["reason"] == "InvalidImageName"
    assert 'couldn\'t parse image name "Private/Trainer:1"' in state["message"]
    assert read_pod(core, namespace, "upper")["status"]["phase"] == "Pending"


def test_a_job_naming_a_missing_service_account_never_gets_a_pod(core, kube_api, namespace):
    batch = client.BatchV1Api(kube_api)
    template = pod_with("unused")["spec"] | {"serviceAccountName": "nobody"}
    batch.create_namespaced_job(
        namespace,
        {"metadata": {"name": "orphan"}, "spec": {"backoffLimit": 0, "template": {"spec": template}}},
    )

    def failed_create() -> str | None:
        resp = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=orphan", _preload_content=False
        )
        events = json.loads(resp.data)["items"]
        return next((e["message"] for e in events if e["reason"] == "FailedCreate"), None)

    event = wait_for("the Job controller's FailedCreate event", failed_create)
    assert 'serviceaccount "nobody" not found' in event
    assert not core.list_namespaced_pod(namespace, label_selector="job-name=orphan").items
