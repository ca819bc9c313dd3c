"""A small node agent that runs Pods as local processes, for a control plane that has no kubelet.

``PodRunner`` registers a Node (``local-runner`` by default: CPU, memory and a configurable
``nvidia.com/gpu`` capacity, a Ready condition kept fresh by heartbeats and a Lease), acts as the
scheduler for that one node (binds Pending pods without a ``nodeName`` whose requests and
``nodeSelector`` fit; the others get ``PodScheduled=False/Unschedulable`` with the reason), and runs
each bound pod:

* **The container image is ignored.** Each container's ``command`` + ``args`` run as a local process
  in *this* machine's environment (the directory of ``sys.executable`` is put first on ``PATH``, so
  the project's console scripts such as ``finetune-trainer`` resolve). A container without
  ``command`` cannot run (the image's entrypoint is unknown) and fails with ``ContainerCannotRun``.
  Security contexts, resource limits and probes are recorded by the API but not enforced.
* **Environment**: the runner's own environment (minus ``KUBECONFIG``), then ``KUBERNETES_SERVICE_*``,
  ``HOSTNAME``, ``FINETUNE_LOCAL_ROOT`` and ``FINETUNE_LOCAL_MOUNTS``, then ``envFrom`` and ``env``
  (values with ``$(VAR)`` expansion, ConfigMap/Secret key refs, downward-API field refs such as
  ``metadata.name``, ``metadata.namespace``, ``status.podIP``, ``spec.nodeName``). A pod with a
  service-account token volume also gets ``KUBECONFIG``: a kubeconfig that authenticates with that token,
  since in-cluster config reads a fixed path the runner cannot provide.
* **Volumes** become local folders: ``emptyDir`` (per pod), ``configMap``/``secret``/``downwardAPI``/
  ``projected`` (files written), ``persistentVolumeClaim`` (a stable folder per namespace/claim under
  the runner root, so a retried pod sees the same checkpoints), ``hostPath`` (the path itself). Mount
  paths and the ``terminationMessagePath`` are rewritten in command, args, env values and workingDir —
  see ``podspec`` for the exact contract.
* **Networking**: each pod gets its own loopback address 127.0.x.y as ``status.podIP`` (Linux routes all
  of 127/8 to ``lo``), so two pods can listen on the same port.
* **Status**: Pending -> Running (started/ready containers) -> Succeeded/Failed with exit code, reason
  (``Completed``/``Error``/``ContainerCannotRun``) and the termination message from the file (or the log
  tail with ``FallbackToLogsOnError``). Output goes to
  ``<root>/logs/<namespace>_<pod>_<uid>/<container>.log``; ``kubectl logs`` does not work (no kubelet
  endpoint).
* **Deletion**: a pod with ``deletionTimestamp`` has its process groups terminated (SIGTERM, grace, SIGKILL)
  and is then removed with grace period 0, as a kubelet confirms a deletion.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from . import podspec
from .podprep import PodPreparer
from .processes import kill_group, spawn

log = logging.getLogger(__name__)

SMP = "application/strategic-merge-patch+json"
TERMINAL = ("Succeeded", "Failed")
IMAGE_NOTE = "image ignored: the local runner runs the container's command in the local Python environment"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


@dataclass
class _Container:
    spec: dict[str, Any]
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    term_file: Path
    init: bool = False
    popen: subprocess.Popen[bytes] | None = None
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    restart_at: float = 0.0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def done(self) -> bool:
        return "terminated" in self.state


@dataclass
class _Pod:
    uid: str
    namespace: str
    name: str
    ip: str
    dir: Path
    restart_policy: str
    inits: list[_Container]
    mains: list[_Container]
    start_time: str = field(default_factory=now)
    transitions: dict[str, str] = field(default_factory=dict)
    phase: str = "Pending"
    message: str = ""
    deleting: bool = False
    last_status: str = ""


class _IPPool:
    """127.0.x.y addresses for pods (127.0.0.1 stays the node's), handed out round-robin so a finished
    pod's address (still shown in its status) is not reused soon."""

    def __init__(self) -> None:
        self._all = [f"127.0.{a}.{b}" for a, b in itertools.product(range(256), range(1, 255))][1:]
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


class PodRunner:
    """Registers a Node and runs the pods bound to it as local processes (see the module docstring)."""

    def __init__(self, api_client: client.ApiClient, config: RunnerConfig | None = None) -> None:
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.config = config or RunnerConfig()
        self._own_root = self.config.root is None
        self.root = Path(self.config.root or tempfile.mkdtemp(prefix="finetune-podrunner-"))
        self._pods: dict[str, _Pod] = {}
        self._unschedulable: dict[str, str] = {}
        self._confirmed: set[str] = set()
        self._ips = _IPPool()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._kick: queue.Queue[int] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None
        server = urlparse(api_client.configuration.host)
        self._service_host = server.hostname or "127.0.0.1"
        self._service_port = str(server.port or 443)
        self._prep = PodPreparer(
            self.core,
            self.root,
            self.config.node_name,
            api_client.configuration.host,
            self._service_host,
            self._service_port,
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
        self._register_node()
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
            for pod in list(self._pods.values()):
                for container in pod.inits + pod.mains:
                    if container.popen is not None:
                        kill_group(container.popen, grace=2.0)
            self._pods.clear()
        if self.config.delete_node_on_stop:
            with contextlib.suppress(Exception):
                self.core.delete_node(self.config.node_name, grace_period_seconds=0)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_path(self, namespace: str, pod: str, container: str) -> Path | None:
        """Where a container's output went (None if the pod never ran here)."""
        for path in (self.root / "logs").glob(f"{namespace}_{pod}_*/{container}.log"):
            return path
        return None

    # -- node --------------------------------------------------------------------------------------

    def _node_status(self) -> dict[str, Any]:
        stamp = now()
        conditions = [
            {
                "type": t,
                "status": "False",
                "reason": f"KubeletHas{r}",
                "message": m,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": self._node_since,
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
                "lastTransitionTime": self._node_since,
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
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
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

    def _register_node(self) -> None:
        self._node_since = now()
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
        self.core.patch_node_status(name, {"status": self._node_status()}, _content_type=SMP)
        self._renew_lease()
        self._last_heartbeat = time.monotonic()

    def _renew_lease(self) -> None:
        coordination = client.CoordinationV1Api(self.api)
        name = self.config.node_name
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": _micro_now()},
        }
        try:
            coordination.patch_namespaced_lease(name, "kube-node-lease", {"spec": body["spec"]})
        except ApiException as exc:
            if exc.status != 404:
                raise
            with contextlib.suppress(ApiException):
                coordination.create_namespaced_lease("kube-node-lease", body)

    def _heartbeat(self) -> None:
        self._last_heartbeat = time.monotonic()
        self.core.patch_node_status(self.config.node_name, {"status": self._node_status()}, _content_type=SMP)
        self._renew_lease()

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
                if time.monotonic() - self._last_heartbeat > self.config.heartbeat_seconds:
                    self._heartbeat()
            except Exception as exc:  # the runner must survive anything a pod or the API throws at it
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
        used: dict[str, Any] = {}
        active = 0
        for pod in mine:
            if pod.get("status", {}).get("phase") not in TERMINAL:
                active += 1
                for name, qty in podspec.pod_requests(pod).items():
                    used[name] = used.get(name, 0) + qty
        for pod in pods:
            if not pod["spec"].get("nodeName") and self._schedule(pod, used, active):
                active += 1
                for name, qty in podspec.pod_requests(pod).items():
                    used[name] = used.get(name, 0) + qty
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

    # -- scheduling --------------------------------------------------------------------------------

    def _schedule(self, pod: dict[str, Any], used: dict[str, Any], active: int) -> bool:
        meta, spec = pod["metadata"], pod["spec"]
        if (
            meta.get("deletionTimestamp")
            or spec.get("schedulerName", "default-scheduler") != "default-scheduler"
        ):
            return False
        problems = podspec.fit_problems(pod, self.config.capacity(), used, self.config.node_labels(), active)
        uid = meta["uid"]
        if problems:
            message = podspec.unschedulable_message(problems)
            if self._unschedulable.get(uid) != message:
                self._unschedulable[uid] = message
                status = {
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
                with contextlib.suppress(ApiException):
                    self.core.patch_namespaced_pod_status(
                        meta["name"], meta["namespace"], {"status": status}, _content_type=SMP
                    )
                log.info("pod %s/%s unschedulable: %s", meta["namespace"], meta["name"], message)
            return False
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.node_name},
        }
        try:
            self.core.create_namespaced_pod_binding(
                meta["name"], meta["namespace"], binding, _preload_content=False
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        self._unschedulable.pop(uid, None)
        log.info("bound pod %s/%s to %s", meta["namespace"], meta["name"], self.config.node_name)
        self._kick.put(1)
        return True

    # -- one pod -----------------------------------------------------------------------------------

    def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid = meta["uid"]
        with self._lock:
            run = self._pods.get(uid)
        if meta.get("deletionTimestamp"):
            if run is None:
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
        self._confirmed.add(meta["uid"])
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
                ),
            )

    def _kill_and_delete(self, run: _Pod, meta: dict[str, Any], grace: float) -> None:
        try:
            for container in run.inits + run.mains:
                if container.popen is not None and container.popen.poll() is None:
                    code = kill_group(container.popen, grace=grace)
                    container.state = {
                        "terminated": {
                            "exitCode": 137 if code in (None, -9) else (128 - code if code < 0 else code),
                            "reason": "Error",
                            "startedAt": container.state.get("running", {}).get("startedAt"),
                            "finishedAt": now(),
                        }
                    }
            self._confirm_deletion(meta)
        finally:
            self._forget(run.uid, kill=True)

    def _forget(self, uid: str, kill: bool) -> None:
        with self._lock:
            run = self._pods.pop(uid, None)
        if run is None:
            return
        if kill:
            for container in run.inits + run.mains:
                if container.popen is not None:
                    kill_group(container.popen, grace=1.0)
        self._ips.release(run.ip)
        shutil.rmtree(run.dir, ignore_errors=True)

    def _patch_status(self, meta: dict[str, Any], status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"], {"status": status}, _content_type=SMP
        )

    def _container(
        self,
        pod: dict[str, Any],
        spec: dict[str, Any],
        pod_dir: Path,
        logs: Path,
        volume_dirs: dict[str, Path],
        ip: str,
        init: bool,
    ) -> _Container:
        prepared = self._prep.container(pod, spec, pod_dir, volume_dirs, ip)
        return _Container(
            spec=spec,
            argv=prepared.argv,
            env=prepared.env,
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
        ip = self._ips.take()
        try:
            volume_dirs = self._prep.volume_dirs(pod, pod_dir, ip)
            inits = [
                self._container(pod, c, pod_dir, logs, volume_dirs, ip, True)
                for c in spec.get("initContainers") or []
            ]
            mains = [
                self._container(pod, c, pod_dir, logs, volume_dirs, ip, False) for c in spec["containers"]
            ]
        except podspec.MissingReference as exc:
            self._ips.release(ip)
            shutil.rmtree(pod_dir, ignore_errors=True)
            message = str(exc)
            if self._unschedulable.get(meta["uid"]) != message:  # report once per distinct problem
                self._unschedulable[meta["uid"]] = message
                waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": message}}
                self._patch_status(
                    meta,
                    {
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
                            for c in spec["containers"]
                        ]
                    },
                )
            return
        self._unschedulable.pop(meta["uid"], None)
        run = _Pod(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            ip=ip,
            dir=pod_dir,
            restart_policy=spec.get("restartPolicy") or "Always",
            inits=inits,
            mains=mains,
        )
        log.info("starting pod %s/%s as local processes at %s (%s)", run.namespace, run.name, ip, IMAGE_NOTE)
        with self._lock:
            self._pods[run.uid] = run
        self._advance(run, meta)

    # -- running -----------------------------------------------------------------------------------

    def _launch(self, container: _Container) -> None:
        argv = container.argv
        started = now()
        problem = ""
        if not argv:
            problem = (
                "container has no command: the local runner ignores the image "
                f"({container.spec.get('image', '')}), so the image's entrypoint is unknown"
            )
        else:
            exe = argv[0]
            resolved = exe if "/" in exe else shutil.which(exe, path=container.env.get("PATH"))
            if resolved is None or not (Path(resolved).is_file() and os.access(resolved, os.X_OK)):
                problem = f'exec: "{exe}": executable file not found in $PATH'
        if not problem:
            with open(container.log_path, "ab") as fh:
                fh.write(f"[local-runner] {IMAGE_NOTE}: {container.spec.get('image', '')}\n".encode())
            try:
                container.popen = spawn(argv, container.log_path, env=container.env, cwd=container.cwd)
            except OSError as exc:
                problem = f"failed to start {argv[0]!r}: {exc}"
        if problem:
            with open(container.log_path, "ab") as fh:
                fh.write(f"[local-runner] {problem}\n".encode())
            container.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "ContainerCannotRun",
                    "message": problem,
                    "startedAt": started,
                    "finishedAt": now(),
                }
            }
            return
        container.state = {"running": {"startedAt": started}}

    def _finish(self, container: _Container, code: int) -> None:
        exit_code = 128 - code if code < 0 else code  # killed by signal N -> 128+N, as containers report
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": container.state.get("running", {}).get("startedAt"),
            "finishedAt": now(),
        }
        message = podspec.read_termination_message(
            container.term_file, container.spec.get("terminationMessagePolicy"), exit_code, container.log_path
        )
        if message:
            terminated["message"] = message
        container.state = {"terminated": terminated}
        container.popen = None

    def _needs_restart(self, run: _Pod, container: _Container) -> bool:
        code = container.state["terminated"]["exitCode"]
        return run.restart_policy == "Always" or (run.restart_policy == "OnFailure" and code != 0)

    def _poll(self) -> None:
        with self._lock:
            runs = [r for r in self._pods.values() if not r.deleting and r.phase not in TERMINAL]
        for run in runs:
            changed = False
            for container in run.inits + run.mains:
                if container.popen is not None and container.popen.poll() is not None:
                    self._finish(container, container.popen.returncode)
                    changed = True
                elif container.restart_at and time.monotonic() >= container.restart_at:
                    changed = True
            if changed:
                try:
                    self._advance(run, {"name": run.name, "namespace": run.namespace, "uid": run.uid})
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        raise

    def _advance(self, run: _Pod, meta: dict[str, Any]) -> None:
        """Start what can start next, work out the phase, and write the status if it changed."""
        self._restart_due(run)
        if run.phase not in TERMINAL:
            run.phase = self._step(run)
        if run.phase in TERMINAL:
            for container in run.inits + run.mains:
                if container.popen is not None:
                    kill_group(container.popen, grace=2.0)
                    self._finish(container, container.popen.returncode or 0)
            self._ips.release(run.ip)
        self._write_status(run, meta)

    def _step(self, run: _Pod) -> str:
        for container in run.inits:  # one after the other, each must succeed
            if container.restart_at:
                return "Pending"
            if container.popen is None and not container.done:
                self._launch(container)
            if container.popen is not None:
                return "Pending"
            if container.state["terminated"]["exitCode"] == 0:
                continue
            if self._maybe_restart(run, container):
                return "Pending"
            run.message = f"init container {container.name} failed"
            return "Failed"
        for container in run.mains:  # all at once
            if container.popen is None and not container.done and not container.restart_at:
                self._launch(container)
            if container.done:
                self._maybe_restart(run, container)
        if any(c.popen is not None or c.restart_at for c in run.mains):
            return "Running"
        failed = [c.name for c in run.mains if c.state["terminated"]["exitCode"] != 0]
        return "Failed" if failed else "Succeeded"

    def _maybe_restart(self, run: _Pod, container: _Container) -> bool:
        """Schedule a restart if restartPolicy asks for one; True if the container will run again."""
        if not container.done or not self._needs_restart(run, container):
            return False
        delay = min(10.0 * 2 ** (container.restarts - 1), 300.0) if container.restarts else 1.0
        container.restart_at = time.monotonic() + delay
        container.last_state = container.state
        container.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:.0f}s restarting failed container",
            }
        }
        return True

    def _restart_due(self, run: _Pod) -> None:
        for container in run.inits + run.mains:
            if container.restart_at and time.monotonic() >= container.restart_at:
                container.restart_at = 0.0
                container.restarts += 1
                self._launch(container)

    def _container_status(self, container: _Container) -> dict[str, Any]:
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

    def _write_status(self, run: _Pod, meta: dict[str, Any]) -> None:
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
            "containerStatuses": [self._container_status(c) for c in run.mains],
        }
        if run.inits:
            status["initContainerStatuses"] = [self._container_status(c) for c in run.inits]
        if run.message:
            status["message"] = run.message
        encoded = json.dumps(status, sort_keys=True)
        if encoded == run.last_status:
            return
        self._patch_status(meta, status)
        run.last_status = encoded
        if run.phase in TERMINAL:
            log.info("pod %s/%s %s", run.namespace, run.name, run.phase)
