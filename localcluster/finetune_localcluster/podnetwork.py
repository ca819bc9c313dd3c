"""What a pod sees of its peers: its own hostname, and an ``/etc/hosts`` naming the pods of its subdomain.

A pod with ``spec.subdomain`` (an Indexed Job's pods, whose ``spec.hostname`` is ``<job>-<index>``) runs
in its own mount and UTS namespaces (``unshare``, which needs root): ``hostname`` is its ``spec.hostname``
and ``/etc/hosts`` is a file of the pod's own, bind-mounted over the machine's. That file lists, as a
kubelet plus cluster DNS would answer them, every running pod of the same namespace and subdomain::

    127.0.0.1  localhost
    <ip>       <hostname>.<subdomain>.<namespace>.svc.cluster.local <hostname>.<subdomain> [<hostname>]

(the bare hostname on the pod's own line only). It is rewritten in place (same inode, so the bind mount
sees it) whenever a peer starts or stops, so a pod that starts first learns of the others as they come.
Each pod has its own loopback address (``podnode.PodIPPool``), so peers listen on the same port without
colliding. Without root or ``unshare`` the pods run as before, with ``HOSTNAME`` set but no peer names.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLUSTER_DOMAIN = "svc.cluster.local"
_ENTER = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'


@dataclass(frozen=True)
class PodName:
    """A pod's DNS identity: ``<hostname>.<subdomain>`` in its namespace, at its address."""

    namespace: str
    subdomain: str
    hostname: str
    ip: str
    hosts_file: Path

    def names(self) -> list[str]:
        short = f"{self.hostname}.{self.subdomain}"
        return [f"{short}.{self.namespace}.{CLUSTER_DOMAIN}", short]


def pod_name(pod: dict[str, Any], ip: str, pod_dir: Path) -> PodName | None:
    """The pod's DNS identity, or None for a pod without ``spec.subdomain`` (it keeps the machine's view)."""
    spec, meta = pod.get("spec") or {}, pod["metadata"]
    if not spec.get("subdomain"):
        return None
    hostname = spec.get("hostname") or meta["name"]
    return PodName(meta["namespace"], spec["subdomain"], hostname, ip, pod_dir / "etc-hosts")


def hosts_text(me: PodName, peers: list[PodName]) -> str:
    """The ``/etc/hosts`` of ``me``: localhost, itself (with its bare hostname), then its peers."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines.append("\t".join([me.ip, " ".join([*me.names(), me.hostname])]))
    lines += ["\t".join([p.ip, " ".join(p.names())]) for p in peers if p.hostname != me.hostname]
    return "\n".join(lines) + "\n"


@functools.cache
def namespaces_available() -> bool:
    """Whether this runner can give pods their own mount and UTS namespaces (root and ``unshare``)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--uts", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def enter(name: PodName, argv: list[str]) -> list[str]:
    """``argv`` run inside the pod's namespaces: its hosts file over ``/etc/hosts``, its hostname."""
    if not namespaces_available():
        return argv
    return [
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        _ENTER,
        "pod-namespace",
        str(name.hosts_file),
        name.hostname,
        *argv,
    ]


class PeerDirectory:
    """Running pods by (namespace, subdomain); keeps each one's hosts file listing the others."""

    def __init__(self) -> None:
        self._pods: dict[str, PodName] = {}
        self._lock = threading.Lock()

    def add(self, uid: str, name: PodName) -> None:
        with self._lock:
            self._pods[uid] = name
            self._rewrite(name.namespace, name.subdomain)

    def remove(self, uid: str) -> None:
        with self._lock:
            name = self._pods.pop(uid, None)
            if name is not None:
                self._rewrite(name.namespace, name.subdomain)

    def _rewrite(self, namespace: str, subdomain: str) -> None:
        group = [p for p in self._pods.values() if (p.namespace, p.subdomain) == (namespace, subdomain)]
        for me in group:
            _write_in_place(me.hosts_file, hosts_text(me, group))


def _write_in_place(path: Path, text: str) -> None:
    """Replace the file's content without replacing the file (a bind mount follows the inode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    with open(path, "r+", encoding="utf-8") as fh:  # write over, then cut: never an empty file to a reader
        fh.write(text)
        fh.truncate()
