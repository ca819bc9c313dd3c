"""Kueue for the local cluster: built from the Go module proxy, cached, and run against the real API server.

``finetune-localcluster install`` builds the Kueue controller manager (``sigs.k8s.io/kueue/cmd/kueue`` at
``KUEUE_VERSION``) into ``${FINETUNE_CACHE:-~/.cache/finetune-operator}/bin/kueue-v<version>/kueue-manager``
the way `binaries` builds Kubernetes (a throw-away wrapper module, an atomic rename, a VERSIONS stamp), and
copies Kueue's CRDs from that release's module (``config/components/crd/bases``) into ``crds/`` beside it.

`KueueManager` runs it without webhooks: no Mutating/ValidatingWebhookConfiguration and no conversion
webhook are installed, so the API server never calls Kueue. Only the ``batch/job`` integration is enabled
and ``manageJobsWithoutQueueName`` stays false: Kueue manages exactly the Jobs labelled
``kueue.x-k8s.io/queue-name``. The visibility API server (an aggregated API) is switched off.

Certificates: without its internal certificate management, Kueue still starts a webhook server (its cert
folder is configurable) and reads its metrics server's certificate from the fixed path
``/etc/kueue/metrics/certs`` (as a Secret volume would provide it in a pod). Both get a throw-away
self-signed certificate nobody checks; the metrics one is put there the way a kubelet would, by a mount
namespace of the manager's own (``unshare``): a tmpfs over ``/etc`` whose entries link to the real ones,
plus ``kueue/metrics/certs``. Nothing outside the process changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from .binaries import BinariesError, Builder, _stamps, cache_root, record_version
from .certs import CertificateAuthority
from .cluster import apply_crds, load_yaml_documents
from .processes import free_port, kill_group, spawn, tail

KUEUE_VERSION = "0.17.0"
KUEUE_MODULE = "sigs.k8s.io/kueue"
MANAGER = "kueue-manager"
CRDS = "crds"
CRD_SOURCE = "config/components/crd/bases"
"""Where a Kueue release keeps its plain CRDs (no kustomize patches: no conversion webhook)."""
INTEGRATIONS = ("batch/job",)
FEATURE_GATES = "VisibilityOnDemand=false"


class KueueError(RuntimeError):
    """Kueue could not be built or started; the message says why."""


def kueue_dir(version: str = KUEUE_VERSION) -> Path:
    """The versioned cache folder: the manager binary, ``crds/`` and ``VERSIONS.json``."""
    return cache_root() / "bin" / f"kueue-v{version.lstrip('v')}"


@dataclass(frozen=True)
class KueueAssets:
    """A built Kueue: its controller manager and the folder of its CRDs."""

    manager: Path
    crd_dir: Path
    version: str

    def crd_paths(self) -> list[Path]:
        return sorted(self.crd_dir.glob("*.yaml"))


def find_kueue(version: str = KUEUE_VERSION) -> KueueAssets | None:
    """The cached Kueue at `version`, or None when the binary or its CRDs are missing or another version."""
    directory = kueue_dir(version)
    stamps = _stamps(directory)
    manager, crds = directory / MANAGER, directory / CRDS
    if stamps.get(MANAGER) != version or stamps.get(CRDS) != version:
        return None
    if not (manager.is_file() and os.access(manager, os.X_OK)) or not any(crds.glob("*.yaml")):
        return None
    return KueueAssets(manager.resolve(), crds.resolve(), version)


def ensure_kueue(build: bool = True, version: str = KUEUE_VERSION) -> KueueAssets:
    """The cached Kueue, built first when missing and `build` is true."""
    found = find_kueue(version)
    if found is not None:
        return found
    if not build:
        raise BinariesError(f"Kueue v{version} is not built: run `finetune-localcluster install` (needs Go)")
    KueueBuilder(kueue_version=version).build_kueue()
    found = find_kueue(version)
    if found is None:  # pragma: no cover - build_kueue raises first
        raise BinariesError(f"Kueue v{version} build finished but {kueue_dir(version)} is incomplete")
    return found


def kueue_ldflags(version: str) -> str:
    """The version Kueue reports (its Makefile sets the same variable)."""
    return f"-s -w -X {KUEUE_MODULE}/pkg/version.GitVersion=v{version.lstrip('v')}"


@dataclass
class KueueBuilder(Builder):
    """Builds the Kueue controller manager and copies its CRDs into `kueue_dir`."""

    kueue_version: str = KUEUE_VERSION

    def __post_init__(self) -> None:
        super().__post_init__()
        self.dest = kueue_dir(self.kueue_version)

    def build_kueue(self) -> None:
        version = "v" + self.kueue_version.lstrip("v")
        started = time.monotonic()
        self.log(f"building Kueue {version} into {self.dest} (first time only; ~10-20 minutes on 2 cores)")
        with tempfile.TemporaryDirectory(prefix="finetune-gobuild-kueue-") as tmp:
            work = Path(tmp)
            info = self._module_info(KUEUE_MODULE, version, work)
            self._copy_crds(Path(info["Dir"]) / CRD_SOURCE)
            mod_dir = self._wrapper(work, {KUEUE_MODULE: version}, {}, [f"{KUEUE_MODULE}/cmd/kueue"])
            self._go(["mod", "tidy", "-e"], mod_dir, "resolving Kueue dependencies")
            self._build_one(
                mod_dir, f"{KUEUE_MODULE}/cmd/kueue", MANAGER, kueue_ldflags(version), self.kueue_version
            )
        self.log(f"Kueue build finished in {time.monotonic() - started:.0f}s")

    def _copy_crds(self, source: Path) -> None:
        """Copy the release's CRDs into ``crds/`` atomically (a new folder renamed over the old one)."""
        files = sorted(source.glob("*.yaml"))
        if not files:
            raise BinariesError(f"no CRDs in {source}: has Kueue {self.kueue_version} moved them?")
        self.dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".crds-", dir=self.dest))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the CRDs from other users of a shared cache
        for path in files:
            shutil.copyfile(path, staging / path.name)  # copyfile: the module cache is read-only
        target, old = self.dest / CRDS, self.dest / f".crds-old-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
        record_version(self.dest, CRDS, self.kueue_version)


