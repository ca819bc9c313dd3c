"""One handle on "a cluster to test against": the local control plane + pod runner, or ``KUBECONFIG``'s."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from .binaries import Binaries, ensure_binaries, find_binaries
from .controlplane import ControlPlane
from .podrunner import PodRunner, RunnerConfig


@dataclass
class LocalCluster:
    """What the tests and the demo get.

    ``kubeconfig``: admin kubeconfig path. ``control_plane``/``runner``: None when using an existing
    cluster from ``KUBECONFIG``. ``tools``: paths of kubectl/helm (and the server binaries when local).
    """

    kubeconfig: Path
    control_plane: ControlPlane | None = None
    runner: PodRunner | None = None
    tools: dict[str, Path] = field(default_factory=dict)
    start_seconds: float = 0.0

    @property
    def external(self) -> bool:
        return self.control_plane is None

    def api_client(self) -> client.ApiClient:
        """A new ApiClient for this cluster (not shared with other threads)."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def env(self) -> dict[str, str]:
        """Environment for a child process (kubectl, helm, the operator) pointed at this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def tool(self, name: str) -> str:
        path = self.tools.get(name) or shutil.which(name)
        if not path:
            raise FileNotFoundError(f"{name} not found: run `finetune-localcluster install`")
        return str(path)

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.tool("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            input=input,
            timeout=120,
        )

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.tool("helm"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
            env=self.env(),
        )

    def log_tails(self, lines: int = 30) -> str:
        return self.control_plane.log_tails(lines) if self.control_plane else ""

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        if self.control_plane is not None:
            self.control_plane.stop()


@contextlib.contextmanager
def local_cluster(
    *,
    runner: bool = True,
    runner_config: RunnerConfig | None = None,
    build: bool = True,
    use_kubeconfig_env: bool = True,
    workdir: Path | None = None,
    gpus: int = 0,
) -> Iterator[LocalCluster]:
    """Start etcd + kube-apiserver + kube-controller-manager (+ the pod runner), yield, tear down.

    With ``use_kubeconfig_env`` and ``KUBECONFIG`` set, nothing is started: the existing cluster is used and
    no runner is registered (a real cluster has kubelets). ``gpus``: the runner node's ``nvidia.com/gpu``
    capacity when ``runner_config`` is not given.
    """
    if use_kubeconfig_env and os.environ.get("KUBECONFIG"):
        found, _missing = find_binaries()
        yield LocalCluster(kubeconfig=Path(os.environ["KUBECONFIG"]).expanduser(), tools=found)
        return
    binaries: Binaries = ensure_binaries(build=build)
    started = time.monotonic()
    cluster = LocalCluster(kubeconfig=Path(), tools=binaries.as_dict())
    try:
        plane = ControlPlane(binaries=binaries, workdir=workdir)
        cluster.control_plane = plane
        plane.start()
        cluster.kubeconfig = plane.kubeconfig
        if runner:
            cfg = runner_config or RunnerConfig(root=(plane.workdir or Path()) / "runner", gpus=gpus)
            cluster.runner = PodRunner(cluster.api_client(), cfg).start()
        cluster.start_seconds = time.monotonic() - started
        yield cluster
    finally:
        cluster.stop()


def apply_crds(api: client.ApiClient, documents: Sequence[dict[str, Any]], timeout: float = 60) -> list[str]:
    """Create or replace each CustomResourceDefinition and wait until all are Established; returns names."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for doc in documents:
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        name = doc["metadata"]["name"]
        try:
            ext.create_custom_resource_definition(doc)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(name)
            body = dict(
                doc, metadata=dict(doc["metadata"], resourceVersion=current.metadata.resource_version)
            )
            ext.replace_custom_resource_definition(name, body)
        names.append(name)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = ext.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s: {conditions}")
            time.sleep(0.1)
    return names


def load_yaml_documents(paths: Sequence[Path]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs
