"""The local control plane and pod runner behave like Kubernetes where the operator depends on it.

Runs against the local control plane (or ``KUBECONFIG``'s cluster). Pods use a public Python image so the
same tests pass on a real cluster; the local runner ignores the image and runs the command locally.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from finetune_localcluster.cluster import LocalCluster, apply_crds

pytestmark = pytest.mark.integration

IMAGE = "python:3.12-slim"
LOCKED_DOWN = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


# A claim of the cluster's default StorageClass (the local runner provisions it; so does a real cluster's).
CLAIM = {
    "metadata": {"name": "ckpt"},
    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
}


def python_container(code: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "main",
        "image": IMAGE,
        "command": ["python3", "-c", code],
        "securityContext": LOCKED_DOWN,
        **extra,
    }


def message(exc: client.ApiException) -> str:
    """The API's human-readable error message (the body is a JSON Status)."""
    return str(json.loads(exc.body)["message"])


def read_pod(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(core.read_namespaced_pod(name, namespace, _preload_content=False).data)


def pods_of(core: client.CoreV1Api, namespace: str, selector: str) -> list[dict[str, Any]]:
    resp = core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
    return json.loads(resp.data)["items"]


def test_version_is_the_built_release(kube_cluster: LocalCluster) -> None:
    if kube_cluster.control_plane is None:
        pytest.skip("external cluster")
    assert kube_cluster.control_plane.version()["gitVersion"].startswith("v1.")
    assert kube_cluster.control_plane.version()["gitVersion"] != "v0.0.0"


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.finetune.dev"},
    "spec": {
        "group": "test.finetune.dev",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["replicas"],
                                "properties": {"replicas": {"type": "integer", "minimum": 1}},
                                "x-kubernetes-validations": [
                                    {"rule": "self.replicas <= 8", "message": "at most 8 replicas"}
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_installs_and_rejects_an_invalid_object_with_the_schema_message(
    kube_api: client.ApiClient, namespace: str
) -> None:
    assert apply_crds(kube_api, [WIDGET_CRD]) == ["widgets.test.finetune.dev"]
    custom = client.CustomObjectsApi(kube_api)

    def widget(replicas: int) -> dict[str, Any]:
        return {
            "apiVersion": "test.finetune.dev/v1",
            "kind": "Widget",
            "metadata": {"name": f"w{replicas}"},
            "spec": {"replicas": replicas},
        }

    custom.create_namespaced_custom_object("test.finetune.dev", "v1", namespace, "widgets", widget(2))
    with pytest.raises(client.ApiException) as below_minimum:
        custom.create_namespaced_custom_object("test.finetune.dev", "v1", namespace, "widgets", widget(0))
    assert below_minimum.value.status == 422
    assert "spec.replicas in body should be greater than or equal to 1" in message(below_minimum.value)
    with pytest.raises(client.ApiException) as cel:
        custom.create_namespaced_custom_object("test.finetune.dev", "v1", namespace, "widgets", widget(9))
    assert cel.value.status == 422
    assert "at most 8 replicas" in message(cel.value)


@pytest.mark.e2e
def test_job_pod_runs_to_success_and_reports_its_termination_message(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
    code = (
        "import os, pathlib;"
        "pathlib.Path('/scratch/note').write_text('scratch ok');"
        "note = pathlib.Path('/scratch/note').read_text();"
        "env = os.environ;"
        "open('/dev/termination-log', 'w').write(f\"{note} from {env['POD_NAME']} at {env['POD_IP']}\")"
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "hello"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                    "containers": [
                        python_container(
                            code,
                            volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
                            env=[
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            ],
                        )
                    ],
                }
            },
        },
    }
    batch.create_namespaced_job(namespace, job)
    done = wait_for(
        "the Job to complete",
        lambda: (batch.read_namespaced_job_status("hello", namespace).status.succeeded or 0) >= 1,
        timeout=120,
    )
    assert done
    (pod,) = pods_of(core, namespace, "job-name=hello")
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["reason"] == "Completed"
    ip = pod["status"]["podIP"]
    assert terminated["message"] == f"scratch ok from {pod['metadata']['name']} at {ip}"
    conditions = {
        c["type"]: c["status"]
        for c in batch.read_namespaced_job_status("hello", namespace).to_dict()["status"]["conditions"]
    }
    assert conditions.get("Complete") == "True"


@pytest.mark.e2e
def test_pod_sees_configmap_and_secret_as_env_and_files(kube_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"lr": "0.001"}})
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
    )
    code = (
        "import os;"
        "print('hello from the pod');"
        "lr = open('/etc/settings/lr').read();"
        "open(os.environ['RESULT'], 'w').write(f\"{lr} {os.environ['TOKEN']} {os.environ['NS']}\")"
    )
    container = python_container(
        code,
        terminationMessagePath="/results/out",
        env=[
            {"name": "RESULT", "value": "/results/out"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        volumeMounts=[{"name": "settings", "mountPath": "/etc/settings", "readOnly": True}],
    )
    pod = {
        "metadata": {"name": "reader"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [{"name": "settings", "configMap": {"name": "settings"}}],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    status = wait_for(
        "the pod to finish",
        lambda: (
            read_pod(core, namespace, "reader")["status"]
            if read_pod(core, namespace, "reader")["status"].get("phase") in ("Succeeded", "Failed")
            else None
        ),
    )
    assert status["phase"] == "Succeeded", status
    assert status["containerStatuses"][0]["state"]["terminated"]["message"] == f"0.001 s3cr3t {namespace}"


@pytest.mark.e2e
def test_deleting_the_jobs_owner_garbage_collects_the_job_its_pods_and_their_processes(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "sleeper",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
            ],
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [python_container("import time; time.sleep(600)")],
                }
            },
        },
    }
    batch.create_namespaced_job(namespace, job)

    def running_pod() -> dict[str, Any] | None:
        pods = pods_of(core, namespace, "job-name=sleeper")
        return pods[0] if pods and pods[0]["status"].get("phase") == "Running" else None

    pod = wait_for("the Job's pod to run", running_pod, timeout=90)
    container_id = pod["status"]["containerStatuses"][0].get("containerID", "")
    core.delete_namespaced_config_map("owner", namespace)

    def job_gone() -> bool:
        try:
            batch.read_namespaced_job("sleeper", namespace)
            return False
        except client.ApiException as exc:
            return exc.status == 404

    wait_for("the garbage collector to delete the Job", job_gone, timeout=90)
    wait_for(
        "the garbage collector to delete the pod",
        lambda: not pods_of(core, namespace, "job-name=sleeper"),
        timeout=90,
    )
    if container_id.startswith("local-process://"):
        pid = int(container_id.rsplit("/", 1)[1])

        def process_gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(f"process {pid} to exit", process_gone, timeout=30)


