"""The chart, installed for real: its operator pod runs (under the local pod runner) as the chart's
ServiceAccount, reconciles an LRSweep in its watched namespace to Succeeded, and ignores other namespaces.
This proves the chart's RBAC is sufficient and its namespaced mode is honoured.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHART = Path(__file__).resolve().parents[2] / "charts" / "finetune-operator"
GROUP, VERSION = "finetune.dev", "v1alpha1"


def make_namespace(core: client.CoreV1Api, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted", "finetune.dev/test": "true"}
    core.create_namespace({"metadata": {"name": name, "labels": labels}})
    return name


def sweep(name: str, root: Path) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LRSweep",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": str(root / "model")},
            "dataset": {"files": [str(root / "toy.jsonl")]},
            "optimization": {"batchSize": 16, "maxSeqLength": 32},
            # one range test: this test is about the chart's install and namespace scope, not the trials
            "method": "rangeTest",
            "rangeTest": {"minLearningRate": 1e-6, "maxLearningRate": 1.0, "steps": 30},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
            "backoffLimit": 0,
        },
    }


def test_helm_installed_operator_reconciles_only_its_namespace(
    kube_cluster, kube_api, crds_installed, tmp_path
):
    if kube_cluster.runner is None:
        pytest.skip("needs the local pod runner to run the chart's operator pod")
    subprocess.run([sys.executable, "-m", "finetune_trainer.tiny_model", str(tmp_path / "model")], check=True)
    subprocess.run(
        [sys.executable, "-m", "finetune_trainer.tiny_model", "--data", str(tmp_path / "toy.jsonl")],
        check=True,
    )
    core = client.CoreV1Api(kube_api)
    release_ns, watched, other = (make_namespace(core, p) for p in ("ops", "team-a", "team-b"))
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "watchNamespaces": [watched],
                "operator": {
                    "pollInterval": 1,
                },
                # CPU trainers here: drop the default GPU node selector (null, since helm merges maps)
                "trainer": {"resources": {"cpu": "1", "memory": "2Gi"}, "nodeSelector": None},
            }
        )
    )
    custom = client.CustomObjectsApi(kube_api)
    try:
        kube_cluster.helm(
            "install",
            "ft",
            str(CHART),
            "-n",
            release_ns,
            "-f",
            str(values),
            "--skip-crds",
            "--wait",
            "--timeout",
            "120s",
        )
        custom.create_namespaced_custom_object(GROUP, VERSION, watched, "lrsweeps", sweep("mine", tmp_path))
        custom.create_namespaced_custom_object(GROUP, VERSION, other, "lrsweeps", sweep("not-mine", tmp_path))
        deadline, status = time.monotonic() + 300, {}
        while time.monotonic() < deadline:
            status = custom.get_namespaced_custom_object(GROUP, VERSION, watched, "lrsweeps", "mine").get(
                "status"
            )
            if (status or {}).get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        assert (status or {}).get("phase") == "Succeeded", status
        assert status["recommendedLearningRate"] > 0
        ignored = custom.get_namespaced_custom_object(GROUP, VERSION, other, "lrsweeps", "not-mine")
        assert "status" not in ignored, "an operator watching one namespace must not touch another"
        assert not client.BatchV1Api(kube_api).list_namespaced_job(other).items
        pods = core.list_namespaced_pod(
            release_ns, label_selector="app.kubernetes.io/name=finetune-operator"
        ).items
        assert pods and pods[0].spec.service_account_name == "ft-finetune-operator"
    finally:
        kube_cluster.helm("uninstall", "ft", "-n", release_ns, "--wait", check=False)
        for ns in (release_ns, watched, other):
            core.delete_namespace(ns, propagation_policy="Background")
