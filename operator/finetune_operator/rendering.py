"""Pure rendering: a resource's spec in, the trainer config and the batch/v1 Job that runs it out.

Nothing here talks to the API server; everything is a function of its arguments (unit-tested).
"""

from __future__ import annotations

import json
from typing import Any

from finetune_operator import naming
from finetune_operator.api import API_VERSION, FineTuneJobSpec, LRSweepSpec, WorkloadSpec
from finetune_operator.settings import Settings
from finetune_trainer.adaptive import trial_sections
from finetune_trainer.config import ExitCode, Spec, TrainerConfig, TrainingSections

CONTAINER = "trainer"
CONFIG_DIR = "/etc/finetune"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"
CONFIG_ANNOTATION = f"{naming.GROUP}/trainer-config"
"""Pod-template annotation holding the trainer config; a downward-API volume makes it `CONFIG_FILE`.
(One object per run: nothing to create first, nothing extra for the garbage collector.)"""
OUTPUT_DIR = "/output"
TERMINATION_LOG = "/dev/termination-log"
METRICS_PORT_NAME = "metrics"


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


# ------------------------------------------------------------------------------------------ trainer configs


def _sections(spec: Spec, of: type[Spec]) -> dict[str, Any]:
    """The fields of `of` (a base class of `spec`'s model) as keyword arguments."""
    return {f: getattr(spec, f) for f in of.model_fields}


def _shared_sections(spec: LRSweepSpec | FineTuneJobSpec) -> dict[str, Any]:
    return _sections(spec, TrainingSections) | {"output_dir": OUTPUT_DIR}


def range_test_config(spec: LRSweepSpec) -> TrainerConfig:
    return TrainerConfig(**_shared_sections(spec), range_test=spec.range_test)


def trial_config(spec: LRSweepSpec, learning_rate: float, steps: int) -> TrainerConfig:
    """A short fine-tune at one LR: the sweep's recipe cut to `steps` steps (the trainer's own rule)."""
    return TrainerConfig(**trial_sections(spec, steps), output_dir=OUTPUT_DIR, learning_rate=learning_rate)


def train_config(spec: FineTuneJobSpec, learning_rate: float) -> TrainerConfig:
    return TrainerConfig(
        **_shared_sections(spec),
        early_stopping=spec.early_stopping,
        checkpoints=spec.checkpoints,
        learning_rate=learning_rate,
    )


def sweep_spec_for_auto(job: FineTuneJobSpec) -> LRSweepSpec:
    """The LRSweep an `auto` FineTuneJob creates: same model, data, adapter, batch, length and placement."""
    auto = job.learning_rate.auto
    assert auto is not None
    return LRSweepSpec(
        **_sections(job, WorkloadSpec),
        **_sections(job, TrainingSections),
        method=auto.method,
        range_test=auto.range_test,
        adaptive=auto.adaptive,
    )


# ---------------------------------------------------------------------------------------------- manifests


def _resources(workload: WorkloadSpec, settings: Settings) -> dict[str, Any]:
    amounts: dict[str, str] = {
        "cpu": workload.resources.cpu or settings.default_cpu,
        "memory": workload.resources.memory or settings.default_memory,
    }
    if workload.resources.gpus:
        amounts["nvidia.com/gpu"] = str(workload.resources.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _output_volume(workload: WorkloadSpec, kind: str, owner_name: str, role: str) -> tuple[dict, dict]:
    mount = {"name": "output", "mountPath": OUTPUT_DIR}
    if workload.output.persistent_volume_claim:
        volume = {
            "name": "output",
            "persistentVolumeClaim": {"claimName": workload.output.persistent_volume_claim},
        }
        mount["subPath"] = workload.output.sub_path or f"{kind.lower()}/{owner_name}/{role}"
    else:
        volume = {"name": "output", "emptyDir": {}}
    return volume, mount


def trainer_job(
    *,
    name: str,
    namespace: str,
    kind: str,
    owner_name: str,
    owner: dict[str, Any],
    role: str,
    args: list[str],
    config: TrainerConfig,
    workload: WorkloadSpec,
    settings: Settings,
    trial: int | None = None,
    stage: int | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job that runs one trainer command (`range-test`, `trial` or `train`) on `config`."""
    labels = naming.child_labels(kind, owner_name, role, trial, stage)
    output_volume, output_mount = _output_volume(workload, kind, owner_name, role)
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HF_HOME", "value": "/tmp/hf-home"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if workload.hub_token_secret:
        ref = workload.hub_token_secret
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    container = {
        "name": CONTAINER,
        "image": workload.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.trainer_command),
        "args": [
            *args,
            "--config",
            CONFIG_FILE,
            "--output-dir",
            OUTPUT_DIR,
            "--result-file",
            TERMINATION_LOG,
            "--metrics-port",
            str(settings.trainer_metrics_port),
        ],
        "env": env,
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": settings.trainer_metrics_port}],
        "resources": _resources(workload, settings),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            output_mount,
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    tolerations = [*settings.tolerations, *(t.to_wire() for t in workload.resources.tolerations or [])]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {
                "name": "config",
                "downwardAPI": {
                    "items": [
                        {
                            "path": "config.json",
                            "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"},
                        }
                    ]
                },
            },
            output_volume,
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    node_selector = {**settings.node_selector, **(workload.resources.node_selector or {})}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if workload.service_account_name:
        pod_spec["serviceAccountName"] = workload.service_account_name
    job_spec: dict[str, Any] = {
        "backoffLimit": workload.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "suspend": workload.suspend,
        "podFailurePolicy": {
            "rules": [
                {  # a bad config or a diverged run fails the same way every time: never retry
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [int(ExitCode.BAD_CONFIG), int(ExitCode.DIVERGED)],
                    },
                },
                {  # evictions and preemptions do not count against backoffLimit
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {CONFIG_ANNOTATION: json.dumps(config.to_wire(), indent=1, sort_keys=True)},
            },
            "spec": pod_spec,
        },
    }
    if workload.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = workload.active_deadline_seconds
    if workload.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = workload.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]},
        "spec": job_spec,
    }