# ---------------------------------------------------------------------------------------------- running


def manager_config(*, probe_port: int, webhook_port: int, cert_dir: Path) -> dict[str, Any]:
    """The Kueue ``Configuration`` for the local cluster: no leader election, no metrics listener, no
    internal certificate management, only the batch/Job integration, queue-name label required."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": list(INTEGRATIONS)},
    }


METRICS_CERTS = "/etc/kueue/metrics/certs"
_OWN_ETC = r"""set -e
work=$1; shift
mkdir -p "$work/etc-real"
mount --bind /etc "$work/etc-real"
mount -t tmpfs -o mode=0755 tmpfs /etc
for entry in "$work"/etc-real/* "$work"/etc-real/.[!.]*; do
  [ -e "$entry" ] || [ -L "$entry" ] || continue
  name=${entry##*/}
  [ "$name" = kueue ] || ln -s "$entry" "/etc/$name"
done
mkdir -p /etc/kueue/metrics/certs
cp "$work/metrics-certs/tls.crt" "$work/metrics-certs/tls.key" /etc/kueue/metrics/certs/
exec "$@"
"""
"""Runs in the manager's own mount namespace: /etc as before, plus Kueue's metrics certificate."""


def in_own_mount_namespace(argv: list[str], workdir: Path) -> list[str]:
    """`argv` run by `unshare` in a mount namespace of its own where ``METRICS_CERTS`` holds the files of
    ``workdir/metrics-certs`` (as root in a user namespace when we are not root)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise KueueError("running Kueue locally needs `unshare` (util-linux) for its metrics certificate")
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return [
        unshare,
        "--mount",
        "--propagation",
        "private",
        *user,
        "/bin/sh",
        "-c",
        _OWN_ETC,
        "kueue-etc",
        str(workdir),
        *argv,
    ]


def install_crds(api: client.ApiClient, assets: KueueAssets) -> list[str]:
    """Create (or replace) Kueue's CRDs and wait until they are Established."""
    return apply_crds(api, load_yaml_documents(assets.crd_paths()), timeout=120)


@dataclass
class KueueManager:
    """One Kueue controller manager process against the cluster `kubeconfig` names."""

    assets: KueueAssets
    kubeconfig: Path
    workdir: Path
    ready_timeout: float = 180.0
    probe_port: int = field(default=0, init=False)
    _proc: Any = field(default=None, init=False, repr=False)

    @property
    def log(self) -> Path:
        return self.workdir / "kueue-manager.log"

    def start(self) -> KueueManager:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cert_dir = self.workdir / "webhook-certs"
        cert_dir.mkdir(exist_ok=True)
        ca = CertificateAuthority("kueue-local-ca")
        for folder in (cert_dir, self.workdir / "metrics-certs"):
            folder.mkdir(exist_ok=True)
            pair = ca.issue("localhost", server=True, dns_names=("localhost",), ip_addresses=("127.0.0.1",))
            (folder / "tls.crt").write_bytes(pair.cert_pem)
            (folder / "tls.key").write_bytes(pair.key_pem)
        self.probe_port = free_port()
        config = manager_config(probe_port=self.probe_port, webhook_port=free_port(), cert_dir=cert_dir)
        config_path = self.workdir / "kueue-config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [
            str(self.assets.manager),
            f"--config={config_path}",
            f"--kubeconfig={self.kubeconfig}",
            f"--feature-gates={FEATURE_GATES}",
            "--zap-log-level=2",
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self._proc = spawn(in_own_mount_namespace(argv, self.workdir), self.log, env=env)
        self._wait_ready()
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready():
            if self._proc.poll() is not None:
                raise KueueError(
                    f"kueue-manager exited with code {self._proc.returncode} before it was ready; "
                    f"last log lines ({self.log}):\n{tail(self.log)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise KueueError(
                    f"kueue-manager not ready after {self.ready_timeout:.0f}s; "
                    f"last log lines:\n{tail(self.log)}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self._proc is not None:
            kill_group(self._proc)
            self._proc = None


@contextlib.contextmanager
def running_kueue(api: client.ApiClient, kubeconfig: Path, workdir: Path) -> Iterator[KueueManager]:
    """Kueue's CRDs installed and its controller manager running until the block ends (the CRDs stay)."""
    assets = ensure_kueue(build=True)
    install_crds(api, assets)
    manager = KueueManager(assets, kubeconfig, workdir).start()
    try:
        yield manager
    finally:
        manager.stop()
