"""pytest fixtures for tests against a real API server (load with ``pytest_plugins = [__name__]``).

Fixtures:

* ``kube_cluster`` (session) -> ``LocalCluster``: the local control plane + pod runner, started once; or the
  cluster ``KUBECONFIG`` names (then no runner). Node capacity: ``FINETUNE_LOCAL_GPUS`` GPUs (default 1).
* ``kube_api`` (session) -> ``kubernetes.client.ApiClient`` for it.
* ``namespace`` (function) -> name of a fresh namespace labelled
  ``pod-security.kubernetes.io/enforce: restricted``, with its ``default`` service account present;
  deleted afterwards.
* ``crds_installed`` (session) -> names of the CRDs applied from ``<repo>/crds/*.yaml`` (all Established).
* ``run_operator`` (function) -> ``run_operator(module=OPERATOR_MODULE, namespace=None, extra_args=())``:
  a context manager running that kopf module (default: the operator's handlers) in-process with
  ``kopf.testing.KopfRunner`` against ``kube_cluster``; it yields the runner. Check ``runner.exception``/
  ``runner.output`` only after the ``with`` block: ``KopfRunner.exception`` blocks until the operator stops.
* ``kueue`` (session) -> the running ``KueueManager``: Kueue's CRDs installed and its controller manager
  (built by ``finetune-localcluster install``) running against ``kube_cluster`` without webhooks, managing
  Jobs labelled ``kueue.x-k8s.io/queue-name``. On an external cluster: None when Kueue's Workload CRD is
  there (Kueue is assumed to run), else the test is skipped. A failing test that used it gets the manager's
  log tail in its report.
* ``local_runner_config`` (session) -> the pod runner's ``RunnerConfig`` (skips on external clusters).

When a test that used ``kube_cluster`` fails, the control plane's log tails are added to its report.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from .cluster import LocalCluster, apply_crds, load_yaml_documents, local_cluster
from .kueue import KueueManager, running_kueue
from .podrunner import RunnerConfig
from .processes import tail, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
# The kopf handler module `finetune-operator run` registers (a name, not an import: this package is generic).
OPERATOR_MODULE = "finetune_operator.handlers"
CRD_DIR = Path(os.environ.get("FINETUNE_CRD_DIR", REPO_ROOT / "crds"))

_CLUSTER: LocalCluster | None = None
_KUEUE: KueueManager | None = None


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[LocalCluster]:
    global _CLUSTER
    gpus = int(os.environ.get("FINETUNE_LOCAL_GPUS", "1"))
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(local_cluster(runner=True, gpus=gpus))
        _CLUSTER = cluster
        if cluster.control_plane is not None:
            plane = cluster.control_plane
            parts = ", ".join(f"{name} {secs:.1f}s" for name, secs in plane.timings.items())
            print(
                f"\n[localcluster] control plane up in {plane.start_seconds:.1f}s ({parts}); "
                f"kubeconfig {cluster.kubeconfig}"
            )
        try:
            yield cluster
        finally:
            _CLUSTER = None


@pytest.fixture(scope="session")
def kube_api(kube_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    api = kube_cluster.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(kube_api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    core = client.CoreV1Api(kube_api)
    base = request.node.name.lower().replace("_", "-")
    name = "".join(c for c in base if c.isalnum() or c == "-")[:40].strip("-") + "-" + uuid.uuid4().hex[:6]
    core.create_namespace(
        {
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "finetune.dev/test": "true",
                },
            }
        }
    )

    def default_sa() -> bool:
        # Pods need both (ServiceAccount admission; the kube-api-access volume's kube-root-ca.crt).
        try:
            core.read_namespaced_service_account("default", name)
            core.read_namespaced_config_map("kube-root-ca.crt", name)
            return True
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise

    wait_for(default_sa, 60, interval=0.1, what=f"service account default and kube-root-ca.crt in {name}")
    try:
        yield name
    finally:
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def crds_installed(kube_api: client.ApiClient) -> list[str]:
    paths = sorted(CRD_DIR.glob("*.yaml")) + sorted(CRD_DIR.glob("*.yml"))
    return apply_crds(kube_api, load_yaml_documents(paths))


@contextlib.contextmanager
def kubeconfig_env(path: Path) -> Iterator[None]:
    """Point ``KUBECONFIG`` (and the kubernetes client's default, read once at import) at ``path``."""
    from kubernetes.config import kube_config

    old_env, old_default = os.environ.get("KUBECONFIG"), kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    os.environ["KUBECONFIG"] = str(path)
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    try:
        yield
    finally:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = old_default
        if old_env is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old_env


@contextlib.contextmanager
def operator_in_process(
    cluster: LocalCluster,
    module: str = OPERATOR_MODULE,
    namespace: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60,
) -> Iterator[Any]:
    """Run ``kopf run -m module`` in a thread (``kopf.testing.KopfRunner``) against ``cluster``."""
    from kopf.testing import KopfRunner

    scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
    args = ["run", "--standalone", "-m", module, *scope, *extra_args]
    with kubeconfig_env(cluster.kubeconfig), KopfRunner(args, timeout=timeout) as runner:
        yield runner


@pytest.fixture
def run_operator(kube_cluster: LocalCluster) -> Callable[..., contextlib.AbstractContextManager[Any]]:
    def start(
        module: str = OPERATOR_MODULE,
        namespace: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 60,
    ) -> contextlib.AbstractContextManager[Any]:
        return operator_in_process(kube_cluster, module, namespace, extra_args, timeout)

    return start


@pytest.fixture(scope="session")
def kueue(
    kube_cluster: LocalCluster, kube_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KueueManager | None]:
    if kube_cluster.external:
        try:
            client.ApiextensionsV1Api(kube_api).read_custom_resource_definition("workloads.kueue.x-k8s.io")
        except client.ApiException as exc:
            if exc.status == 404:
                pytest.skip("Kueue is not installed in the external cluster")
            raise
        yield None
        return
    global _KUEUE
    with running_kueue(kube_api, kube_cluster.kubeconfig, tmp_path_factory.mktemp("kueue")) as manager:
        _KUEUE = manager
        try:
            yield manager
        finally:
            _KUEUE = None


@pytest.fixture(scope="session")
def local_runner_config(kube_cluster: LocalCluster) -> RunnerConfig:
    """The pod runner's node settings (for tests that reason about capacity); skips on external clusters."""
    if kube_cluster.runner is None:
        pytest.skip("no local pod runner (using an external cluster)")
    return kube_cluster.runner.config


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and _CLUSTER is not None and "kube_cluster" in getattr(item, "fixturenames", ()):
        tails = _CLUSTER.log_tails(40)
        if tails:
            report.sections.append(("local control plane logs", tails))
        if _CLUSTER.runner is not None and _CLUSTER.runner.errors:
            report.sections.append(("pod runner errors", "\n".join(_CLUSTER.runner.errors[-20:])))
        if _KUEUE is not None and "kueue" in getattr(item, "fixturenames", ()):
            report.sections.append(("kueue-manager log", tail(_KUEUE.log, 40)))
