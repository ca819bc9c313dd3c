"""The pure rules of the local cluster: go.mod parsing, ldflags, path substitution, env, resource fit."""

from __future__ import annotations

import os
import time
from decimal import Decimal
from pathlib import Path

import pytest

from finetune_localcluster import binaries, controlplane, podnode, podspec, processes

GOMOD = """module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
\tgithub.com/foo/bar v1.2.3
)

replace k8s.io/single => ./staging/src/k8s.io/single // a comment

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/apimachinery => ./staging/src/k8s.io/apimachinery
\t// k8s.io/commented => ./staging/src/k8s.io/commented
\tgithub.com/other/mod v1.0.0 => github.com/fork/mod v1.0.1
\tk8s.io/parent => ../parent
)
"""


class TestGoModParsing:
    def test_local_replaces_from_blocks_and_single_lines_only(self) -> None:
        assert binaries.parse_local_replaces(GOMOD) == [
            "k8s.io/single",
            "k8s.io/api",
            "k8s.io/apimachinery",
            "k8s.io/parent",
        ]

    def test_staging_version_follows_the_kubernetes_release(self) -> None:
        assert binaries.staging_version("1.37.2") == "v0.37.2"
        assert binaries.staging_version("v1.35.4") == "v0.35.4"

    def test_wrapper_gomod_requires_and_pins_each_staging_module(self) -> None:
        text = binaries.wrapper_gomod(
            {"k8s.io/kubernetes": "v1.37.2", "k8s.io/api": "v0.37.2"}, {"k8s.io/api": "v0.37.2"}, "1.26"
        )
        assert "go 1.26" in text
        assert "\tk8s.io/kubernetes v1.37.2" in text
        assert "\tk8s.io/api => k8s.io/api v0.37.2" in text

    def test_version_ldflags_cover_component_base_and_client_go(self) -> None:
        flags = binaries.kubernetes_ldflags("1.37.2", build_date="2026-01-01T00:00:00Z")
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            assert f"-X {pkg}.gitVersion=v1.37.2" in flags
            assert f"-X {pkg}.gitMinor=37" in flags

    def test_kubebuilder_assets_win_over_the_cache(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assets, cache = tmp_path / "assets", tmp_path / "cache"
        assets.mkdir()
        (assets / "etcd").write_text("#!/bin/sh\n")
        (assets / "etcd").chmod(0o755)
        monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
        monkeypatch.setenv("FINETUNE_CACHE", str(cache))
        found, missing = binaries.find_binaries()
        assert found == {"etcd": (assets / "etcd").resolve()}
        assert "kube-apiserver" in missing
        with pytest.raises(binaries.BinariesError, match="KUBEBUILDER_ASSETS"):
            binaries.ensure_binaries(build=False)


def test_without_go_or_assets_the_error_says_what_to_install_or_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.delenv("GO", raising=False)
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(binaries, "GO_FALLBACKS", ())
    with pytest.raises(binaries.BinariesError) as err:
        binaries.ensure_binaries(build=True)
    assert "no Go toolchain found" in str(err.value)
    assert "KUBEBUILDER_ASSETS" in str(err.value)


def test_a_cached_binary_built_at_another_version_counts_as_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    cache = binaries.cache_bin_dir()
    cache.mkdir(parents=True)
    for name in binaries.NAMES:
        (cache / name).write_text("#!/bin/sh\n")
        (cache / name).chmod(0o755)
        binaries.record_version(cache, name, binaries.wanted_version(name))
    assert binaries.find_binaries()[1] == []
    binaries.record_version(cache, "etcd", "3.0.0")
    assert binaries.find_binaries()[1] == ["etcd"]


class TestPathSubstitution:
    def mapping(self) -> podspec.MountMap:
        m = podspec.MountMap()
        m.add("/data", "/tmp/pod/volumes/data")
        m.add("/data/models", "/tmp/pvc/models")
        m.add("/dev/termination-log", "/tmp/pod/term")
        return m

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("/data", "/tmp/pod/volumes/data"),
            ("/data/x.json", "/tmp/pod/volumes/data/x.json"),
            ("--out=/data/run", "--out=/tmp/pod/volumes/data/run"),
            ("/data/models/m1", "/tmp/pvc/models/m1"),  # the longest mount wins
            ("--result-file /dev/termination-log", "--result-file /tmp/pod/term"),
            ("/database", "/database"),  # not a path prefix
            ("/srv/data/x", "/srv/data/x"),  # inside another path
            ("a:/data:b", "a:/tmp/pod/volumes/data:b"),
        ],
    )
    def test_mount_paths_are_replaced_as_whole_paths(self, text: str, expected: str) -> None:
        assert self.mapping().substitute(text) == expected

    def test_resolve_maps_container_paths_under_mounts(self) -> None:
        assert self.mapping().resolve("/data/models/a") == "/tmp/pvc/models/a"
        assert self.mapping().resolve("/etc/passwd") is None

    def test_mount_map_uses_subpath_and_default_termination_path(self, tmp_path: Path) -> None:
        container = {
            "name": "c",
            "volumeMounts": [
                {"name": "work", "mountPath": "/work", "subPath": "run-1"},
                {"name": "missing", "mountPath": "/x"},
            ],
        }
        mapping = podspec.mount_map(container, {"work": tmp_path / "vol"}, tmp_path / "term")
        assert mapping.mounts == {
            "/work": str(tmp_path / "vol" / "run-1"),
            "/dev/termination-log": str(tmp_path / "term"),
        }

    def test_pvc_folder_is_stable_per_namespace_and_claim(self, tmp_path: Path) -> None:
        assert podspec.pvc_folder(tmp_path, "ns", "ckpt") == tmp_path / "pvc" / "ns" / "ckpt"


