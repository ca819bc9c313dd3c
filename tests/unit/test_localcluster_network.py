"""The pod runner's pod names: hosts files per subdomain, rewritten in place, and a process that really
resolves its peers and its own name inside its namespaces (skipped where `unshare` is not allowed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_localcluster import podnetwork


def _pod(name: str, hostname: str | None, subdomain: str | None, ns: str = "ns") -> dict:
    spec = {k: v for k, v in (("hostname", hostname), ("subdomain", subdomain)) if v}
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def test_only_pods_with_a_subdomain_get_names(tmp_path: Path):
    assert podnetwork.pod_name(_pod("p", None, None), "127.0.1.1", tmp_path) is None
    name = podnetwork.pod_name(_pod("j-0-abcde", "j-0", "j"), "127.0.1.1", tmp_path)
    assert name is not None and name.names() == ["j-0.j.ns.svc.cluster.local", "j-0.j"]


def test_hosts_files_list_peers_of_the_same_subdomain_and_follow_them(tmp_path: Path):
    directory = podnetwork.PeerDirectory()
    a = podnetwork.pod_name(_pod("a", "j-0", "j"), "127.0.1.1", tmp_path / "a")
    b = podnetwork.pod_name(_pod("b", "j-1", "j"), "127.0.1.2", tmp_path / "b")
    other = podnetwork.pod_name(_pod("c", "k-0", "k"), "127.0.1.3", tmp_path / "c")
    assert a and b and other
    directory.add("a", a)
    inode = a.hosts_file.stat().st_ino
    assert "j-1" not in a.hosts_file.read_text()
    directory.add("b", b)
    directory.add("c", other)
    text = a.hosts_file.read_text()
    assert "127.0.1.1\tj-0.j.ns.svc.cluster.local j-0.j j-0\n" in text
    assert "127.0.1.2\tj-1.j.ns.svc.cluster.local j-1.j\n" in text
    assert "k-0" not in text and "j-0" not in other.hosts_file.read_text()
    assert "127.0.1.1\tj-0.j.ns.svc.cluster.local j-0.j\n" in b.hosts_file.read_text()
    directory.remove("b")
    assert "j-1" not in a.hosts_file.read_text()
    assert a.hosts_file.stat().st_ino == inode, "rewritten in place: a bind mount keeps seeing it"


@pytest.mark.skipif(not podnetwork.namespaces_available(), reason="needs root and unshare")
def test_a_pod_process_resolves_its_peers_and_its_own_name(tmp_path: Path):
    directory = podnetwork.PeerDirectory()
    me = podnetwork.pod_name(_pod("a", "j-0", "j"), "127.0.1.1", tmp_path / "a")
    peer = podnetwork.pod_name(_pod("b", "j-1", "j"), "127.0.1.2", tmp_path / "b")
    assert me and peer
    directory.add("a", me)
    directory.add("b", peer)
    probe = (
        "import socket; print(socket.gethostname(), socket.getfqdn(), socket.gethostbyname('j-1.j'), "
        "socket.gethostbyname('j-0.j.ns.svc.cluster.local'))"
    )
    out = subprocess.run(
        podnetwork.enter(me, [sys.executable, "-c", probe]), capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["j-0", "j-0.j.ns.svc.cluster.local", "127.0.1.2", "127.0.1.1"]
    assert "j-1" not in Path("/etc/hosts").read_text(), "the machine's own /etc/hosts is untouched"


def test_a_pods_processes_in_sessions_of_their_own_end_with_the_pod(tmp_path: Path):
    """torchrun starts its workers with a session of their own: killing the pod's process group leaves
    them running; the pod's folder in their environment finds them."""
    from finetune_localcluster import processes

    marker = str(tmp_path / "pod")
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], "
        "start_new_session=True); "
        "print(p.pid, flush=True); time.sleep(300)"
    )
    env = {**os.environ, "FINETUNE_LOCAL_ROOT": marker}
    log = tmp_path / "log"
    agent = processes.spawn([sys.executable, "-c", script], log, env=env)
    worker = int(processes.wait_for(lambda: log.read_text().strip(), timeout=60, what="the worker's pid"))
    processes.kill_group(agent, grace=1)
    assert os.path.exists(f"/proc/{worker}"), "a new session survives its parent's process group"
    assert processes.kill_marked("FINETUNE_LOCAL_ROOT", marker) == [worker]
    processes.wait_for(lambda: not _alive(worker), timeout=10, what="the worker to end")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"
