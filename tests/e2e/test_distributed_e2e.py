"""End to end: a FineTuneJob across two pods (`resources.nodes: 2`, CPU, gloo) on the local pod runner.

The operator renders an Indexed Job and a headless Service; the pods find each other as
`<job>-<i>.<job>` and torchrun's c10d rendezvous forms one process group across them. The tiny GPT-2 has
its dropout turned off, so the two-pod run at 4 examples per pod must log the same loss at every step as
one process at 8 (the trainer's own logged losses, rank 0's pod log), within 1e-4 relative. Then a worker
process is killed mid-run: torchrun restarts the whole group (should a pod run out of group restarts, the
Job re-creates it at its index), which resumes from the newest checkpoint on the shared claim and finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from resources import create_finetunejob as apply

from finetune_localcluster import podspec
from finetune_operator import distributed, naming
from finetune_trainer.tiny_model import build_model_dir, write_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OPERATOR = "finetune_operator.handlers"
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


@pytest.fixture(autouse=True)
def operator_settings():
    from finetune_operator import handlers
    from finetune_operator.settings import Settings

    handlers.configure(Settings(metrics_port=0, health_port=0, poll_interval=1.0))


@pytest.fixture(scope="module")
def no_dropout(tmp_path_factory) -> dict[str, Any]:
    """A deterministic tiny GPT-2 (dropout off) and the toy data; packed, so every batch has equal tokens."""
    root = tmp_path_factory.mktemp("dist")
    model = build_model_dir(root / "model", "gpt2")
    config = json.loads((model / "config.json").read_text())
    config.update({k: 0.0 for k in config if "pdrop" in k or "dropout" in k})
    (model / "config.json").write_text(json.dumps(config))
    data = write_dataset(root / "toy.jsonl")
    return {
        "model": {"name": str(model)},
        "dataset": {"files": [str(data)], "validationFraction": 0.1, "packing": True},
        "schedule": {"type": "constant"},
        "learningRate": {"value": 3e-3},
        "evaluation": {"everySteps": 1000},
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
        "backoffLimit": 0,
    }


def status_of(api, namespace: str, name: str) -> dict:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj.get("status") or {}


def wait_until(what: str, predicate, timeout: float = 600, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"no {what} after {timeout}s")


def pods_by_index(api, namespace: str, job: str) -> dict[str, client.V1Pod]:
    """The newest pod at each index (a failed pod the Job replaced stays listed beside its successor)."""
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    pods.sort(key=lambda p: p.metadata.creation_timestamp)
    return {p.metadata.annotations[distributed.COMPLETION_INDEX]: p for p in pods}


def steps_logged(api, namespace: str, pod: str) -> list[dict[str, Any]]:
    text = client.CoreV1Api(api).read_namespaced_pod_log(pod, namespace, container="trainer")
    events = [json.loads(line) for line in text.splitlines() if line.startswith('{"event"')]
    return [e for e in events if e["event"] == "step"]


def create_claim(api, namespace: str, name: str) -> None:
    client.CoreV1Api(api).create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )


def single_process_losses(spec: dict, tmp_path: Path, batch: int, steps: int) -> list[float]:
    """The same recipe in one process at the global batch: its logged loss per step."""
    config = {key: spec[key] for key in ("model", "dataset", "schedule", "evaluation") if key in spec} | {
        "optimization": {**spec["optimization"], "batchSize": batch, "maxSteps": steps},
        "learningRate": spec["learningRate"]["value"],
        "outputDir": str(tmp_path / "single"),
        "checkpoints": {"everySteps": 1000, "saveFinalModel": False},
    }
    (tmp_path / "single.json").write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "finetune_trainer", "train", "--config", str(tmp_path / "single.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, "--metrics-port", "0", "--result-file", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"event"')]
    return [e["loss"] for e in events if e["event"] == "step"]


def test_two_pods_train_as_one_process_group_with_the_single_process_losses(
    kube_api, namespace, crds_installed, run_operator, no_dropout, tmp_path
):
    steps = 6
    spec = {
        **no_dropout,
        "resources": {**no_dropout["resources"], "nodes": 2},
        "output": {"persistentVolumeClaim": "shared"},
        "optimization": {"batchSize": 4, "maxSeqLength": 32, "maxSteps": steps},
        "checkpoints": {"everySteps": 3},
    }
    create_claim(kube_api, namespace, "shared")
    job = naming.train_job("dist")
    with run_operator(OPERATOR, namespace=namespace, timeout=900) as runner:
        apply(kube_api, namespace, "dist", spec)
        status = wait_until("finished FineTuneJob", lambda: _finished(kube_api, namespace, "dist"))
        pods = pods_by_index(kube_api, namespace, job)
        logs = {i: _log_tail(kube_api, namespace, p.metadata.name) for i, p in pods.items()}
        logged = steps_logged(kube_api, namespace, pods["0"].metadata.name) if "0" in pods else []
    assert runner.exception is None, runner.output
    assert status["phase"] == "Succeeded", f"{status.get('message')}\n{logs}"
    assert (status["worldSize"], status["effectiveBatchSize"]) == (2, 8)

    indexed = client.BatchV1Api(kube_api).read_namespaced_job(job, namespace)
    assert (indexed.spec.completion_mode, indexed.spec.completions, indexed.status.succeeded) == (
        "Indexed",
        2,
        2,
    )
    service = client.CoreV1Api(kube_api).read_namespaced_service(job, namespace)
    assert service.spec.cluster_ip == "None" and service.metadata.owner_references[0].kind == "FineTuneJob"
    pods = pods_by_index(kube_api, namespace, job)
    assert {i: (p.spec.hostname, p.spec.subdomain) for i, p in pods.items()} == {
        "0": (f"{job}-0", job),
        "1": (f"{job}-1", job),
    }
    assert steps_logged(kube_api, namespace, pods["1"].metadata.name) == [], "only rank 0 reports"
    assert json.loads(pods["0"].status.container_statuses[0].state.terminated.message)["worldSize"] == 2

    two_pods = [e["loss"] for e in logged]
    one_process = single_process_losses(spec, tmp_path, batch=8, steps=steps)
    assert len(two_pods) == len(one_process) == steps
    for k, (a, b) in enumerate(zip(two_pods, one_process, strict=True), start=1):
        assert abs(a - b) <= 1e-4 * abs(b), f"step {k}: two pods {a}, one process {b}"


def _finished(api, namespace: str, name: str) -> dict | None:
    status = status_of(api, namespace, name)
    return status if status.get("phase") in ("Succeeded", "Failed") else None


def _worker_processes(pod_ip: str) -> list[int]:
    """PIDs of trainer worker processes (torchrun's children: they have RANK) of the pod at `pod_ip`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(
                kv.split("=", 1) for kv in (entry / "environ").read_bytes().decode().split("\0") if "=" in kv
            )
        except (OSError, UnicodeDecodeError):
            continue
        if env.get("POD_IP") == pod_ip and "RANK" in env and "TORCHELASTIC_RUN_ID" in env:
            found.append(int(entry.name))
    return found


