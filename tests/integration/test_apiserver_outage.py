"""The local pod runner rides out a kube-apiserver outage the way a kubelet does.

kube-apiserver is stopped while pods run (etcd and the controllers keep running) and started again; the
processes end during the outage. The runner keeps retrying the status writes it could not make and lists
the pods again once the API server is back, so each pod ends Succeeded or Failed with its exit code and
termination message. Restarting the session's API server is why this module is its own file.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from test_control_plane import python_container, read_pod, wait_for

pytestmark = pytest.mark.integration


def pod(name: str, exit_code: int) -> dict[str, Any]:
    code = (
        "import sys, time; time.sleep(4);"
        f"open('/dev/termination-log', 'w').write('{name} done');"
        f"sys.exit({exit_code})"
    )
    return {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [python_container(code)]},
    }


def test_pods_that_end_during_an_outage_end_succeeded_or_failed_after_it(kube_cluster, kube_api, namespace):
    if kube_cluster.runner is None or kube_cluster.control_plane is None:
        pytest.skip("stops the local control plane's API server")
    core = client.CoreV1Api(kube_api)
    for name, code in (("ok", 0), ("bad", 3)):
        core.create_namespaced_pod(namespace, pod(name, code))
    for name in ("ok", "bad"):
        wait_for(
            f"{name} running", lambda n=name: read_pod(core, namespace, n)["status"].get("phase") == "Running"
        )
    with kube_cluster.control_plane.apiserver_down():
        time.sleep(8)  # both processes exit while nobody can hear it
    finished = {
        name: wait_for(
            f"{name} to finish after the outage",
            lambda n=name: (
                (s := read_pod(core, namespace, n)["status"]).get("phase") in ("Succeeded", "Failed") and s
            ),
            timeout=60,
        )
        for name in ("ok", "bad")
    }
    ok, bad = (finished[n]["containerStatuses"][0]["state"]["terminated"] for n in ("ok", "bad"))
    assert finished["ok"]["phase"] == "Succeeded" and ok["exitCode"] == 0 and ok["message"] == "ok done"
    assert finished["bad"]["phase"] == "Failed" and bad["exitCode"] == 3 and bad["message"] == "bad done"
    # The runner is healthy after the outage: a new pod still runs.
    core.create_namespaced_pod(namespace, pod("after", 0))
    wait_for(
        "a pod after the outage",
        lambda: read_pod(core, namespace, "after")["status"].get("phase") == "Succeeded",
    )
