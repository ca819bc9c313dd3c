"""A real Kubernetes control plane on localhost: etcd, kube-apiserver and kube-controller-manager.

``ControlPlane`` generates a throw-away PKI, starts the three processes on free ports (each in its own
process group, with logs in its work directory), waits until the API server's ``/readyz`` answers and the
controller-manager has created the ``default`` service account, and writes an admin kubeconfig. ``stop()``
(also run by ``with``, ``atexit`` and the parent-death signal) kills every process group and removes the
work directory. A process that dies while starting raises ``ControlPlaneError`` with its log tail.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .binaries import Binaries, ensure_binaries
from .certs import CertificateAuthority, service_account_key
from .processes import free_port, kill_group, spawn, tail

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
CONTROLLERS = "*"  # all default controllers: job, garbagecollector, namespace, serviceaccount(-token), ...
WORKDIR_PREFIX = "finetune-localcluster-"
_PORT_IN_USE = ("address already in use", "bind: address")


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start or died; the message carries its log tail."""


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on 127.0.0.1.

    Attributes after ``start()``: ``server`` (https URL), ``kubeconfig`` (admin kubeconfig path),
    ``workdir`` (logs in ``workdir/logs``), ``start_seconds``.
    """

    binaries: Binaries | None = None
    workdir: Path | None = None
    controller_manager: bool = True
    keep_workdir: bool = False
    ready_timeout: float = 120.0
    extra_apiserver_args: list[str] = field(default_factory=list)

    server: str = field(init=False, default="")
    kubeconfig: Path = field(init=False, default=Path())
    start_seconds: float = field(init=False, default=0.0)
    timings: dict[str, float] = field(init=False, default_factory=dict)  # seconds per component
    _procs: list[_Proc] = field(init=False, default_factory=list)
    _own_workdir: bool = field(init=False, default=False)
    _ssl: ssl.SSLContext | None = field(init=False, default=None)

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        started = time.monotonic()
        if self.binaries is None:
            self.binaries = ensure_binaries(build=False)
        if self.workdir is None:
            sweep_stale_workdirs()
            self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            self._own_workdir = True
            (self.workdir / "owner.pid").write_text(str(os.getpid()))
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        atexit.register(self.stop)
        try:
            self._write_pki()
            self.timings["pki"] = time.monotonic() - started
            mark = time.monotonic()
            etcd_url = self._start_with_port_retries(self._start_etcd)
            self.timings["etcd"], mark = time.monotonic() - mark, time.monotonic()
            self._start_with_port_retries(lambda: self._start_apiserver(etcd_url))
            self.timings["kube-apiserver"], mark = time.monotonic() - mark, time.monotonic()
            if self.controller_manager:
                self._start_with_port_retries(self._start_controller_manager)
                self.timings["kube-controller-manager"] = time.monotonic() - mark
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.popen is not None:
                kill_group(proc.popen, grace=5.0)
        self._procs.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._own_workdir and not self.keep_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._own_workdir = False

    @contextlib.contextmanager
    def apiserver_down(self) -> Iterator[None]:
        """An outage: kube-apiserver is stopped inside the block (etcd and the controllers keep running) and
        started again on exit with the same port and flags; returns once it is ready."""
        proc = next(p for p in self._procs if p.name == "kube-apiserver")
        assert proc.popen is not None
        kill_group(proc.popen, grace=5.0)
        self._procs.remove(proc)
        try:
            yield
        finally:
            again = self._launch(proc.name, proc.argv)
            self._wait(again, lambda: self._get("/readyz")[0] == 200, "/readyz after the outage")

    # -- diagnostics -------------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "logs"

    def log_tails(self, lines: int = 30) -> str:
        """The end of every component's log, for a failing test's report."""
        parts = []
        for log in sorted(self.log_dir.glob("*.log")) if self.workdir else []:
            parts.append(f"----- {log.name} (last {lines} lines) -----\n{tail(log, lines)}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        """Raise ``ControlPlaneError`` if a component has exited."""
        for proc in self._procs:
            if proc.popen is not None and proc.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with code {proc.popen.returncode}; last log lines:\n{tail(proc.log)}"
                )

    # -- pieces ------------------------------------------------------------------------------------

    def _pki(self, name: str) -> Path:
        assert self.workdir is not None
        return self.workdir / "pki" / name

    def _write_pki(self) -> None:
        pki = self._pki("")
        pki.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority()
        ca.pair.write(pki, "ca")
        ca.issue(
            "kube-apiserver",
            server=True,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", SERVICE_IP),
        ).write(pki, "apiserver")
        ca.issue("kubernetes-admin", organization="system:masters", client=True).write(pki, "admin")
        ca.issue("system:kube-controller-manager", organization="system:masters", client=True).write(
            pki, "controller-manager"
        )
        private, public = service_account_key()
        (pki / "sa.key").write_bytes(private)
        (pki / "sa.key").chmod(0o600)
        (pki / "sa.pub").write_bytes(public)
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._ssl = ctx

    def _start_with_port_retries(self, start, attempts: int = 3):  # type: ignore[no-untyped-def]
        for attempt in range(attempts):
            try:
                return start()
            except ControlPlaneError as exc:
                if attempt + 1 < attempts and any(s in str(exc) for s in _PORT_IN_USE):
                    continue  # someone took the port between free_port() and bind(): pick new ones
                raise
        raise AssertionError("unreachable")

    def _launch(self, name: str, argv: list[str]) -> _Proc:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as fh:
            fh.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        try:
            popen = spawn(argv, log)
        except OSError as exc:
            raise ControlPlaneError(f"cannot start {name} ({argv[0]}): {exc}") from exc
        proc = _Proc(name, argv, log, popen)
        self._procs.append(proc)
        return proc

    def _wait(self, proc: _Proc, probe, what: str, timeout: float | None = None) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        while True:
            assert proc.popen is not None
            if proc.popen.poll() is not None:
                self._procs.remove(proc)
                kill_group(proc.popen, grace=0.5)
                raise ControlPlaneError(
                    f"{proc.name} exited with code {proc.popen.returncode} before {what}; "
                    f"last log lines ({proc.log}):\n{tail(proc.log)}"
                )
            if probe():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{proc.name}: timed out after {timeout or self.ready_timeout:.0f}s waiting for {what}; "
                    f"last log lines ({proc.log}):\n{tail(proc.log)}"
                )
            time.sleep(0.1)

    def _start_etcd(self) -> str:
        assert self.binaries is not None and self.workdir is not None
        client, peer = free_port(), free_port()
        data = self.workdir / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        url = f"http://127.0.0.1:{client}"
        proc = self._launch(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=default",
                f"--data-dir={data}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    return json.loads(resp.read()).get("health") == "true"
            except (OSError, ValueError):
                return False

        self._wait(proc, healthy, "etcd /health", timeout=60)
        return url

    def _get(self, path: str, timeout: float = 3) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{self.server}{path}", timeout=timeout, context=self._ssl) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def _start_apiserver(self, etcd_url: str) -> None:
        assert self.binaries is not None and self.workdir is not None
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self._pki
        proc = self._launch(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # 1.37 refuses a loopback advertise address for the kubernetes Service's endpoints; nothing
                # here routes Service IPs anyway, so leave that Service without endpoints.
                "--endpoint-reconciler-type=none",
                f"--secure-port={port}",
                f"--cert-dir={pki('')}",
                f"--tls-cert-file={pki('apiserver.crt')}",
                f"--tls-private-key-file={pki('apiserver.key')}",
                f"--client-ca-file={pki('ca.crt')}",
                f"--service-account-key-file={pki('sa.pub')}",
                f"--service-account-signing-key-file={pki('sa.key')}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                # pods/log dials the node's InternalIP (127.0.0.1, the pod runner's podlogs endpoint); its
                # Hostname (local-runner) resolves nowhere.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
                *self.extra_apiserver_args,
            ],
        )
        self._wait(proc, lambda: self._get("/readyz")[0] == 200, "/readyz")
        self._write_kubeconfig()

    def _write_kubeconfig(self) -> None:
        assert self.workdir is not None
        b64 = lambda p: base64.b64encode(self._pki(p).read_bytes()).decode()  # noqa: E731
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.server, "certificate-authority-data": b64("ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64("admin.crt"),
                        "client-key-data": b64("admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        }
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)
        cm = dict(
            config,
            users=[
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(self._pki("controller-manager.crt")),
                        "client-key": str(self._pki("controller-manager.key")),
                    },
                }
            ],
        )
        (self.workdir / "controller-manager.kubeconfig").write_text(yaml.safe_dump(cm))

    def _start_controller_manager(self) -> None:
        assert self.binaries is not None and self.workdir is not None
        kubeconfig = self.workdir / "controller-manager.kubeconfig"
        proc = self._launch(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self._pki('')}",
                "--leader-elect=false",
                f"--controllers={CONTROLLERS}",
                f"--service-account-private-key-file={self._pki('sa.key')}",
                f"--root-ca-file={self._pki('ca.crt')}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # One identity (in system:masters) for all controllers: per-controller service-account
                # credentials cost ~5 s of start-up, and the controllers' own RBAC is not under test.
                "--use-service-account-credentials=false",
                "--concurrent-job-syncs=5",
                "--concurrent-gc-syncs=10",
                "--v=1",
            ],
        )
        # Running controllers are proven by their effect: the serviceaccount controller creates
        # 'default' in the 'default' namespace.
        self._wait(
            proc,
            lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            "the default service account (controllers running)",
        )

    def readyz(self) -> tuple[int, str]:
        """(status code, body) of ``/readyz?verbose``."""
        return self._get("/readyz?verbose")

    def version(self) -> dict[str, str]:
        code, body = self._get("/version")
        if code != 200:
            raise ControlPlaneError(f"/version returned {code}: {body}")
        return json.loads(body)


def sweep_stale_workdirs() -> None:
    """Remove temp work dirs left by runs that were SIGKILLed (their owner process is gone)."""
    for owner in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*/owner.pid"):
        try:
            os.kill(int(owner.read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(owner.parent, ignore_errors=True)
        except (ValueError, OSError):
            continue


def environment_for(plane: ControlPlane) -> dict[str, str]:
    """Environment variables pointing a child process (kubectl, helm, the operator) at ``plane``."""
    env = dict(os.environ)
    env["KUBECONFIG"] = str(plane.kubeconfig)
    return env