def _log_tail(api, namespace: str, pod: str) -> str:
    text = client.CoreV1Api(api).read_namespaced_pod_log(pod, namespace, container="trainer")
    return "\n".join(line for line in text.splitlines() if not line.startswith('{"event":"step"'))[-6000:]


@pytest.mark.timeout(900)  # two start-ups of both pods' interpreters, and a restart, on a loaded machine
def test_killing_a_worker_restarts_the_group_from_the_checkpoint(
    kube_api, namespace, crds_installed, run_operator, no_dropout, local_runner_config
):
    steps, every = 600, 10  # long enough to be killed mid-run however fast the machine is today
    spec = {
        **no_dropout,
        "resources": {**no_dropout["resources"], "nodes": 2},
        "output": {"persistentVolumeClaim": "shared"},
        "optimization": {"batchSize": 4, "maxSeqLength": 32, "maxSteps": steps},
        "checkpoints": {"everySteps": every, "keep": 2},
        "backoffLimit": 2,  # each group restart fails both pods: the operator renders 2 x (2 + 1)
    }
    create_claim(kube_api, namespace, "shared")
    job = naming.train_job("restart")
    with run_operator(OPERATOR, namespace=namespace, timeout=900) as runner:
        created = apply(kube_api, namespace, "restart", spec)
        out = podspec.pvc_folder(local_runner_config.root, namespace, "shared")
        train = out / "finetunejob" / "restart" / created["metadata"]["uid"] / "train"
        # wait for a complete checkpoint, then kill the worker process of pod 1 (not the pod)
        wait_until("a complete checkpoint", lambda: list(train.glob("checkpoint-*/trainer_state.json")))

        def pod1_workers() -> list[int]:
            """The worker processes of the pod now at index 1 (re-read: the Job may have replaced it)."""
            if _finished(kube_api, namespace, "restart"):
                raise AssertionError("the run ended before a worker could be killed: make it longer")
            pod = pods_by_index(kube_api, namespace, job).get("1")
            return _worker_processes(pod.status.pod_ip) if pod and pod.status.pod_ip else []

        victims = wait_until("pod 1's worker", pod1_workers)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        status = wait_until("finished FineTuneJob", lambda: _finished(kube_api, namespace, "restart"))
        pods = pods_by_index(kube_api, namespace, job)
        logs = {i: _log_tail(kube_api, namespace, p.metadata.name) for i, p in pods.items()}
    assert runner.exception is None, runner.output
    assert status["phase"] == "Succeeded", f"{status.get('message')}\n{logs}"
    assert status["progress"]["step"] == steps
    result = json.loads(pods["0"].status.container_statuses[0].state.terminated.message)
    assert result["steps"] == steps
    assert result["resumedFromStep"] is not None and every <= result["resumedFromStep"] < steps
