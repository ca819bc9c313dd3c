"""GPUs on the local pod runner, handed out as a device plugin would (on the real API server).

The runner node advertises ``nvidia.com/gpu`` (``FINETUNE_LOCAL_GPUS``, 1 in the test session); a pod that
requests k of them runs with ``CUDA_VISIBLE_DEVICES`` naming k devices no other running pod holds, and a
pod that requests none sees none. No GPU is needed: the environment is what is checked.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from test_control_plane import python_container, read_pod, wait_for

pytestmark = pytest.mark.integration

SHOW = (
    "import os; open('/dev/termination-log', 'w').write("
    "os.environ.get('CUDA_VISIBLE_DEVICES', 'unset') + '|'"
    " + os.environ.get('NVIDIA_VISIBLE_DEVICES', 'unset'))"
)


def pod(name: str, gpus: int) -> dict[str, Any]:
    amounts = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [python_container(SHOW, resources={"requests": amounts, "limits": amounts})],
        },
    }


def seen(core: client.CoreV1Api, namespace: str, name: str) -> str:
    def ended() -> str | None:
        status = read_pod(core, namespace, name)["status"]
        if status.get("phase") != "Succeeded":
            return None
        return status["containerStatuses"][0]["state"]["terminated"].get("message")

    return str(wait_for(f"pod {name} to succeed", ended, timeout=90))


def test_a_gpu_pod_sees_its_device_and_a_cpu_pod_sees_none(kube_cluster, kube_api, namespace):
    if kube_cluster.runner is None or kube_cluster.runner.config.gpus < 1:
        pytest.skip("checks the local pod runner's GPU hand-out (needs FINETUNE_LOCAL_GPUS >= 1)")
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(namespace, pod("cpu-only", 0))
    core.create_namespaced_pod(namespace, pod("gpu-a", 1))
    assert seen(core, namespace, "cpu-only") == "|void"
    assert seen(core, namespace, "gpu-a") == "0|0"
    # the device came back when gpu-a ended: the next GPU pod gets it
    core.create_namespaced_pod(namespace, pod("gpu-b", 1))
    assert seen(core, namespace, "gpu-b") == "0|0"