POD = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
    "spec": {"serviceAccountName": "sa"},
}


class TestEnvironment:
    def env(self, container: dict, **kw) -> dict[str, str]:  # type: ignore[no-untyped-def]
        cms = {"cm": {"A": "1", "B": "2"}}
        secrets = {"s": {"TOKEN": "t0k"}}
        return podspec.container_env(
            POD,
            container,
            base=kw.get("base", {"PATH": "/bin"}),
            config_map=cms.get,
            secret=secrets.get,
            pod_ip="127.0.0.7",
            node_name="local-runner",
        )

    def test_values_refs_and_downward_api(self) -> None:
        env = self.env(
            {
                "env": [
                    {"name": "PLAIN", "value": "v"},
                    {"name": "EXPANDED", "value": "$(PLAIN)-$(NOPE)-$$(PLAIN)"},
                    {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "A"}}},
                    {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "TOKEN"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                ]
            }
        )
        assert env["EXPANDED"] == "v-$(NOPE)-$(PLAIN)"
        assert (env["FROM_CM"], env["FROM_SECRET"]) == ("1", "t0k")
        assert (env["POD"], env["NS"], env["IP"], env["NODE"], env["LABEL"]) == (
            "p",
            "ns",
            "127.0.0.7",
            "local-runner",
            "x",
        )
        assert env["PATH"] == "/bin"

    def test_env_from_with_prefix_and_env_wins(self) -> None:
        env = self.env(
            {
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "P_"}],
                "env": [{"name": "P_A", "value": "override"}],
            }
        )
        assert (env["P_A"], env["P_B"]) == ("override", "2")

    def test_missing_reference_blocks_start_unless_optional(self) -> None:
        ref = {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}
        with pytest.raises(podspec.MissingReference, match='configmap "nope" not found'):
            self.env({"env": [ref]})
        ref["valueFrom"]["configMapKeyRef"]["optional"] = True
        assert "X" not in self.env({"env": [ref]})

    def test_resource_field_ref_rounds_up(self) -> None:
        container = {"resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}}}
        assert podspec.resource_ref(container, {"resource": "limits.cpu"}) == "2"
        assert podspec.resource_ref(container, {"resource": "limits.memory", "divisor": "1Mi"}) == "1024"


class TestResourceFit:
    ALLOCATABLE = {"cpu": "2", "memory": "4Gi", "pods": "110", podspec.GPU: "1"}

    def pod(
        self,
        requests: dict[str, str] | None = None,
        limits: dict[str, str] | None = None,
        selector: dict[str, str] | None = None,
    ) -> dict:
        resources: dict[str, dict[str, str]] = {}
        if requests:
            resources["requests"] = requests
        if limits:
            resources["limits"] = limits
        return {
            "spec": {"containers": [{"name": "c", "resources": resources}], "nodeSelector": selector or {}}
        }

    def test_requests_default_to_limits_and_init_containers_take_the_max(self) -> None:
        pod = self.pod(limits={podspec.GPU: "1"}, requests={"cpu": "500m"})
        pod["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "1"}}}]
        assert podspec.pod_requests(pod) == {podspec.GPU: Decimal(1), "cpu": Decimal(1)}

    def test_fits_when_free(self) -> None:
        assert (
            podspec.fit_problems(self.pod({"cpu": "1", podspec.GPU: "1"}), self.ALLOCATABLE, {}, {}, 0) == []
        )

    def test_too_many_gpus_is_reported_like_the_scheduler(self) -> None:
        problems = podspec.fit_problems(self.pod(limits={podspec.GPU: "2"}), self.ALLOCATABLE, {}, {}, 0)
        assert problems == ["Insufficient nvidia.com/gpu"]
        assert (
            podspec.unschedulable_message(problems)
            == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        )

    def test_used_resources_count(self) -> None:
        used = {"cpu": Decimal("1.5")}
        assert podspec.fit_problems(self.pod({"cpu": "1"}), self.ALLOCATABLE, used, {}, 0) == [
            "Insufficient cpu"
        ]

    def test_unknown_resource_counts_as_zero_capacity(self) -> None:
        pod = self.pod({"example.com/fpga": "1"})
        assert podspec.fit_problems(pod, self.ALLOCATABLE, {}, {}, 0) == ["Insufficient example.com/fpga"]

    def test_node_selector_must_match(self) -> None:
        pod = self.pod(selector={"gpu": "a100"})
        assert podspec.fit_problems(pod, self.ALLOCATABLE, {}, {"gpu": "h100"}, 0) == [
            "node(s) didn't match Pod's node affinity/selector"
        ]


class TestTerminationMessage:
    def test_file_is_read_and_capped(self, tmp_path: Path) -> None:
        path = tmp_path / "term"
        path.write_text("x" * 5000)
        assert len(podspec.read_termination_message(path, None, 0, None)) == podspec.MAX_TERMINATION_MESSAGE

    def test_fallback_to_logs_only_on_error(self, tmp_path: Path) -> None:
        logfile = tmp_path / "log"
        logfile.write_text("line1\nboom\n")
        missing = tmp_path / "none"
        assert podspec.read_termination_message(missing, "FallbackToLogsOnError", 1, logfile) == "line1\nboom"
        assert podspec.read_termination_message(missing, "FallbackToLogsOnError", 0, logfile) == ""
        assert podspec.read_termination_message(missing, "File", 1, logfile) == ""


class TestProcesses:
    def test_kill_group_ends_the_whole_process_group(self, tmp_path: Path) -> None:
        log = tmp_path / "log"
        proc = processes.spawn(["sh", "-c", "sleep 60 & echo child $!; wait"], log)
        child = int(processes.wait_for(lambda: log.read_text().split()[1:2], timeout=10, what="child pid")[0])
        assert processes.kill_group(proc, grace=2) is not None
        with pytest.raises(ProcessLookupError):
            processes.wait_for(lambda: os.kill(child, 0) or None, timeout=5, what="child exit")

    def test_free_ports_differ_and_tail_reads_the_end(self, tmp_path: Path) -> None:
        assert processes.free_port() > 0
        path = tmp_path / "log"
        path.write_text("\n".join(str(i) for i in range(100)))
        assert processes.tail(path, 3) == "97\n98\n99"
        assert processes.tail(tmp_path / "missing") == ""


def test_pod_ips_are_loopback_unique_and_not_reused_at_once() -> None:
    pool = podnode.PodIPPool(block=0)
    first, second = pool.take(), pool.take()
    assert (first, second) == ("127.0.0.2", "127.0.0.3")  # 127.0.0.1 is the node's
    pool.release(first)
    assert pool.take() == "127.0.0.4"


def test_each_pool_takes_its_own_loopback_block() -> None:
    """Two local clusters on one machine rarely share a block (1 in 254), so their pods rarely share an IP."""
    blocks = {podnode.PodIPPool().take().split(".")[1] for _ in range(20)}
    assert len(blocks) > 1 and "0" not in blocks


def test_a_crashing_etcd_fails_fast_with_its_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "etcd"
    fake.write_text("#!/bin/sh\necho 'etcd: cannot open data dir: disk on fire' >&2\nexit 3\n")
    fake.chmod(0o755)
    bins = binaries.Binaries(
        etcd=fake, kube_apiserver=fake, kube_controller_manager=fake, kubectl=fake, helm=fake
    )
    plane = controlplane.ControlPlane(binaries=bins, workdir=tmp_path / "work")
    started = time.monotonic()
    with pytest.raises(controlplane.ControlPlaneError, match=r"(?s)etcd exited with code 3.*disk on fire"):
        plane.start()
    assert time.monotonic() - started < 10
    assert plane._procs == []


def test_run_operator_defaults_to_the_handler_module_the_operator_really_runs() -> None:
    """`finetune-operator run` registers the handlers of one module; the fixture's default is that module."""
    import importlib
    import inspect

    import finetune_operator.__main__ as entrypoint
    from finetune_localcluster import pytest_plugin

    default = inspect.signature(pytest_plugin.operator_in_process).parameters["module"].default
    assert importlib.import_module(default) is entrypoint.handlers


def test_a_pod_binds_only_when_each_of_its_claims_exists_and_is_bound():
    from finetune_localcluster.podvolumes import claim_problems, claims_message

    def pod(*claims: str) -> dict:
        volumes = [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims]
        return {
            "metadata": {"namespace": "ns"},
            "spec": {"volumes": [{"name": "tmp", "emptyDir": {}}, *volumes]},
        }

    claims = {
        ("ns", "bound"): {"status": {"phase": "Bound"}},
        ("ns", "waiting"): {"status": {"phase": "Pending"}},
    }
    assert claim_problems(pod("bound"), claims) == []
    assert claim_problems(pod("bound", "gone", "waiting"), claims) == [
        'persistentvolumeclaim "gone" not found',
        "pod has unbound immediate PersistentVolumeClaims",
    ]
    assert claim_problems(pod("bound"), {("other", "bound"): {"status": {"phase": "Bound"}}}) == [
        'persistentvolumeclaim "bound" not found'  # claims are namespaced
    ]
    assert claims_message(['persistentvolumeclaim "x" not found']) == (
        '0/1 nodes are available: persistentvolumeclaim "x" not found.'
    )


def test_only_an_unreachable_api_server_is_retried_quietly():
    import urllib3
    from kubernetes.client.rest import ApiException

    from finetune_localcluster.podrunner import unreachable

    assert unreachable(urllib3.exceptions.MaxRetryError(None, "/", "refused"))
    assert unreachable(ConnectionRefusedError())
    assert unreachable(ApiException(status=503))
    assert not unreachable(ApiException(status=422))
    assert not unreachable(ValueError("a bug"))


@pytest.mark.parametrize(
    "image",
    [
        "python:3.12-slim",
        "ghcr.io/finetune-dev/finetune-trainer:0.1.0",
        "localhost:5000/team/trainer:1",
        "nvcr.io/nvidia/pytorch:24.01-py3",
        "busybox@sha256:" + "0" * 64,
    ],
)
def test_image_references_a_runtime_could_pull_are_accepted(image):
    assert podspec.image_reference_error(image) is None


@pytest.mark.parametrize("image", ["Private/Trainer:1", "UPPER", "trainer:", "two words", "a//b"])
def test_image_references_no_runtime_could_parse_are_invalid_image_names(image):
    assert podspec.image_reference_error(image) == (
        f'Failed to apply default image tag "{image}": couldn\'t parse image name "{image}": '
        "invalid reference format"
    )


def test_gpu_pool_hands_out_free_devices_and_takes_them_back():
    from finetune_localcluster.podnode import GpuPool, device_env

    pool = GpuPool(3)
    a, b = pool.take(2), pool.take(1)
    assert (a, b) == ((0, 1), (2,))
    with pytest.raises(RuntimeError, match="1 GPUs requested, 0 free"):
        pool.take(1)
    pool.release(a)
    assert pool.take(1) == (0,)
    assert device_env((1, 2)) == {"CUDA_VISIBLE_DEVICES": "1,2", "NVIDIA_VISIBLE_DEVICES": "1,2"}
    assert device_env(()) == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}
