"""The pod runner's pod names: hosts files per subdomain, rewritten in place, and a process that really
resolves its peers and its own name inside its namespaces (skipped where `unshare` is not allowed)."""

from __future__ import annotations

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
