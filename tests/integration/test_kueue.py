"""Kueue on the real API server: the real Kueue controller (built by `finetune-localcluster install`) with the
batch/Job integration, and the operator's queue-name label, conditions and pause/resume against it.

No trainer runs here: the gang is a plain Indexed Job whose pods exit at once, and the operator's Jobs are
either held by Kueue or paused. (tests/e2e/test_kueue_e2e.py runs two fine-tunes through one quota.)
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from queues import local_queue, queued_job, set_cpu_quota, wait, workloads
from resources import create_finetunejob as _create

from finetune_operator import handlers
from finetune_operator.queueing import QUEUE_LABEL, owning_job
from finetune_operator.settings import Settings

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
SPEC: dict[str, Any] = {
    "model": {"name": "/models/tiny"},
    "dataset": {"files": ["/data/train.jsonl"]},
    "learningRate": {"value": 1e-4},
    "resources": {"gpus": 0, "cpu": "100m", "memory": "64Mi"},
    "backoffLimit": 0,
}


@pytest.fixture(autouse=True)
def operator_settings() -> None:
    handlers.configure(Settings(metrics_port=0, health_port=0, poll_interval=1.0))


def _workload_of(api: client.ApiClient, namespace: str, job: str) -> dict[str, Any] | None:
    return next((w for w in workloads(api, namespace) if owning_job(w) == job), None)


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def _pods(api: client.ApiClient, namespace: str, job: str) -> list[Any]:
    selector = f"batch.kubernetes.io/job-name={job}"
    return client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items


def test_a_gang_is_admitted_whole_or_not_at_all(kube_api, namespace, kueue):
    batch = client.BatchV1Api(kube_api)
    with local_queue(kube_api, namespace, "one-pod", cpu="100m", memory="1Gi") as queue:
        job = queued_job("gang", queue, pods=2, cpu="100m", command=["python3", "-c", "pass"])
        batch.create_namespaced_job(namespace, job)

        def refused() -> dict[str, Any] | None:
            reserved = _condition(_workload_of(kube_api, namespace, "gang"), "QuotaReserved")
            return reserved if reserved and reserved["status"] == "False" and reserved["message"] else None

        verdict = wait(refused, 90, "Kueue's verdict on the 2-pod gang")
        assert "cpu" in verdict["message"], verdict
        time.sleep(3)  # give a wrong admission time to show
        assert batch.read_namespaced_job("gang", namespace).spec.suspend is True
        assert _pods(kube_api, namespace, "gang") == []  # not one pod of the gang runs

        # Quota for both pods: Kueue admits the Workload whole and the two pods run to completion.
        set_cpu_quota(kube_api, namespace, "200m")
        admitted = _condition(
            wait(
                lambda: (
                    (w := _workload_of(kube_api, namespace, "gang"))
                    and (_condition(w, "Admitted") or {}).get("status") == "True"
                    and w
                ),
                90,
                "the gang admitted",
            ),
            "Admitted",
        )
        assert admitted is not None

        def complete() -> bool:
            status = batch.read_namespaced_job("gang", namespace).status
            return bool(status.succeeded == 2)

        wait(complete, 120, "both pods of the gang to succeed")
        assert len(_pods(kube_api, namespace, "gang")) == 2


def test_a_two_node_finetune_is_admitted_whole_or_not_at_all(
    kube_api, namespace, crds_installed, kueue, run_operator
):
    """The operator's own gang: a `resources.nodes: 2` FineTuneJob renders an Indexed Job of two pods that
    Kueue sees as one Workload. With quota for one pod, no pod of it is created and the resource says
    `Queued` with Kueue's reason; with quota for two, Kueue admits both pods at once (`Admitted`)."""
    spec = {
        **SPEC,
        "queueName": "gang",
        "resources": {**SPEC["resources"], "nodes": 2},
        "output": {"persistentVolumeClaim": "shared"},
    }
    batch = client.BatchV1Api(kube_api)
    with (
        local_queue(kube_api, namespace, "gang", cpu="100m", memory="1Gi"),
        run_operator(namespace=namespace),
    ):
        _create(kube_api, namespace, "pair", spec)
        job = wait(
            lambda: _workload_of(kube_api, namespace, "pair-train") and "pair-train", 90, "its Workload"
        )
        assert batch.read_namespaced_job(job, namespace).spec.completion_mode == "Indexed"

        def queued() -> dict[str, Any] | None:
            c = _condition({"status": _status(kube_api, namespace, "pair")}, "Queued")
            return c if c and c["status"] == "True" and "cpu" in c["message"] else None

        cond = wait(queued, 90, "the 2-node run shown Queued for lack of cpu quota")
        assert cond["message"], cond
        time.sleep(3)  # give a partial admission time to show
        assert batch.read_namespaced_job(job, namespace).spec.suspend is True
        assert _pods(kube_api, namespace, job) == []  # neither pod of the gang was created

        set_cpu_quota(kube_api, namespace, "200m")

        def admitted() -> dict[str, Any] | None:
            c = _condition({"status": _status(kube_api, namespace, "pair")}, "Admitted")
            return c if c and c["status"] == "True" else None

        wait(admitted, 90, "Kueue to admit the 2-node run")
        wait(lambda: len(_pods(kube_api, namespace, job)) == 2, 60, "both pods of the admitted gang")


