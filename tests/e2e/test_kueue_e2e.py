"""End to end through Kueue: a ClusterQueue with quota for one trainer admits one FineTuneJob and keeps the
second Queued (Kueue's reason in its condition) until the first finishes; then it is Admitted and finishes
too. Real Kueue controller, real API server, trainer pods really running (tiny model, CPU)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from queues import local_queue

from finetune_operator import handlers
from finetune_operator.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


@pytest.fixture(autouse=True)
def operator_settings() -> None:
    handlers.configure(Settings(metrics_port=0, health_port=0, poll_interval=1.0))


def _status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj.get("status") or {}


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_quota_for_one_trainer_runs_two_fine_tunes_one_after_the_other(
    kube_api, namespace, crds_installed, kueue, run_operator, tiny
):
    spec = {
        **tiny,
        "learningRate": {"value": 1e-3},
        "optimization": {**tiny["optimization"], "maxSteps": 4},
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
    }
    objects = client.CustomObjectsApi(kube_api)
    with (
        local_queue(kube_api, namespace, "one-trainer", cpu="1", memory="2Gi") as queue,
        run_operator(namespace=namespace),
    ):
        for name in ("first", "second"):
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "FineTuneJob",
                "metadata": {"name": name},
                "spec": {**spec, "queueName": queue},
            }
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            time.sleep(1.0)  # `first` reaches the queue first

        seen: dict[str, list[tuple[str, str, str]]] = {"first": [], "second": []}
        waits: set[str] = set()  # Kueue's words on the second while it waited
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            statuses = {n: _status(kube_api, namespace, n) for n in seen}
            for n, s in statuses.items():
                queued, admitted = _condition(s, "Queued"), _condition(s, "Admitted")
                row = (s.get("phase", ""), queued.get("status", ""), admitted.get("status", ""))
                if not seen[n] or seen[n][-1] != row:
                    seen[n].append(row)
            if statuses["first"].get("phase") == "Running":
                # one trainer at a time: while the first runs, the second waits in the queue
                second = statuses["second"]
                assert second.get("phase") in ("Pending", None), seen
                if _condition(second, "Queued").get("status") == "True":
                    waits.add(_condition(second, "Queued")["message"])
            if all(s.get("phase") in ("Succeeded", "Failed") for s in statuses.values()):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the two fine-tunes did not finish: {seen}")

        first, second = (_status(kube_api, namespace, n) for n in ("first", "second"))
        assert first["phase"] == "Succeeded" and second["phase"] == "Succeeded", (first, second)
        # the second was Queued, in Kueue's words (the quota the first used), before it was Admitted
        assert any(q == "True" for _, q, _ in seen["second"]), seen
        assert any("quota" in w for w in waits), waits
        assert _condition(second, "Admitted")["status"] == "True"
        assert _condition(first, "Admitted")["status"] == "True"
