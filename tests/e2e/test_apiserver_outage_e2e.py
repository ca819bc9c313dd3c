"""End to end: two kube-apiserver outages of a minute each while an LRSweep's trials and a FineTuneJob train.

kube-apiserver is stopped (etcd and the controllers keep running) while trainer pods run, started again,
and stopped again. Neither the operator (in-process, one ``kopf run``) nor the local pod runner is
restarted: both must ride the outages out, as a controller and a kubelet do, so that every trial and the
fine-tune end ``Succeeded`` with their results and no Job is created twice. Restarting the session's API
server is why this module is its own file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from kubernetes import client

from finetune_operator import handlers
from finetune_operator.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GROUP, VERSION = "finetune.dev", "v1alpha1"
OPERATOR = "finetune_operator.handlers"
PLURALS = {"LRSweep": "lrsweeps", "FineTuneJob": "finetunejobs"}
OUTAGE_SECONDS = 60
GAP_SECONDS = 15
TRIAL_STEPS = 1000
FINETUNE_STEPS = 8000
"""Alone on this machine a tiny trainer makes about 30 steps/s: a trial spans tens of seconds, so the third
(created after the first outage) trains through the second; the fine-tune spans both outages however
idle the machine is."""
TERMINAL = ("Succeeded", "Failed")


@pytest.fixture(autouse=True)
def operator_settings():
    handlers.configure(Settings(metrics_port=0, health_port=0, poll_interval=1.0))


def apply(api, namespace: str, kind: str, name: str, spec: dict) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], body
    )


def status_of(api, namespace: str, kind: str, name: str) -> dict:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], name
    )
    return obj.get("status") or {}


def pod_phases(api, namespace: str, selector: str) -> list[str]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return [p.status.phase for p in pods]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def until(what: str, predicate: Callable[[], object], timeout: float, between: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        between()
        time.sleep(0.5)


def test_a_sweep_and_a_finetune_succeed_through_two_minute_long_apiserver_outages(
    kube_cluster, kube_api, namespace, crds_installed, run_operator, tiny
):
    if kube_cluster.control_plane is None or kube_cluster.runner is None:
        pytest.skip("stops the local control plane's API server")
    small = {**tiny, "resources": {**tiny["resources"], "cpu": "500m"}}  # four trainer pods fit the node
    sweep = {
        **small,
        "method": "grid",
        "trials": {"learningRates": [1e-3, 1e-2, 3e-2], "steps": TRIAL_STEPS, "parallelism": 2},
    }
    finetune = {
        **small,
        "learningRate": {"value": 3e-3},
        "optimization": {**small["optimization"], "maxSteps": FINETUNE_STEPS},
        "evaluation": {"everySteps": 1000},
        "checkpoints": {"everySteps": 1000},
    }
    pod_runner = kube_cluster.runner
    batch = client.BatchV1Api(kube_api)
    uids: dict[str, set[str]] = {}

    def record_jobs() -> None:
        try:
            for job in batch.list_namespaced_job(namespace, _request_timeout=5).items:
                uids.setdefault(job.metadata.name, set()).add(job.metadata.uid)
        except Exception:  # the API server is away: nothing to record
            pass

    windows: list[tuple[str, str]] = []

    def outage() -> None:
        start = utc_now()
        with kube_cluster.control_plane.apiserver_down():
            time.sleep(OUTAGE_SECONDS)
        windows.append((start, utc_now()))

    with run_operator(OPERATOR, namespace=namespace, timeout=300) as operator:
        apply(kube_api, namespace, "LRSweep", "grid", sweep)
        apply(kube_api, namespace, "FineTuneJob", "ft", finetune)
        until(
            "the fine-tune and a trial to run",
            lambda: (
                pod_phases(kube_api, namespace, "job-name=ft-train") == ["Running"]
                and "Running" in pod_phases(kube_api, namespace, "finetune.dev/role=trial")
            ),
            180,
            record_jobs,
        )
        errors_before = len(pod_runner.errors)
        outage()
        deadline = time.monotonic() + GAP_SECONDS
        until("the gap between the outages", lambda: time.monotonic() > deadline, 60, record_jobs)
        assert pod_phases(kube_api, namespace, "job-name=ft-train") == ["Running"], (
            "the fine-tune ended before the second outage: raise its maxSteps"
        )
        assert status_of(kube_api, namespace, "LRSweep", "grid").get("phase") not in TERMINAL
        outage()
        until(
            "both to finish after the outages",
            lambda: (
                status_of(kube_api, namespace, "LRSweep", "grid").get("phase") in TERMINAL
                and status_of(kube_api, namespace, "FineTuneJob", "ft").get("phase") in TERMINAL
            ),
            600,
            record_jobs,
        )
        record_jobs()
        assert not operator.future.done(), "the operator never stopped: the same kopf run throughout"
    assert operator.exception is None, operator.output
    assert kube_cluster.runner is pod_runner and pod_runner.alive, "the same pod runner, still running"
    assert pod_runner.errors[errors_before:] == [], "an outage is no error: the runner retries quietly"

    grid = status_of(kube_api, namespace, "LRSweep", "grid")
    assert grid["phase"] == "Succeeded", grid.get("message")
    assert [t["phase"] for t in grid["trials"]] == ["Succeeded"] * 3
    assert all(t["evalLoss"] is not None and t["steps"] == TRIAL_STEPS for t in grid["trials"]), grid[
        "trials"
    ]
    assert grid["recommendedLearningRate"] in (1e-3, 1e-2, 3e-2)
    ft = status_of(kube_api, namespace, "FineTuneJob", "ft")
    assert ft["phase"] == "Succeeded", ft.get("message")
    assert (
        ft["progress"]["step"] == FINETUNE_STEPS and ft["evalLoss"] is not None and ft["learningRate"] == 3e-3
    )
    assert "restarts" not in ft, "the trainer was never restarted"
    pods = client.CoreV1Api(kube_api).list_namespaced_pod(namespace).items
    ended = {p.metadata.name: p.status.container_statuses[0].state.terminated.finished_at for p in pods}
    during = [
        n for n, at in ended.items() if any(a <= at.strftime("%Y-%m-%dT%H:%M:%SZ") <= b for a, b in windows)
    ]
    print(f"outages {windows}; trainer pods whose process ended during one: {during}")
    assert {n: len(u) for n, u in uids.items()} == {
        "ft-train": 1,
        **{f"grid-trial-{i}": 1 for i in range(3)},
    }, "each Job created once"
