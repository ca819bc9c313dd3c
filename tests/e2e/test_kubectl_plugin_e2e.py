"""`kubectl finetune` on a fine-tune that really runs: the operator in-process, the trainer pod on the
local pod runner (a tiny GPT-2 on CPU), the plugin as the `kubectl-finetune` executable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from finetune_operator import handlers
from finetune_operator.api import API_GROUP, FINETUNEJOB, VERSION
from finetune_operator.kubectl.errors import ExitCode
from finetune_operator.settings import Settings
from finetune_trainer.plot import training_curve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PLUGIN = Path(sys.executable).with_name("kubectl-finetune")


@pytest.fixture
def short(tiny: dict[str, Any]) -> dict[str, Any]:
    """The tiny fine-tune cut to 12 steps with an evaluation every 6."""
    return {
        **tiny,
        "optimization": {**tiny["optimization"], "maxSteps": 12},
        "evaluation": {"everySteps": 6},
    }


def plugin(cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = [str(PLUGIN), *args, "--kubeconfig", str(cluster.kubeconfig)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def test_follow_a_finetune_from_the_terminal(
    kube_cluster, kube_api, namespace, crds_installed, run_operator, short, tmp_path
):
    from PIL import Image

    handlers.configure(Settings(metrics_port=0, health_port=0, poll_interval=1.0))
    body = {
        "apiVersion": f"{API_GROUP}/{VERSION}",
        "kind": FINETUNEJOB.kind,
        "metadata": {"name": "tiny"},
        "spec": {**short, "learningRate": {"value": 1e-3}},
    }
    with run_operator(namespace=namespace) as runner:
        client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            API_GROUP, VERSION, namespace, FINETUNEJOB.plural, body
        )
        waited = plugin(
            kube_cluster,
            "wait",
            "ftj/tiny",
            "--for=Succeeded",
            "--timeout",
            "8m",
            "-n",
            namespace,
            timeout=600,
        )
        assert waited.returncode == ExitCode.OK, waited.stderr
        assert waited.stdout.strip() == "ftj/tiny phase Succeeded"
    assert runner.exception is None, runner.output

    got = plugin(kube_cluster, "get", "-n", namespace)
    row = got.stdout.splitlines()[1].split()
    assert row[:3] == ["ftj/tiny", "Succeeded", "1.00e-03"] and "100%" in row, got.stdout

    logs = plugin(kube_cluster, "logs", "ftj/tiny", "-n", namespace)
    assert logs.returncode == 0, logs.stderr
    curve = training_curve(logs.stdout.splitlines())
    assert curve.steps[-1] == 12 and curve.evals, "the trainer's progress lines, read through pods/log"

    png = tmp_path / "tiny.png"
    drawn = plugin(kube_cluster, "plot", "ftj/tiny", "-o", str(png), "-n", namespace)
    assert drawn.returncode == 0, drawn.stderr
    assert Image.open(png).size == (700, 450)

    described = plugin(kube_cluster, "describe", "ftj/tiny", "-n", namespace)
    print(described.stdout)
    assert "Learning rate: 1.00e-03  (from value)" in described.stdout
    assert "Batch size:   16 examples per optimiser update" in described.stdout
    assert "Trained" in described.stdout.split("Events:")[1]
