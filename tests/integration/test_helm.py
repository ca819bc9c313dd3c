"""The Helm chart, rendered by a real helm and applied to a real API server (the local control plane).

helm comes from `finetune_localcluster.binaries` (KUBEBUILDER_ASSETS or the versioned cache,
built from the Go module proxy when missing). Rendering tests need only helm; the rest use the session's
control plane (`kube_cluster`) and prove the manifests are accepted by kube-apiserver, including the
restricted Pod Security profile of the test namespace.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from finetune_localcluster import binaries
from finetune_operator.api import LRSweepStatus, phases
from finetune_operator.settings import from_args, parser
from finetune_tooling import alerts, dashboards

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finetune-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "ft"
MONITORING_API = ["--api-versions", "monitoring.coreos.com/v1"]

# The operator's API usage (see templates/rbac.yaml): nothing more may be granted.
NAMESPACED_RULES = {
    ("finetune.dev", "lrsweeps"): {"get", "list", "watch", "create", "patch"},  # `auto` sweeps, applied
    ("finetune.dev", "finetunejobs"): {"get", "list", "watch"},
    ("finetune.dev", "lrsweeps/status"): {"patch"},
    ("finetune.dev", "finetunejobs/status"): {"patch"},
    ("finetune.dev", "lrsweeps/finalizers"): {"update"},  # ownerReferences with blockOwnerDeletion
    ("finetune.dev", "finetunejobs/finalizers"): {"update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},  # apply; pruned trials
    ("", "pods"): {"get", "list", "watch"},
    ("", "services"): {"create", "patch"},
    ("", "events"): {"create"},  # kopf's warnings
    ("events.k8s.io", "events"): {"create"},  # the operator's phase events
    ("kueue.x-k8s.io", "workloads"): {"get", "list", "patch"},  # Queued/Admitted; pause a queued run
    ("kueue.x-k8s.io", "localqueues"): {"get"},  # QueueUnavailable
}
CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
NAMESPACE_RULES = {("", "namespaces"): {"get", "list", "watch"}}


@pytest.fixture(scope="session")
def helm() -> str:
    path = binaries.find_binary("helm")
    if path is None:
        try:
            binaries.Builder().build(["helm"])
        except binaries.BinariesError as exc:
            pytest.skip(f"helm cannot be provided: {exc}")
        path = binaries.find_binary("helm")
    assert path is not None
    return str(path)


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def template_text(helm: str, *args: str, release: str = RELEASE, namespace: str = "ops") -> str:
    return run_helm(helm, "template", release, str(CHART), "--namespace", namespace, *args).stdout


def render(helm: str, *args: str, **kw: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(template_text(helm, *args, **kw)) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def container_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# ---------------------------------------------------------------------------------------------------------
# lint and render (helm only)


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_strict(helm, values):
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    out = run_helm(helm, *args)
    assert "0 chart(s) failed" in out.stdout


def test_default_install_is_cluster_wide_with_exactly_the_needed_verbs(helm):
    docs = render(helm)
    role = one(docs, "ClusterRole")
    assert rules_of(role) == {**NAMESPACED_RULES, **CRD_RULES, **NAMESPACE_RULES}
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ft-finetune-operator", "namespace": "ops"}
    ]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    assert container_env(docs)["FINETUNE_NAMESPACES"] == ""


def test_namespaced_mode_has_a_role_per_namespace_and_only_crd_reads_cluster_wide(helm):
    docs = render(helm, "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_of(role) == NAMESPACED_RULES
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(docs, "RoleBinding")}
    assert set(bindings) == {"team-a", "team-b"}
    for binding in bindings.values():
        assert binding["subjects"][0] == {
            "kind": "ServiceAccount",
            "name": "ft-finetune-operator",
            "namespace": "ops",
        }
    assert rules_of(one(docs, "ClusterRole")) == CRD_RULES
    assert container_env(docs)["FINETUNE_NAMESPACES"] == "team-a,team-b"


def test_operator_deployment_is_one_standalone_replica_with_probes_and_a_restricted_context(helm):
    docs = render(helm)
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/finetune-dev/finetune-operator:0.1.0"
    assert container["command"] == ["finetune-operator", "run"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8081}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # Selector labels carry no version: an upgrade must not change the immutable selector.
    assert set(spec["selector"]["matchLabels"]) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}


def test_the_env_the_chart_sets_is_what_the_operator_parses(helm, monkeypatch):
    docs = render(
        helm,
        "-f",
        str(CHART / "ci" / "namespaced-values.yaml"),
        "--set-json",
        "operator.pollInterval=2.5",
        "--set-json",
        "operator.resyncInterval=30",
        "--set-json",
        "operator.workers=3",
        "--set-json",
        "operator.podStartDeadline=45",
        "--set",
        "trainer.queueName=team-queue",
    )
    for name, value in container_env(docs).items():
        monkeypatch.setenv(name, value)
    settings = from_args(parser().parse_args([]))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.trainer_image == values["trainer"]["image"]
    assert settings.node_selector == {} and settings.tolerations == []
    assert (settings.default_cpu, settings.default_memory) == ("2", "8Gi")
    assert settings.poll_interval == 2.5
    assert (settings.resync_interval, settings.workers, settings.pod_start_deadline) == (30, 3, 45)
    assert (settings.metrics_port, settings.health_port, settings.trainer_metrics_port) == (9090, 8081, 9400)
    assert settings.default_queue_name == "team-queue"


def test_default_trainer_placement_targets_gpu_nodes(helm, monkeypatch):
    for name, value in container_env(render(helm)).items():
        monkeypatch.setenv(name, value)
    settings = from_args(parser().parse_args([]))
    assert settings.node_selector == {"nvidia.com/gpu.present": "true"}
    assert settings.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert settings.default_queue_name is None  # not queued unless trainer.queueName is set


def test_metrics_service_selects_the_operator_pod_on_a_port_named_metrics(helm):
    docs = render(helm)
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_monitoring_objects_are_off_by_default_and_need_the_api(helm):
    assert not by_kind(render(helm, *MONITORING_API), "ServiceMonitor")
    monitoring = ["-f", str(CHART / "ci" / "monitoring-values.yaml")]
    docs = render(helm, *monitoring)  # enabled, but the API is not served: skipped
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule")
    docs = render(helm, *monitoring, *MONITORING_API)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service_labels = one(docs, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    # The job label the alerts select on is what jobLabel produces.
    assert f'job="{service_labels["app.kubernetes.io/name"]}"' == alerts.CONFIG["operator_selector"]


def test_prometheus_rule_embeds_the_generated_rules_with_the_configured_runbook_base(helm, tmp_path):
    docs = render(helm, "-f", str(CHART / "ci" / "monitoring-values.yaml"), *MONITORING_API)
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    expected = json.loads(
        json.dumps(alerts.rule_file()["groups"]).replace(
            alerts.RUNBOOK_BASE_URL, "https://runbooks.example.com/finetune-operator.md"
        )
    )
    assert groups == expected
    promtool = binaries_promtool()
    if promtool:
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
        out = subprocess.run(
            [promtool, "check", "rules", str(tmp_path / "rules.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr


def binaries_promtool() -> str | None:
    """promtool from Debian's package (scripts/install-prometheus caches it); None if it cannot be had."""
    try:
        out = subprocess.run(
            [str(REPO / "scripts" / "install-prometheus"), "prometheus"],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    paths = out.stdout.split()
    return paths[1] if len(paths) >= 2 else None


def test_dashboards_ship_as_sidecar_configmaps_with_the_generated_json(helm):
    docs = render(helm)
    maps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    assert len(maps) == len(dashboards.dashboards())
    shipped = {}
    for cm in maps.values():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = cm["data"].items()
        shipped[key] = json.loads(text)
    assert shipped == dashboards.dashboards()
    custom = render(
        helm,
        "--set",
        "dashboards.label=my_dash",
        "--set",
        "dashboards.labelValue=yes",
        "--set",
        "dashboards.namespace=monitoring",
    )
    for cm in by_kind(custom, "ConfigMap"):
        assert cm["metadata"]["labels"]["my_dash"] == "yes"
        assert cm["metadata"]["namespace"] == "monitoring"
    assert not by_kind(render(helm, "--set", "dashboards.enabled=false"), "ConfigMap")


def test_names_and_labels_fit_in_63_characters_for_the_longest_release_name(helm):
    release = "r" * 53  # helm's own limit
    docs = render(helm, "-f", str(CHART / "ci" / "namespaced-values.yaml"), release=release)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        for value in doc["metadata"].get("labels", {}).values():
            assert len(value) <= 63
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "truncation made two objects collide"


def test_helm_test_hook_checks_the_metrics_service(helm):
    docs = render(helm)
    pod = next(d for d in by_kind(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test")
    script = pod["spec"]["containers"][0]["command"][-1]
    service = one(docs, "Service")["metadata"]["name"]
    assert f"http://{service}.ops.svc:9090/metrics" in script
    assert pod["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] is True


def test_image_digest_pins_the_image(helm):
    digest = "sha256:" + "a" * 64
    container = one(render(helm, "--set", f"image.digest={digest}"), "Deployment")["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert container["image"] == f"ghcr.io/finetune-dev/finetune-operator@{digest}"


BAD_VALUES = [
    (["--set", "watchNamespaces[0]=Team_A"], "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
    (
        ["--set", "operator.pollIntervall=5"],
        "at '/operator': additional properties 'pollIntervall' not allowed",
    ),
    (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
    (
        ["--set", "trainer.resources.memory=lots"],
        "at '/trainer/resources/memory': 'lots' does not match pattern",
    ),
    (["--set", "trainer.resources.memory=1.2.3Gi"], "at '/trainer/resources/memory'"),
    (["--set", "trainer.resources.memory=-4Gi"], "at '/trainer/resources/memory'"),
    (["--set", "trainer.resources.cpu=4KKK"], "at '/trainer/resources/cpu'"),
    (["--set", "trainer.resources.cpu=0"], "at '/trainer/resources/cpu'"),
    (
        ["--set-json", 'trainer.tolerations=[{"key":"gpu","operator":"Exists","value":"x"}]'],
        "at '/trainer/tolerations/0/value'",
    ),
    (
        ["--set-json", 'trainer.tolerations=[{"key":"gpu","effect":"NoSchedule","tolerationSeconds":5}]'],
        "at '/trainer/tolerations/0/effect'",
    ),
    (["--set-json", 'trainer.tolerations=[{"value":"x"}]'], "at '/trainer/tolerations/0'"),
    (
        ["--set-json", 'trainer.tolerations=[{"key":"bad key!","operator":"Exists"}]'],
        "/trainer/tolerations/0/key",
    ),
    (
        ["--set-json", 'tolerations=[{"key":"a","operator":"Exists","value":"b"}]'],
        "at '/tolerations/0/value'",
    ),
    (["--set-json", 'trainer.nodeSelector={"gpu":"a b"}'], "at '/trainer/nodeSelector/gpu'"),
    (["--set-json", 'trainer.nodeSelector={"bad key!":"a"}'], "invalid propertyName 'bad key!'"),
    (
        ["--set", "operator.healthPort=9090"],
        "operator.healthPort and operator.metricsPort are both 9090: /healthz and /metrics need ports of "
        "their own; set operator.healthPort (or operator.metricsPort) to another port",
    ),
]
BAD_VALUE_IDS = [
    "namespace",
    "typo",
    "enum",
    "quantity",
    "quantity-two-dots",
    "quantity-negative",
    "cpu-suffix",
    "cpu-zero",
    "exists-with-value",
    "toleration-seconds-without-noexecute",
    "equal-without-key",
    "toleration-key",
    "operator-pod-toleration",
    "node-selector-value",
    "node-selector-key",
    "same-health-and-metrics-port",
]


def test_good_trainer_placement_and_quantities_pass_the_schema(helm):
    docs = render(
        helm,
        "--set",
        "trainer.resources.cpu=500m",
        "--set",
        "trainer.resources.memory=1.5Gi",
        "--set-json",
        'trainer.tolerations=[{"operator":"Exists"},{"key":"nvidia.com/gpu","operator":"Exists",'
        '"effect":"NoExecute","tolerationSeconds":30},{"key":"pool","value":"ml","effect":"NoSchedule"}]',
        "--set-json",
        'trainer.nodeSelector={"nvidia.com/gpu.product":"NVIDIA-H100-80GB-HBM3"}',
        "--set",
        "operator.healthPort=8082",
    )
    env = container_env(docs)
    assert env["FINETUNE_DEFAULT_CPU"] == "500m" and env["FINETUNE_DEFAULT_MEMORY"] == "1.5Gi"


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=BAD_VALUE_IDS)
def test_values_violating_the_schema_fail_template_with_the_schema_message(helm, args, message):
    out = run_helm(helm, "template", RELEASE, str(CHART), *args, check=False)
    assert out.returncode != 0
    assert message in out.stderr


# ---------------------------------------------------------------------------------------------------------
# Against the local control plane


def dry_run_server(cluster, manifest: str, namespace: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=manifest, check=False
    )


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_chart_is_accepted_by_the_api_server(helm, kube_cluster, namespace, values):
    # Namespaced mode names its watched namespaces; point them at the test's namespace, which exists.
    extra = ["--set", f"watchNamespaces={{{namespace}}}"] if "namespaced" in values.name else []
    manifest = template_text(
        helm, "-f", str(values), *extra, "--include-crds", release=f"ft-{namespace[-6:]}", namespace=namespace
    )
    out = dry_run_server(kube_cluster, manifest, namespace)
    assert out.returncode == 0, out.stderr
    # The namespace enforces the restricted Pod Security profile: not even a warning about the Deployment.
    assert "PodSecurity" not in out.stderr, out.stderr
    applied = out.stdout
    assert re.search(r"deployment.apps/\S+ created \(server dry run\)", applied), applied
    assert "customresourcedefinition.apiextensions.k8s.io/lrsweeps.finetune.dev" in applied


def test_gitops_example_is_accepted_by_the_api_server(kube_cluster, namespace, crds_installed):
    rendered = kube_cluster.kubectl("kustomize", str(REPO / "examples" / "gitops")).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] != "Namespace"]
    assert {d["kind"] for d in docs} == {"LRSweep", "FineTuneJob"}
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    out = dry_run_server(kube_cluster, yaml.safe_dump_all(docs), namespace)
    assert out.returncode == 0, out.stderr


def test_helm_install_with_bad_values_fails_with_the_schema_message(kube_cluster, namespace):
    out = kube_cluster.helm(
        "install", "bad", str(CHART), "-n", namespace, "--set", "operator.pollIntervall=5", check=False
    )
    assert out.returncode != 0
    assert "additional properties 'pollIntervall' not allowed" in out.stderr
    assert "bad" not in kube_cluster.helm("list", "-n", namespace, "-q").stdout.split()


def test_helm_install_creates_the_operator_objects(kube_cluster, kube_api, namespace):
    release = f"ft-{uuid.uuid4().hex[:6]}"
    # Pin the operator pod to a node that does not exist: this test checks what helm creates; a second
    # cluster-wide operator actually running would compete with the other tests' operators.
    args = [
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--set",
        "nodeSelector.finetune\\.dev/no-such-node=x",
    ]
    out = kube_cluster.helm(*args, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        assert "kubectl get lrs -w" in out.stdout  # NOTES.txt
        named = re.search(r"kubectl get lrs -w\s+# phase ([A-Za-z >-]+?), then", out.stdout)
        assert named, out.stdout
        named_phases = set(named.group(1).split(" -> "))
        assert named_phases <= set(phases(LRSweepStatus)), "NOTES names a phase no LRSweep takes"
        first_sweep = re.search(r"<<'YAML'.*?\n(.*?)\n\s*YAML\n", out.stdout, re.S)
        assert first_sweep, out.stdout
        sweep = yaml.safe_load(textwrap.dedent(first_sweep.group(1)))
        assert sweep["kind"] == "LRSweep" and sweep["spec"]["method"] == "rangeTest"
        applied = dry_run_server(kube_cluster, yaml.safe_dump(sweep), namespace)
        assert applied.returncode == 0, f"the LRSweep NOTES.txt suggests is rejected: {applied.stderr}"
        fullname = f"{release}-finetune-operator"
        apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
        rbac, ext = client.RbacAuthorizationV1Api(kube_api), client.ApiextensionsV1Api(kube_api)
        deployment = apps.read_namespaced_deployment(fullname, namespace)
        assert deployment.spec.template.spec.service_account_name == fullname
        core.read_namespaced_service_account(fullname, namespace)
        service = core.read_namespaced_service(f"{fullname}-metrics", namespace)
        assert [p.name for p in service.spec.ports] == ["metrics"]
        role = rbac.read_cluster_role(fullname)
        assert {r.api_groups[0] for r in role.rules} >= {"finetune.dev", "batch", "apiextensions.k8s.io"}
        binding = rbac.read_cluster_role_binding(fullname)
        assert binding.subjects[0].name == fullname and binding.subjects[0].namespace == namespace
        for crd in ("lrsweeps.finetune.dev", "finetunejobs.finetune.dev"):
            ext.read_custom_resource_definition(crd)
        admission = client.AdmissionregistrationV1Api(kube_api)
        policy = admission.read_validating_admission_policy(f"{fullname}-trainer-access")
        assert policy.spec.failure_policy == "Fail"
        vap_binding = admission.read_validating_admission_policy_binding(f"{fullname}-trainer-access")
        assert vap_binding.spec.policy_name == policy.metadata.name
        assert vap_binding.spec.match_resources is None  # every namespace, like the ClusterRole
        dashboards_cms = core.list_namespaced_config_map(
            namespace, label_selector="grafana_dashboard=1"
        ).items
        assert len(dashboards_cms) == len(dashboards.dashboards())
        # The ServiceAccount may do what the operator does, and no more (asked of the API server).
        sa = f"system:serviceaccount:{namespace}:{fullname}"
        can = lambda *a: kube_cluster.kubectl("auth", "can-i", *a, "--as", sa, check=False).stdout.strip()  # noqa: E731
        assert can("patch", "lrsweeps.finetune.dev", "--subresource=status", "-n", "default") == "yes"
        assert can("patch", "finetunejobs.finetune.dev", "-n", "default") == "no"  # status only
        assert can("create", "jobs.batch", "-n", "default") == "yes"
        assert can("delete", "pods", "-n", "default") == "no"
        assert can("update", "lrsweeps.finetune.dev", "-n", "default") == "no"
        assert can("get", "secrets", "-n", "default") == "no"
    finally:
        kube_cluster.helm("uninstall", release, "-n", namespace, "--wait", check=False)
    with pytest.raises(client.ApiException):
        client.RbacAuthorizationV1Api(kube_api).read_cluster_role(f"{release}-finetune-operator")


def test_namespaced_install_grants_nothing_outside_the_watched_namespace(kube_cluster, namespace):
    release = f"ft-{uuid.uuid4().hex[:6]}"
    args = [
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--skip-crds",
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        "nodeSelector.finetune\\.dev/no-such-node=x",
        "--set",
        "dashboards.enabled=false",
    ]
    out = kube_cluster.helm(*args, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        sa = f"system:serviceaccount:{namespace}:{release}-finetune-operator"
        can = lambda *a: kube_cluster.kubectl("auth", "can-i", *a, "--as", sa, check=False).stdout.strip()  # noqa: E731
        assert can("watch", "finetunejobs.finetune.dev", "-n", namespace) == "yes"
        assert can("watch", "finetunejobs.finetune.dev", "-n", "default") == "no"
        assert can("list", "namespaces") == "no"
        assert can("list", "customresourcedefinitions.apiextensions.k8s.io") == "yes"
    finally:
        kube_cluster.helm("uninstall", release, "-n", namespace, "--wait", check=False)