def _status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj.get("status") or {}


def _patch_spec(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
    )


def test_admission_refuses_suspend_false_with_a_queue_and_spares_only_suspend(
    kube_api, namespace, crds_installed
):
    with pytest.raises(client.ApiException) as refused:
        _create(kube_api, namespace, "contradiction", {**SPEC, "queueName": "q", "suspend": False})
    assert refused.value.status == 422 and "suspend: false contradicts" in refused.value.body

    _create(kube_api, namespace, "mutable", {**SPEC, "suspend": True})
    _patch_spec(kube_api, namespace, "mutable", {"suspend": False})  # pause and resume: allowed
    with pytest.raises(client.ApiException) as immutable:
        _patch_spec(kube_api, namespace, "mutable", {"queueName": "later"})  # a field added: refused
    assert immutable.value.status == 422 and "immutable once created, except suspend" in immutable.value.body


def test_a_queue_name_without_a_local_queue_is_queue_unavailable(
    kube_api, namespace, crds_installed, kueue, run_operator
):
    with run_operator(namespace=namespace):
        _create(kube_api, namespace, "lost", {**SPEC, "queueName": "nowhere"})

        def unavailable() -> dict[str, Any] | None:
            c = _condition({"status": _status(kube_api, namespace, "lost")}, "QueueUnavailable")
            return c if c and c["status"] == "True" else None

        cond = wait(unavailable, 90, "QueueUnavailable")
        assert "no LocalQueue nowhere" in cond["message"], cond
        status = _status(kube_api, namespace, "lost")
        assert _condition({"status": status}, "Stalled")["status"] == "True"
        job = client.BatchV1Api(kube_api).read_namespaced_job("lost-train", namespace)
        assert job.metadata.labels[QUEUE_LABEL] == "nowhere" and job.spec.suspend is True


def test_pausing_a_queued_run_deactivates_its_workload_and_resuming_lets_kueue_admit_it(
    kube_api, namespace, crds_installed, kueue, run_operator
):
    batch = client.BatchV1Api(kube_api)
    with (
        local_queue(kube_api, namespace, "team", cpu="1", memory="1Gi") as queue,
        run_operator(namespace=namespace),
    ):
        _create(kube_api, namespace, "held", {**SPEC, "queueName": queue, "suspend": True})

        def paused() -> bool:
            w = _workload_of(kube_api, namespace, "held-train")
            job = batch.read_namespaced_job("held-train", namespace) if w else None
            return bool(w and w["spec"].get("active") is False and job and job.spec.suspend)

        # Kueue may admit the Job before the operator's pause lands (the two race at creation): the pause
        # then evicts it, and its pod is deleted.
        wait(paused, 90, "the paused run's Workload deactivated and its Job suspended")

        def held() -> dict[str, Any] | None:
            status = {"status": _status(kube_api, namespace, "held")}
            suspended, admitted = _condition(status, "Suspended"), _condition(status, "Admitted")
            ok = suspended and suspended["status"] == "True" and (admitted or {}).get("status") != "True"
            return status if ok else None

        wait(held, 60, "the run shown Suspended and not Admitted")
        wait(lambda: not _pods(kube_api, namespace, "held-train"), 60, "the paused run's pod deleted")

        _patch_spec(kube_api, namespace, "held", {"suspend": None})  # resume

        def admitted() -> dict[str, Any] | None:
            c = _condition({"status": _status(kube_api, namespace, "held")}, "Admitted")
            return c if c and c["status"] == "True" else None

        wait(admitted, 90, "Kueue to admit the resumed run")
        assert _workload_of(kube_api, namespace, "held-train")["spec"].get("active", True) is True
        suspended = _condition({"status": _status(kube_api, namespace, "held")}, "Suspended")
        assert suspended is not None and suspended["status"] == "False"


def test_resuming_an_unqueued_run_unsuspends_its_job_and_pausing_it_again_suspends_it(
    kube_api, namespace, crds_installed, run_operator
):
    batch = client.BatchV1Api(kube_api)
    # More GPUs than any node has keep the resumed pod unschedulable (and the run from ending): what is
    # under test is the Job's suspend flag, not the trainer.
    spec = {**SPEC, "suspend": True, "resources": {**SPEC["resources"], "gpus": 64}}
    with run_operator(namespace=namespace):
        _create(kube_api, namespace, "pausable", spec)

        def job_suspend() -> bool | None:
            try:
                return bool(batch.read_namespaced_job("pausable-train", namespace).spec.suspend)
            except client.ApiException as e:
                if e.status == 404:
                    return None
                raise

        wait(lambda: job_suspend() is True, 60, "the paused run's Job created suspended")
        assert QUEUE_LABEL not in batch.read_namespaced_job("pausable-train", namespace).metadata.labels
        _patch_spec(kube_api, namespace, "pausable", {"suspend": None})
        wait(lambda: job_suspend() is False, 60, "the resumed run's Job unsuspended by the operator")
        _patch_spec(kube_api, namespace, "pausable", {"suspend": True})
        wait(lambda: job_suspend() is True, 60, "the paused-again run's Job suspended")

        def shown_suspended() -> bool:
            cond = _condition({"status": _status(kube_api, namespace, "pausable")}, "Suspended")
            return bool(cond and cond["status"] == "True")

        wait(shown_suspended, 60, "the run's Suspended condition")
