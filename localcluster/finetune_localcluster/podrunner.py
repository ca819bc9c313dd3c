"""A small node agent that runs Pods as local processes, for a control plane that has no kubelet.

``PodRunner`` registers a Node (``local-runner`` by default: CPU, memory and a configurable
``nvidia.com/gpu`` capacity, a Ready condition kept fresh by heartbeats and a Lease), acts as the
scheduler for that one node (binds Pending pods without a ``nodeName`` whose requests and
``nodeSelector`` fit; the others get ``PodScheduled=False/Unschedulable`` with the reason), and runs
each bound pod:

* **The container image is ignored** (a reference no runtime could parse is ``InvalidImageName``).
  Each container's ``command`` + ``args`` run as a local process in *this* machine's environment (the
  directory of ``sys.executable`` is put first on ``PATH``, so the project's console scripts such as
  ``finetune-trainer`` resolve). A container without
  ``command`` cannot run (the image's entrypoint is unknown) and fails with ``ContainerCannotRun``.
  Security contexts, resource limits and probes are recorded by the API but not enforced.
* **Environment**: the runner's own environment (minus ``KUBECONFIG``), then ``KUBERNETES_SERVICE_*``,
  ``HOSTNAME``, ``FINETUNE_LOCAL_ROOT`` and ``FINETUNE_LOCAL_MOUNTS``, then ``envFrom`` and ``env``
  (values with ``$(VAR)`` expansion, ConfigMap/Secret key refs, downward-API field refs such as
  ``metadata.name``, ``metadata.namespace``, ``status.podIP``, ``spec.nodeName``). A pod with a
  service-account token volume also gets ``KUBECONFIG``: a kubeconfig that authenticates with that token,
  since in-cluster config reads a fixed path the runner cannot provide.
* **Volumes** become local folders: ``emptyDir`` (per pod), ``configMap``/``secret``/``downwardAPI``/
  ``projected`` (files written; a missing Secret/ConfigMap is ``CreateContainerConfigError``),
  ``persistentVolumeClaim`` (a stable folder per namespace/claim under the runner root, so a retried pod
  sees the same checkpoints; the claim must exist and be Bound, and ``podvolumes`` provisions claims of
  the runner's default StorageClass), ``hostPath`` (the path itself). Mount
  paths and the ``terminationMessagePath`` are rewritten in command, args, env values and workingDir —
  see ``podspec`` for the exact contract.
* **Networking**: each pod gets its own loopback address 127.n.x.y as ``status.podIP`` (Linux routes all
  of 127/8 to ``lo``), so two pods can listen on the same port. A pod with ``spec.subdomain`` (an Indexed
  Job's) runs with its ``spec.hostname`` and an ``/etc/hosts`` naming its peers as
  ``<hostname>.<subdomain>[.<namespace>.svc.cluster.local]`` (``podnetwork``).
* **Status**: Pending -> Running (started/ready containers) -> Succeeded/Failed with exit code, reason
  (``Completed``/``Error``/``ContainerCannotRun``) and the termination message from the file (or the log
  tail with ``FallbackToLogsOnError``). Output goes to
  ``<root>/logs/<namespace>_<pod>_<uid>/<container>.log``, which ``podlogs`` serves as the node's kubelet
  endpoint, so ``kubectl logs`` (pods/log) works, ``-f`` too.
* **Deletion**: a pod with ``deletionTimestamp`` has its process groups terminated (SIGTERM, grace, SIGKILL),
  is given a terminal phase (``Failed`` unless every container exited 0, as a kubelet does since
  Kubernetes 1.27), so a finalizer that keeps it visible no longer holds its requests on the node, and is
  then removed with grace period 0, as a kubelet confirms a deletion.

This module is the agent's loop (watch, resync, per-pod decisions, deletion); the parts it drives:
``podnode`` (the Node, heartbeat, Lease, pod IPs), ``podscheduling`` (binding), ``podvolumes`` (claims),
``podprep`` (volumes and process environment), ``podsupervisor`` (processes, restarts, phase) and
``podstatus`` (what is written), ``podnetwork`` (hostnames and peers' names).
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import urllib3
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from . import podnetwork, podspec, podstatus, podsupervisor
from .podlogs import LogServer
from .podnode import GpuPool, NodeAgent, PodIPPool, RunnerConfig, device_env
from .podprep import PodPreparer
from .podscheduling import Scheduler
from .podstatus import SMP, TERMINAL
from .podsupervisor import IMAGE_NOTE, ContainerRun, PodRun
from .podvolumes import Provisioner

__all__ = ["PodRunner", "RunnerConfig"]

log = logging.getLogger(__name__)

STATUS_RETRY_SECONDS = 1.0


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the API server is away (connection refused or reset, or it answered 5xx while
    starting), as opposed to a request it refused."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 500, 502, 503, 504) or exc.status is None
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError)


class PodRunner:
    """Registers a Node and runs the pods bound to it as local processes (see the module docstring)."""

    def __init__(self, api_client: client.ApiClient, config: RunnerConfig | None = None) -> None:
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.config = config or RunnerConfig()
        self._own_root = self.config.root is None
        self.root = Path(self.config.root or tempfile.mkdtemp(prefix="finetune-podrunner-"))
        self._pods: dict[str, PodRun] = {}
        self._config_errors: dict[str, str] = {}  # pod uid -> the CreateContainerConfigError last written
        self._config_since: dict[str, str] = {}  # pod uid -> when its config error was first seen
        self._unwritten: dict[str, float] = {}  # pod uid -> when to retry its status write (API was away)
        self._confirmed: set[str] = set()
        self._ips = PodIPPool()
        self._gpus = GpuPool(self.config.gpus)
        self._peers = podnetwork.PeerDirectory()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._kick: queue.Queue[int] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None
        self._node = NodeAgent(api_client, self.config)
        self._volumes = Provisioner(api_client, self.root)
        self._scheduler = Scheduler(self.core, self.config, on_bound=lambda: self._kick.put(1))
        server = urlparse(api_client.configuration.host)
        self._prep = PodPreparer(
            self.core,
            self.root,
            self.config.node_name,
            api_client.configuration.host,
            server.hostname or "127.0.0.1",
            str(server.port or 443),
        )
        self._logs = LogServer(
            self.log_path, self.container_running, self.root / "kubelet", self.config.node_name
        )
        self.errors: list[str] = []  # unexpected exceptions in the loop (the loop survives them)

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> PodRunner:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        log.warning("local pod runner on node %s: %s", self.config.node_name, IMAGE_NOTE)
        self._node.kubelet_port = self._logs.start()
        self._node.register()
        self._volumes.register()
        loop = threading.Thread(target=self._loop, name="podrunner-loop", daemon=True)
        watcher = threading.Thread(target=self._watch_pods, name="podrunner-watch", daemon=True)
        self._threads = [loop, watcher]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._kick.put(1)
        if self._watch is not None:
            self._watch.stop()
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads = []
        with self._lock:
            for run in list(self._pods.values()):
                podsupervisor.kill_all(run, grace=2.0)
            self._pods.clear()
        self._logs.stop()
        if self.config.delete_node_on_stop:
            self._node.delete()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def alive(self) -> bool:
        """Whether the runner is started and its loop and pod watch are still running."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def container_running(self, namespace: str, pod: str, container: str) -> bool:
        """Whether that container's process may still write to its log (started and not terminated)."""
        with self._lock:
            for run in self._pods.values():
                if (run.namespace, run.name) == (namespace, pod):
                    return any(c.name == container and not c.done for c in run.containers)
        return False

    def log_path(self, namespace: str, pod: str, container: str) -> Path | None:
        """Where a container's output went (None if the pod never ran here)."""
        for path in (self.root / "logs").glob(f"{namespace}_{pod}_*/{container}.log"):
            return path
        return None

    # -- loop --------------------------------------------------------------------------------------

    def _watch_pods(self) -> None:
        while not self._stop.is_set():
            self._watch = watch.Watch()
            try:
                for _event in self._watch.stream(
                    self.core.list_pod_for_all_namespaces, timeout_seconds=30, _request_timeout=60
                ):
                    self._kick.put(1)
                    if self._stop.is_set():
                        break
            except Exception as exc:
                if not self._stop.is_set():
                    log.debug("pod watch restarting after %s", exc)
                    time.sleep(1)

    def _loop(self) -> None:
        last_sync = 0.0
        while not self._stop.is_set():
            kicked = False
            try:
                self._kick.get(timeout=0.25)
                kicked = True
                while True:
                    self._kick.get_nowait()
            except queue.Empty:
                pass
            if self._stop.is_set():
                break
            try:
                if kicked or time.monotonic() - last_sync > self.config.resync_seconds:
                    last_sync = time.monotonic()
                    self._sync()
                self._poll()
                self._node.heartbeat_if_due()
            except Exception as exc:  # the runner must survive anything a pod or the API throws at it
                if unreachable(exc):  # an API server outage: the next resync lists everything again
                    log.warning("API server unreachable (%s); retrying", type(exc).__name__)
                else:
                    log.exception("pod runner loop error")
                    self.errors.append(repr(exc))
                time.sleep(0.5)

    def _list_pods(self) -> list[dict[str, Any]]:
        resp = self.core.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=30)
        return json.loads(resp.data)["items"]

    def _sync(self) -> None:
        pods = self._list_pods()
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""))
        mine = [p for p in pods if p["spec"].get("nodeName") == self.config.node_name]
        claims = self._volumes.list_claims()
        self._volumes.provision(claims)
        self._scheduler.schedule(pods, mine, claims)
        live = set()
        for pod in mine:
            live.add(pod["metadata"]["uid"])
            try:
                self._sync_pod(pod)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
        with self._lock:
            gone = [uid for uid in self._pods if uid not in live]
        for uid in gone:  # removed behind our back (e.g. force-deleted): stop its processes
            self._forget(uid, kill=True)

    def _poll(self) -> None:
        self._retry_unwritten()
        with self._lock:
            runs = [r for r in self._pods.values() if not r.deleting and r.phase not in TERMINAL]
        for run in runs:
            if podsupervisor.reap(run):
                try:
                    self._advance(run, {"name": run.name, "namespace": run.namespace, "uid": run.uid})
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        raise

    # -- one pod -----------------------------------------------------------------------------------
    def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid = meta["uid"]
        with self._lock:
            run = self._pods.get(uid)
        if meta.get("deletionTimestamp"):
            if run is None:
                if status.get("phase") not in TERMINAL:  # never started here, or its status write was lost
                    self._patch_status(meta, {"phase": "Failed"})
                self._confirm_deletion(meta)
            elif not run.deleting:
                run.deleting = True
                grace = float(meta.get("deletionGracePeriodSeconds") or 30)
                threading.Thread(
                    target=self._kill_and_delete,
                    args=(run, meta, min(grace, 30.0)),
                    name=f"podrunner-kill-{meta['name']}",
                    daemon=True,
                ).start()
            return
        if run is not None or status.get("phase") in TERMINAL:
            return
        if any(
            "running" in (s.get("state") or {}) or "terminated" in (s.get("state") or {})
            for s in status.get("containerStatuses") or []
        ):
            # Started by an earlier runner whose processes are gone: say so rather than pretend.
            self._patch_status(
                meta,
                {
                    "phase": "Failed",
                    "reason": "NodeRestarted",
                    "message": "the local pod runner restarted and lost this pod's process",
                },
            )
            return
        self._start_pod(pod)

    def _confirm_deletion(self, meta: dict[str, Any]) -> None:
        # Once per pod: a finalizer (e.g. the Job controller's) may keep it visible for a while after.
        if meta["uid"] in self._confirmed:
            return
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
                ),
            )
        except ApiException as exc:
            if unreachable(exc):  # not confirmed: the next resync tries again
                raise
        self._confirmed.add(meta["uid"])

    def _kill_and_delete(self, run: PodRun, meta: dict[str, Any], grace: float) -> None:
        """Stop the processes, write the terminal phase, confirm the deletion (a write the API server
        missed is made again by the next resync, which finds the pod deleting and no longer run here)."""
        try:
            podsupervisor.terminate(run, grace)
            run.phase = podsupervisor.deleted_phase(run)
            self._write_status(run, meta)
            self._confirm_deletion(meta)
        except Exception as exc:
            if not unreachable(exc):
                raise
            log.info("deletion of pod %s/%s not confirmed (%s); will retry", run.namespace, run.name, exc)
        finally:
            self._forget(run.uid, kill=True)

    def _forget(self, uid: str, kill: bool) -> None:
        with self._lock:
            run = self._pods.pop(uid, None)
        if run is None:
            return
        if kill:
            podsupervisor.kill_all(run, grace=1.0)
        self._peers.remove(run.uid)
        self._release(run)
        shutil.rmtree(run.dir, ignore_errors=True)

    def _release(self, run: PodRun) -> None:
        """Give back the pod's address and GPUs (idempotent: a run ends, then is forgotten)."""
        self._ips.release(run.ip)
        self._gpus.release(run.gpus)
        run.gpus = ()

    def _container(
        self,
        pod: dict[str, Any],
        spec: dict[str, Any],
        pod_dir: Path,
        logs: Path,
        volume_dirs: dict[str, Path],
        ip: str,
        init: bool,
        gpus: tuple[int, ...],
    ) -> ContainerRun:
        prepared = self._prep.container(pod, spec, pod_dir, volume_dirs, ip)
        declared = {e.get("name") for e in spec.get("env") or []}  # the container's own setting wins
        own = {k: v for k, v in device_env(gpus).items() if k not in declared}
        name = podnetwork.pod_name(pod, ip, pod_dir)
        return ContainerRun(
            enter=(lambda argv: podnetwork.enter(name, argv)) if name else None,
            spec=spec,
            argv=prepared.argv,
            env={**prepared.env, **own},
            cwd=prepared.cwd,
            log_path=logs / f"{spec['name']}.log",
            term_file=prepared.term_file,
            init=init,
        )

    def _start_pod(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        key = f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        pod_dir = self.root / "pods" / key
        logs = self.root / "logs" / key
        logs.mkdir(parents=True, exist_ok=True)
        bad_images = [
            e for c in spec["containers"] if (e := podspec.image_reference_error(c.get("image", "")))
        ]
        if bad_images:
            self._report_not_startable(meta, spec, bad_images[0], "InvalidImageName")
            return
        ip = self._ips.take()
        gpus = self._gpus.take(int(podspec.pod_requests(pod).get(podspec.GPU, 0)))
        try:
            volume_dirs = self._prep.volume_dirs(pod, pod_dir, ip)
            inits = [
                self._container(pod, c, pod_dir, logs, volume_dirs, ip, True, gpus)
                for c in spec.get("initContainers") or []
            ]
            mains = [
                self._container(pod, c, pod_dir, logs, volume_dirs, ip, False, gpus)
                for c in spec["containers"]
            ]
        except podspec.MissingReference as exc:
            self._ips.release(ip)
            self._gpus.release(gpus)
            shutil.rmtree(pod_dir, ignore_errors=True)
            self._report_not_startable(meta, spec, str(exc), "CreateContainerConfigError")
            return
        self._config_errors.pop(meta["uid"], None)
        self._config_since.pop(meta["uid"], None)
        run = PodRun(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            ip=ip,
            dir=pod_dir,
            restart_policy=spec.get("restartPolicy") or "Always",
            inits=inits,
            mains=mains,
            gpus=gpus,
        )
        log.info("starting pod %s/%s as local processes at %s (%s)", run.namespace, run.name, ip, IMAGE_NOTE)
        with self._lock:
            self._pods[run.uid] = run
        name = podnetwork.pod_name(pod, ip, pod_dir)
        if name is not None:
            self._peers.add(run.uid, name)
        self._advance(run, meta)

    def _report_not_startable(
        self, meta: dict[str, Any], spec: dict[str, Any], message: str, reason: str
    ) -> None:
        """Containers waiting with ``reason`` (written once per distinct problem); the pod stays bound."""
        if self._config_errors.get(meta["uid"]) == message:
            return
        self._config_errors[meta["uid"]] = message
        since = self._config_since.setdefault(meta["uid"], podstatus.now())
        self._patch_status(meta, podstatus.config_error_status(spec["containers"], message, since, reason))

    # -- status ------------------------------------------------------------------------------------

    def _advance(self, run: PodRun, meta: dict[str, Any]) -> None:
        """Let the supervisor move the pod on, then write its status if it changed."""
        podsupervisor.advance(run)
        if run.phase in TERMINAL:
            self._peers.remove(run.uid)
            self._release(run)
        self._write_status(run, meta)

    def _write_status(self, run: PodRun, meta: dict[str, Any]) -> None:
        """Write the pod's status if it changed; while the API server is unreachable the write is retried
        (``_retry_unwritten``) until it lands, so a pod that ended during an outage still ends."""
        status = podstatus.pod_status(run)
        encoded = json.dumps(status, sort_keys=True)
        if encoded == run.last_status:
            self._unwritten.pop(run.uid, None)
            return
        try:
            self._patch_status(meta, status)
        except Exception as exc:
            if not unreachable(exc):
                raise
            self._unwritten[run.uid] = time.monotonic() + STATUS_RETRY_SECONDS
            log.info("status of pod %s/%s not written (%s); will retry", run.namespace, run.name, exc)
            return
        self._unwritten.pop(run.uid, None)
        run.last_status = encoded
        if run.phase in TERMINAL:
            log.info("pod %s/%s %s", run.namespace, run.name, run.phase)

    def _retry_unwritten(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [self._pods[uid] for uid, at in self._unwritten.items() if at <= now and uid in self._pods]
            for uid in [uid for uid in self._unwritten if uid not in self._pods]:
                del self._unwritten[uid]
        for run in due:
            try:
                self._write_status(run, {"name": run.name, "namespace": run.namespace, "uid": run.uid})
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                self._unwritten.pop(run.uid, None)

    def _patch_status(self, meta: dict[str, Any], status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"], {"status": status}, _content_type=SMP
        )
