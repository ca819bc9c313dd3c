"""The chart's ValidatingAdmissionPolicy on a real API server: no confused deputy (docs/security.md).

The policy is rendered by a real helm, bound to the test's namespace only (watchNamespaces), and applied.
Requests are made as ServiceAccounts (impersonated by the admin client) whose Roles the test chooses, so the
policy's `authorizer` checks ask the API server's real RBAC about the requesting user.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "charts" / "finetune-operator"
GROUP, VERSION = "finetune.dev", "v1alpha1"
OPERATOR_SA = "ft-op"
BASE: dict[str, Any] = {
    "model": {"name": "/nonexistent/model"},
    "dataset": {"files": ["/nonexistent/train.jsonl"]},
    "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
    "suspend": True,
}
RESOURCE_RULE = {
    "apiGroups": [GROUP],
    "resources": ["lrsweeps", "finetunejobs"],
    "verbs": ["get", "list", "create", "patch", "update"],
}


@pytest.fixture
def policy(kube_cluster, kube_api, namespace, crds_installed) -> Iterator[str]:
    """Render the chart's policy bound to `namespace`, apply it, and wait until it refuses."""
    release = f"ap-{uuid.uuid4().hex[:6]}"
    rendered = kube_cluster.helm(
        "template", release, str(CHART), "-n", namespace,
        "--show-only", "templates/admissionpolicy.yaml",
        "--set", f"watchNamespaces={{{namespace}}}",
        "--set", f"serviceAccount.name={OPERATOR_SA}",
        "--set", "admissionPolicy.allowedImages={registry.example/ml/*}",
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    kube_cluster.kubectl("apply", "-f", "-", input=rendered)
    name = docs[0]["metadata"]["name"]
    try:
        yield name
    finally:
        kube_cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=rendered, check=False)


@pytest.fixture
def as_user(kube_cluster, kube_api, namespace) -> Callable[..., client.CustomObjectsApi]:
    """A client acting as a new ServiceAccount of `namespace` holding exactly `rules` there."""
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    clients: list[client.ApiClient] = []

    def make(name: str, rules: list[dict[str, Any]]) -> client.CustomObjectsApi:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        )
        api = kube_cluster.api_client()
        api.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:{name}")
        clients.append(api)
        return client.CustomObjectsApi(api)

    yield make
    for api in clients:
        api.close()


def create(
    api: client.CustomObjectsApi, namespace: str, kind: str, spec: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    plural = "finetunejobs" if kind == "FineTuneJob" else "lrsweeps"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"generateName": "p-"},
        "spec": spec,
    }
    return api.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body, **kw)


def refusal(api: client.CustomObjectsApi, namespace: str, kind: str, spec: dict[str, Any]) -> str:
    with pytest.raises(client.ApiException) as err:
        create(api, namespace, kind, spec)
    assert err.value.status in (403, 422), err.value.body
    return str(err.value.body)


def wait_until_enforced(api: client.CustomObjectsApi, namespace: str) -> None:
    """Policies reach the API server's admission plugin asynchronously (an informer)."""
    spec = {**BASE, "hubTokenSecret": {"name": "never-readable"}}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            create(api, namespace, "LRSweep", spec, dry_run="All")
        except client.ApiException as exc:
            if "ValidatingAdmissionPolicy" in str(exc.body):
                return
            raise
        time.sleep(0.5)
    raise AssertionError("the admission policy was not enforced within 30 s")


