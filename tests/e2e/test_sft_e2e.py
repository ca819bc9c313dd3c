"""End to end: a chat fine-tune through a FineTuneJob, trainer pod really running (local pod runner, CPU).

A tiny GPT-2 with a byte-level BPE tokenizer and a ChatML chat template is built here and put, with a
`messages` dataset, on a PersistentVolumeClaim that the FineTuneJob mounts read-only (`sourceVolume`); the
Hugging Face cache is another claim (`modelCache`), the output a third. The pod runner gives each claim a
stable local folder, so the test writes the model there and reads the model card back.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from kubernetes import client
from resources import create_finetunejob as apply

from finetune_localcluster import podspec
from finetune_trainer.tiny_model import build_chat_model_dir, toy_chats

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OPERATOR = "finetune_operator.handlers"
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


def wait_finished(api, namespace: str, name: str, timeout: float = 300) -> dict:
    deadline, status = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
        status = obj.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"FineTuneJob {name} not finished after {timeout}s: {status}")


@pytest.fixture(autouse=True)
def operator_settings():
    from finetune_operator import handlers
    from finetune_operator.settings import Settings

    handlers.configure(Settings(metrics_port=0, health_port=0, poll_interval=1.0))


def test_a_chat_model_on_a_pvc_fine_tunes_on_messages(
    kube_api, namespace, crds_installed, run_operator, local_runner_config
):
    assert not os.path.exists("/sources"), "the container path must not exist on this host"
    claim = podspec.pvc_folder(local_runner_config.root, namespace, "models")
    build_chat_model_dir(claim / "chat-model", "gpt2")
    (claim / "data").mkdir(parents=True)
    (claim / "data" / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_chats(200)))
    spec = {
        "model": {"name": "/sources/chat-model"},
        "dataset": {"files": ["/sources/data/chats.jsonl"], "validationFraction": 0.1},
        "sourceVolume": {"persistentVolumeClaim": "models"},
        "modelCache": {"persistentVolumeClaim": "hf-cache"},
        "output": {"persistentVolumeClaim": "out"},
        "learningRate": {"value": 3e-3},
        "optimization": {"batchSize": 8, "maxSeqLength": 64, "maxSteps": 30},
        "evaluation": {"everySteps": 10},
        "checkpoints": {"everySteps": 10},
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
        "backoffLimit": 0,
    }
    core = client.CoreV1Api(kube_api)
    for name in ("models", "hf-cache", "out"):  # claims of the default StorageClass, as a cluster would have
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            },
        )
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        created = apply(kube_api, namespace, "chat", spec)
        status = wait_finished(kube_api, namespace, "chat")
    assert runner.exception is None, runner.output
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["lastCheckpoint"] == "checkpoint-30" and status["bestCheckpoint"].startswith("checkpoint-")
    assert (status["model"], status["modelFrom"], status["modelCard"]) == ("final", "best", "README.md")
    assert status["evalLoss"] is not None and status["bestEvalLoss"] <= status["evalLoss"]

    out = podspec.pvc_folder(local_runner_config.root, namespace, "out")
    train = out / "finetunejob" / "chat" / created["metadata"]["uid"] / "train"
    card = (train / "final" / "README.md").read_text()
    assert "| Peak learning rate | 0.003 |" in card and "chat data" in card
    assert "| Learning rate from | learningRate.value (set by hand) |" in card
    assert (train / status["bestCheckpoint"]).is_dir() and (train / "checkpoint-30").is_dir()
    assert not list(claim.glob("**/checkpoint-*")), "the source claim is read-only: nothing written there"
    assert Path(podspec.pvc_folder(local_runner_config.root, namespace, "hf-cache")).is_dir()
