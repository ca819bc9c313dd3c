"""What the API server is told about a pod: timestamps, container statuses, conditions and phase.

Pure builders over the runner's bookkeeping (``podsupervisor.PodRun``); the runner decides when to patch.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .podsupervisor import ContainerRun, PodRun

SMP = "application/strategic-merge-patch+json"  # status patches merge, as a kubelet's do
TERMINAL = ("Succeeded", "Failed")


def now() -> str:
    """A Kubernetes timestamp (seconds)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    """A Kubernetes MicroTime (Lease renewals)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def unschedulable_status(message: str) -> dict[str, Any]:
    return {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": now(),
            }
        ],
    }


def config_error_status(
    containers: list[dict[str, Any]],
    message: str,
    start_time: str,
    reason: str = "CreateContainerConfigError",
) -> dict[str, Any]:
    """Every container waiting with ``reason``: ``CreateContainerConfigError`` (a missing ConfigMap, Secret or
    key) or ``InvalidImageName``; ``startTime`` is when the node took the pod on, as a kubelet sets it
    before creating containers."""
    waiting = {"waiting": {"reason": reason, "message": message}}
    return {
        "startTime": start_time,
        "containerStatuses": [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": waiting,
            }
            for c in containers
        ],
    }


def container_status(container: ContainerRun) -> dict[str, Any]:
    running = "running" in container.state
    status: dict[str, Any] = {
        "name": container.name,
        "image": container.spec.get("image", ""),
        "imageID": "",
        "containerID": f"local-process://{container.popen.pid}" if container.popen else None,
        "ready": running and not container.init,
        "started": running,
        "restartCount": container.restarts,
        "state": container.state,
    }
    if container.last_state:
        status["lastState"] = container.last_state
    if status["containerID"] is None:
        del status["containerID"]
    return status


def pod_status(run: PodRun) -> dict[str, Any]:
    """The full status of a pod this node runs; records condition transition times in ``run.transitions``."""
    initialized = all(c.done and c.state["terminated"]["exitCode"] == 0 for c in run.inits)
    ready = run.phase == "Running" and all("running" in c.state for c in run.mains)

    def condition(kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
        key = f"{kind}={ok}"
        if key not in run.transitions:
            run.transitions = {k: v for k, v in run.transitions.items() if not k.startswith(kind + "=")}
            run.transitions[key] = now()
        cond = {
            "type": kind,
            "status": "True" if ok else "False",
            "lastProbeTime": None,
            "lastTransitionTime": run.transitions[key],
        }
        if reason and not ok:
            cond["reason"] = reason
        return cond

    done_reason = "PodCompleted" if run.phase in TERMINAL else "ContainersNotReady"
    status: dict[str, Any] = {
        "phase": run.phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": run.ip,
        "podIPs": [{"ip": run.ip}],
        "startTime": run.start_time,
        "conditions": [
            condition("PodReadyToStartContainers", run.phase not in TERMINAL),
            condition("Initialized", initialized, "ContainersNotInitialized"),
            condition("ContainersReady", ready, done_reason),
            condition("Ready", ready, done_reason),
            condition("PodScheduled", True),
        ],
        "containerStatuses": [container_status(c) for c in run.mains],
    }
    if run.inits:
        status["initContainerStatuses"] = [container_status(c) for c in run.inits]
    if run.message:
        status["message"] = run.message
    return status