@pytest.fixture
def users(policy, as_user, namespace, kube_api) -> dict[str, client.CustomObjectsApi]:
    client.CoreV1Api(kube_api).create_namespaced_secret(
        namespace, {"metadata": {"name": "hf"}, "stringData": {"token": "x"}}
    )
    plain = as_user("plain", [RESOURCE_RULE])
    reader = as_user(
        "reader",
        [
            RESOURCE_RULE,
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hf"], "verbs": ["get"]},
        ],
    )
    podmaker = as_user(
        "podmaker", [RESOURCE_RULE, {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    )
    wait_until_enforced(plain, namespace)
    return {"plain": plain, "reader": reader, "podmaker": podmaker}


FTJ = {**BASE, "learningRate": {"value": 1e-4}}


@pytest.mark.parametrize("kind", ["LRSweep", "FineTuneJob"])
def test_a_secret_the_user_may_not_read_is_refused_naming_the_field(users, namespace, kind):
    spec = {**(FTJ if kind == "FineTuneJob" else BASE), "hubTokenSecret": {"name": "hf"}}
    message = refusal(users["plain"], namespace, kind, spec)
    assert "spec.hubTokenSecret.name" in message
    assert f"system:serviceaccount:{namespace}:plain may not get Secret hf" in message
    # The same spec from a user who may read that one Secret is admitted.
    assert create(users["reader"], namespace, kind, spec)["spec"]["hubTokenSecret"]["name"] == "hf"


def test_the_mlflow_uri_secret_or_config_map_needs_the_right_to_read_it(users, namespace):
    """The tracking URI is read into the trainer's environment: the same deputy, another field."""
    tracking = {"reportTo": "mlflow", "mlflowTrackingUri": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    spec = {**FTJ, "tracking": tracking}
    message = refusal(users["plain"], namespace, "FineTuneJob", spec)
    assert "spec.tracking.mlflowTrackingUri.secretKeyRef.name" in message
    assert "may not get Secret hf" in message
    assert create(users["reader"], namespace, "FineTuneJob", spec)["spec"]["tracking"]["reportTo"] == "mlflow"
    by_map = {**tracking, "mlflowTrackingUri": {"configMapKeyRef": {"name": "mlflow", "key": "uri"}}}
    message = refusal(users["reader"], namespace, "FineTuneJob", {**FTJ, "tracking": by_map})
    assert "spec.tracking.mlflowTrackingUri.configMapKeyRef.name" in message
    assert "may not get ConfigMap mlflow" in message


def test_a_readable_secret_does_not_open_the_others(users, namespace):
    message = refusal(users["reader"], namespace, "LRSweep", {**BASE, "hubTokenSecret": {"name": "other"}})
    assert "may not get Secret other" in message


def test_images_outside_the_allow_list_need_the_right_to_create_pods(users, namespace):
    evil = {**BASE, "image": "attacker.example/miner:latest"}
    message = refusal(users["plain"], namespace, "LRSweep", evil)
    assert "spec.image: attacker.example/miner:latest is not an allowed trainer image" in message
    assert "registry.example/ml/*" in message
    # The default trainer image and the allow-list's prefix pass; a pod creator may run anything.
    for image in ("ghcr.io/finetune-dev/finetune-trainer:0.1.0", "registry.example/ml/trainer:2"):
        assert create(users["plain"], namespace, "LRSweep", {**BASE, "image": image})
    assert create(users["podmaker"], namespace, "FineTuneJob", {**FTJ, "image": evil["image"]})


def test_tolerating_every_taint_or_another_service_account_needs_the_right_to_create_pods(users, namespace):
    everything = {**BASE, "resources": {**BASE["resources"], "tolerations": [{"operator": "Exists"}]}}
    assert "spec.resources.tolerations" in refusal(users["plain"], namespace, "LRSweep", everything)
    assert create(users["podmaker"], namespace, "LRSweep", everything)
    gpu_only = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert create(
        users["plain"],
        namespace,
        "LRSweep",
        {**BASE, "resources": {**BASE["resources"], "tolerations": gpu_only}},
    )
    other_sa = {**BASE, "serviceAccountName": "builder"}
    assert "spec.serviceAccountName" in refusal(users["plain"], namespace, "FineTuneJob", {**FTJ, **other_sa})
    assert create(users["podmaker"], namespace, "LRSweep", other_sa)
    for field, value in (("imagePullSecrets", [{"name": "regcred"}]), ("priorityClassName", "urgent")):
        assert f"spec.{field}" in refusal(users["plain"], namespace, "LRSweep", {**BASE, field: value})
        assert create(users["podmaker"], namespace, "LRSweep", {**BASE, field: value})


def test_updates_are_checked_only_for_fields_they_change(users, namespace):
    sweep = create(users["reader"], namespace, "LRSweep", {**BASE, "hubTokenSecret": {"name": "hf"}})
    # Someone who may not read the Secret may still relabel the resource: the Secret's name did not change.
    # (The spec itself is immutable by the CRD's own rule, so no UPDATE can swap the Secret.)
    patched = users["plain"].patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "lrsweeps",
        sweep["metadata"]["name"],
        {"metadata": {"labels": {"team": "a"}}},
    )
    assert patched["metadata"]["labels"] == {"team": "a"}


def test_the_operators_own_service_account_is_exempt(users, as_user, namespace):
    # The operator applies the LRSweep of a `learningRate: auto` FineTuneJob, copying its checked fields.
    operator = as_user(OPERATOR_SA, [RESOURCE_RULE])
    assert create(operator, namespace, "LRSweep", {**BASE, "hubTokenSecret": {"name": "hf"}})