def test_rbac_refuses_an_unprivileged_impersonated_user(kube_cluster: LocalCluster, namespace: str) -> None:
    user = f"alice-{uuid.uuid4().hex[:6]}"
    api = kube_cluster.api_client()
    api.set_default_header("Impersonate-User", user)
    try:
        as_alice = client.CoreV1Api(api)
        with pytest.raises(client.ApiException) as refused:
            as_alice.list_namespaced_pod(namespace)
        assert refused.value.status == 403
        assert f'User "{user}" cannot list resource "pods"' in message(refused.value)

        rbac = client.RbacAuthorizationV1Api(kube_cluster.api_client())
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "alice-reads-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            },
        )

        def allowed() -> bool:
            try:
                as_alice.list_namespaced_pod(namespace)
                return True
            except client.ApiException:
                return False

        wait_for("the RoleBinding to take effect", allowed, timeout=30)
        with pytest.raises(client.ApiException) as still_refused:
            as_alice.delete_collection_namespaced_pod(namespace)
        assert still_refused.value.status == 403
    finally:
        api.close()


def test_pod_security_restricted_refuses_a_pod_that_is_not_locked_down(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    loose = {
        "metadata": {"name": "loose"},
        "spec": {"containers": [{"name": "main", "image": IMAGE, "command": ["python3", "-c", "pass"]}]},
    }
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(namespace, loose)
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in message(refused.value)
    assert "runAsNonRoot" in message(refused.value)


@pytest.mark.e2e
def test_pod_whose_command_does_not_exist_fails_with_a_reason(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    container = {
        "name": "main",
        "image": IMAGE,
        "command": ["no-such-command-xyz"],
        "securityContext": LOCKED_DOWN,
    }
    core.create_namespaced_pod(
        namespace,
        {"metadata": {"name": "broken"}, "spec": {"restartPolicy": "Never", "containers": [container]}},
    )
    status = wait_for(
        "the pod to fail",
        lambda: (
            read_pod(core, namespace, "broken")["status"]
            if read_pod(core, namespace, "broken")["status"].get("phase") == "Failed"
            else None
        ),
    )
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0
    assert terminated["reason"] in ("ContainerCannotRun", "StartError")
    assert "no-such-command-xyz" in terminated["message"]


def test_a_deleted_pod_held_by_a_finalizer_ends_failed_and_frees_its_cpu_for_the_next_pod(
    kube_api: client.ApiClient, namespace: str
) -> None:
    """A kubelet gives a deleted pod a terminal phase, so a finalizer that keeps it visible does not keep
    its requests on the node: a pod that needs the same CPU is scheduled and runs."""
    core = client.CoreV1Api(kube_api)
    nodes = [n for n in core.list_node().items if not n.spec.unschedulable]
    cpu = min(n.status.allocatable["cpu"] for n in nodes)  # all of the smallest node's CPU

    def pod(name: str, code: str, **meta: Any) -> dict[str, Any]:
        container = python_container(code, resources={"requests": {"cpu": cpu}})
        return {
            "metadata": {"name": name, **meta},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "containers": [container]},
        }

    hold = "finetune.dev/test-hold"
    core.create_namespaced_pod(namespace, pod("holder", "import time; time.sleep(600)", finalizers=[hold]))
    try:
        wait_for(
            "the holder to run",
            lambda: read_pod(core, namespace, "holder")["status"].get("phase") == "Running",
        )
        core.delete_namespaced_pod("holder", namespace)
        held = wait_for(
            "the deleted holder to reach a terminal phase",
            lambda: (
                (p := read_pod(core, namespace, "holder"))["status"].get("phase") in ("Succeeded", "Failed")
                and p
            ),
        )
        assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == [hold]
        assert held["status"]["phase"] == "Failed"
        assert held["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] != 0
        core.create_namespaced_pod(namespace, pod("next", "print('ran')"))
        done = wait_for(
            "the next pod, which needs the same CPU, to run",
            lambda: (
                (p := read_pod(core, namespace, "next"))["status"].get("phase") in ("Succeeded", "Failed")
                and p
            ),
            timeout=90,
        )
        assert done["status"]["phase"] == "Succeeded", done["status"]
    finally:
        core.patch_namespaced_pod("holder", namespace, {"metadata": {"finalizers": None}})


def test_pod_requesting_more_gpus_than_the_node_has_stays_pending(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    most = max(
        (int(n.status.allocatable.get("nvidia.com/gpu", "0")) for n in core.list_node().items), default=0
    )
    container = python_container("pass", resources={"limits": {"nvidia.com/gpu": str(most + 1)}})
    core.create_namespaced_pod(
        namespace,
        {"metadata": {"name": "greedy"}, "spec": {"restartPolicy": "Never", "containers": [container]}},
    )

    def unschedulable() -> dict[str, Any] | None:
        pod = read_pod(core, namespace, "greedy")
        for cond in pod["status"].get("conditions") or []:
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                return pod
        return None

    pod = wait_for("the scheduling verdict", unschedulable, timeout=60)
    cond = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    time.sleep(2)
    pod = read_pod(core, namespace, "greedy")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


TINY_OPERATOR = """
import kopf

@kopf.on.create("configmaps", labels={"finetune.dev/kopf-smoke": "yes"})
def seen(patch, name, **_):
    patch.metadata.annotations["finetune.dev/seen-by"] = "tiny-operator"
"""


def test_run_operator_runs_a_kopf_module_in_process_against_the_cluster(
    run_operator: Callable[..., Any],
    kube_api: client.ApiClient,
    namespace: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = f"tiny_operator_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{module}.py").write_text(TINY_OPERATOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    core = client.CoreV1Api(kube_api)
    with run_operator(module, namespace=namespace) as runner:
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": "watched", "labels": {"finetune.dev/kopf-smoke": "yes"}}}
        )
        annotations = wait_for(
            "the operator's annotation",
            lambda: (core.read_namespaced_config_map("watched", namespace).metadata.annotations or {}).get(
                "finetune.dev/seen-by"
            ),
            timeout=30,
        )
    assert annotations == "tiny-operator"
    assert runner.exception is None, runner.output


@pytest.mark.e2e
def test_a_claim_folder_outlives_its_pod_and_mount_paths_are_rewritten_in_args_and_env(
    kube_cluster: LocalCluster, kube_api: client.ApiClient, namespace: str
) -> None:
    if kube_cluster.runner is None:
        pytest.skip("the claim-as-folder contract is the local runner's")
    core = client.CoreV1Api(kube_api)
    code = (
        "import os, sys, pathlib;"
        "args = dict(zip(sys.argv[1::2], sys.argv[2::2]));"
        "out = pathlib.Path(args['--output-dir']);"
        "ckpt = out / 'ckpt.txt';"
        "previous = ckpt.read_text() if ckpt.exists() else 'none';"
        "ckpt.write_text(os.environ['STEP']);"
        "same_tmp = os.path.dirname(os.environ['HF_HOME']) == os.environ['TMPDIR'];"
        "open(args['--result-file'], 'w').write(f'{previous} {same_tmp} {args[\"--ip\"]}')"
    )

    def pod(name: str, step: str) -> dict[str, Any]:
        container = python_container(
            code,
            args=["--output-dir", "/output", "--result-file", "/dev/termination-log", "--ip", "$(POD_IP)"],
            env=[
                {"name": "STEP", "value": step},
                {"name": "HF_HOME", "value": "/tmp/hf-home"},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            ],
            volumeMounts=[
                {"name": "output", "mountPath": "/output", "subPath": "runs/a"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        )
        return {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [container],
                "volumes": [
                    {"name": "output", "persistentVolumeClaim": {"claimName": "ckpt"}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        }

    def finished(name: str) -> dict[str, Any] | None:
        status = read_pod(core, namespace, name)["status"]
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    core.create_namespaced_persistent_volume_claim(namespace, CLAIM)
    core.create_namespaced_pod(namespace, pod("first", "step-10"))
    first = wait_for("the first pod", lambda: finished("first"))
    core.create_namespaced_pod(namespace, pod("retry", "step-20"))
    retry = wait_for("the retry pod", lambda: finished("retry"))
    for status in (first, retry):
        assert status["phase"] == "Succeeded", status
    assert first["containerStatuses"][0]["state"]["terminated"]["message"] == f"none True {first['podIP']}"
    assert retry["containerStatuses"][0]["state"]["terminated"]["message"] == f"step-10 True {retry['podIP']}"
    assert first["podIP"] != retry["podIP"]


@pytest.mark.e2e
def test_a_pod_talks_to_the_api_as_its_service_account_and_rbac_applies(
    kube_cluster: LocalCluster, kube_api: client.ApiClient, namespace: str
) -> None:
    if kube_cluster.runner is None:
        pytest.skip("needs the kubernetes package inside the pod (the local runner's environment)")
    core = client.CoreV1Api(kube_api)
    code = (
        "from kubernetes import client, config;"
        "config.load_kube_config();"
        "api = client.CoreV1Api();"
        "own = api.read_namespaced_config_map('kube-root-ca.crt', 'NS').metadata.name;"
        "\ntry:\n    api.list_namespaced_secret('NS'); verdict = 'allowed'"
        "\nexcept client.ApiException as exc:\n    verdict = str(exc.status)"
        "\nopen('/dev/termination-log', 'w').write(f'{own} secrets:{verdict}')"
    ).replace("NS", namespace)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "default-reads-cm"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
        },
    )
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "client"},
            "spec": {"restartPolicy": "Never", "containers": [python_container(code)]},
        },
    )
    status = wait_for(
        "the pod to finish",
        lambda: (
            read_pod(core, namespace, "client")["status"]
            if read_pod(core, namespace, "client")["status"].get("phase") in ("Succeeded", "Failed")
            else None
        ),
    )
    assert status["phase"] == "Succeeded", status
    assert status["containerStatuses"][0]["state"]["terminated"]["message"] == "kube-root-ca.crt secrets:403"


def test_kubectl_logs_reads_a_pods_output_and_follows_it(kube_cluster: LocalCluster, namespace: str) -> None:
    """pods/log: the API server proxies it to the node (on the local runner, its `podlogs` endpoint)."""
    code = "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(1)"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "talker"},
        "spec": {"restartPolicy": "Never", "containers": [python_container(code)]},
    }
    client.CoreV1Api(kube_cluster.api_client()).create_namespaced_pod(namespace, pod)
    core = client.CoreV1Api(kube_cluster.api_client())
    wait_for(
        "the pod to run", lambda: read_pod(core, namespace, "talker")["status"].get("phase") != "Pending"
    )
    followed = kube_cluster.kubectl("logs", "-f", "talker", "-n", namespace)
    lines = [line for line in followed.stdout.splitlines() if not line.startswith("[local-runner]")]
    assert lines == ["line 0", "line 1", "line 2"], followed.stderr  # (the runner notes the ignored image)
    if kube_cluster.runner is not None:  # -f ends with the container, not before it
        assert not kube_cluster.runner.container_running(namespace, "talker", "main")
    # The pod's phase is a status write that follows the container's end, as a kubelet's does: it can land
    # a moment after the log stream closes.
    wait_for(
        "the pod to succeed", lambda: read_pod(core, namespace, "talker")["status"]["phase"] == "Succeeded"
    )
    assert kube_cluster.kubectl("logs", "talker", "-n", namespace, "--tail", "1").stdout == "line 2\n"
