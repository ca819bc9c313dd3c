"""The runner's Node: what it offers (capacity, labels, pod addresses), its registration, its Ready
heartbeat and its Lease in ``kube-node-lease``, as a kubelet keeps them."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from . import podspec
from .podstatus import SMP, micro_now, now


def _total_memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1])}Ki"
    except OSError:
        pass
    return "8Gi"


@dataclass
class RunnerConfig:
    """What the node looks like and where pods live."""

    node_name: str = "local-runner"
    root: Path | None = None  # default: a fresh temp dir, removed on stop()
    cpu: str = field(default_factory=lambda: str(os.cpu_count() or 1))
    memory: str = field(default_factory=_total_memory)
    gpus: int = 0
    max_pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat_seconds: float = 10.0
    resync_seconds: float = 2.0
    delete_node_on_stop: bool = True

    def capacity(self) -> dict[str, str]:
        cap = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.max_pods),
            "ephemeral-storage": "100Gi",
        }
        cap[podspec.GPU] = str(self.gpus)
        return cap

    def node_labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "finetune.dev/local-runner": "true",
            **self.labels,
        }


class PodIPPool:
    """127.n.x.y addresses for pods, handed out round-robin so a finished pod's address (still shown in its
    status) is not reused soon. Each pool takes its own ``n`` (random unless given: Linux routes all of
    127/8 to the loopback), so two local clusters on one machine (a demo beside a test run) do not hand out
    the same address and fight over a trainer's metrics port; 127.0.0.1 stays the node's."""

    def __init__(self, block: int | None = None) -> None:
        n = random.randrange(1, 255) if block is None else block
        self._all = [f"127.{n}.{a}.{b}" for a, b in itertools.product(range(256), range(1, 255))]
        self._all = [ip for ip in self._all if ip != "127.0.0.1"]
        self._next = 0
        self._used: set[str] = set()

    def take(self) -> str:
        for step in range(len(self._all)):
            ip = self._all[(self._next + step) % len(self._all)]
            if ip not in self._used:
                self._used.add(ip)
                self._next = (self._next + step + 1) % len(self._all)
                return ip
        raise RuntimeError("out of loopback pod IPs")

    def release(self, ip: str) -> None:
        self._used.discard(ip)


class GpuPool:
    """The node's GPUs by index, handed to pods as a device plugin would: a pod that requests k
    ``nvidia.com/gpu`` gets k devices no other running pod holds, and sees only those (`device_env`); the
    scheduler has already checked that k fit."""

    def __init__(self, count: int) -> None:
        self._free = list(range(count))

    def take(self, count: int) -> tuple[int, ...]:
        if count > len(self._free):
            raise RuntimeError(f"{count} GPUs requested, {len(self._free)} free")
        taken, self._free = tuple(self._free[:count]), self._free[count:]
        return taken

    def release(self, devices: tuple[int, ...]) -> None:
        self._free = sorted(set(self._free) | set(devices))


def device_env(devices: tuple[int, ...]) -> dict[str, str]:
    """What a container sees of the node's GPUs: its own devices only (none for a pod that asked for none,
    as the NVIDIA container runtime hides them), renumbered from 0 by CUDA."""
    visible = ",".join(str(d) for d in devices)
    return {"CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible or "void"}


class NodeAgent:
    """Creates (or adopts) the Node, keeps its Ready condition and Lease fresh, and deletes it."""

    def __init__(self, api_client: client.ApiClient, config: RunnerConfig) -> None:
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.config = config
        self._since = now()
        self._boot_id = str(uuid.uuid4())
        self._last_heartbeat = 0.0
        self.kubelet_port = 0
        """Where `podlogs` serves containerLogs (the API server's pods/log dials it)."""

    def register(self) -> None:
        self._since = now()
        self._boot_id = str(uuid.uuid4())
        name = self.config.node_name
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": self.config.node_labels()},
            "spec": {},
        }
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_node(name, {"metadata": {"labels": self.config.node_labels()}})
        self.core.patch_node_status(name, {"status": self.status()}, _content_type=SMP)
        self._renew_lease()
        self._last_heartbeat = time.monotonic()

    def heartbeat_if_due(self) -> None:
        if time.monotonic() - self._last_heartbeat > self.config.heartbeat_seconds:
            self._last_heartbeat = time.monotonic()
            self.core.patch_node_status(self.config.node_name, {"status": self.status()}, _content_type=SMP)
            self._renew_lease()

    def delete(self) -> None:
        with contextlib.suppress(Exception):
            self.core.delete_node(self.config.node_name, grace_period_seconds=0)

    def status(self) -> dict[str, Any]:
        stamp = now()
        conditions = [
            {
                "type": t,
                "status": "False",
                "reason": f"KubeletHas{r}",
                "message": m,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": self._since,
            }
            for t, r, m in (
                ("MemoryPressure", "SufficientMemory", "local runner"),
                ("DiskPressure", "NoDiskPressure", "local runner"),
                ("PIDPressure", "SufficientPID", "local runner"),
            )
        ]
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "local pod runner is posting ready status",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": self._since,
            }
        )
        return {
            "capacity": self.config.capacity(),
            "allocatable": self.config.capacity(),
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.config.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.config.node_name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.config.node_name)),
                "bootID": self._boot_id,
                "kernelVersion": os.uname().release,
                "osImage": "finetune local pod runner (processes, images ignored)",
                "containerRuntimeVersion": "local-process://1",
                "kubeletVersion": "v0.0.0-local-runner",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _renew_lease(self) -> None:
        coordination = client.CoordinationV1Api(self.api)
        name = self.config.node_name
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()},
        }
        try:
            coordination.patch_namespaced_lease(name, "kube-node-lease", {"spec": body["spec"]})
        except ApiException as exc:
            if exc.status != 404:
                raise
            with contextlib.suppress(ApiException):
                coordination.create_namespaced_lease("kube-node-lease", body)
