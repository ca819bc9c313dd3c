"""Pure rendering: a validated spec in, trainer configs and complete child manifests out.

Called only by `planning`, which decides which children exist; nothing here talks to the API server.
Manifests are what the applier sends as they are (server-side apply): batch/v1 Jobs and the LRSweep of an
`auto` FineTuneJob, each owned by its resource.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from finetune_operator import naming, queueing
from finetune_operator.api import (
    API_VERSION,
    LRSWEEP,
    FineTuneJobSpec,
    FineTuneTrackingSpec,
    LRSweepSpec,
    OutputSpec,
    WorkloadSpec,
)
from finetune_operator.settings import Settings
from finetune_trainer.adaptive import range_test_spec, trial_sections
from finetune_trainer.config import (
    ArtifactSpec,
    ExitCode,
    Spec,
    TrackingSpec,
    TrainerConfig,
    TrainingSections,
)

CONTAINER = "trainer"
CONFIG_DIR = "/etc/finetune"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"
CONFIG_ANNOTATION = f"{naming.GROUP}/trainer-config"
"""Pod-template annotation holding the trainer config; a downward-API volume makes it `CONFIG_FILE`.
(One object per run: nothing to create first, nothing extra for the garbage collector.)"""
OUTPUT_DIR = "/output"
HF_HOME = "/cache/huggingface"
"""HF_HOME in trainer pods: the `modelCache` PVC when set, else a folder of the pod's /tmp emptyDir."""
TERMINATION_LOG = "/dev/termination-log"
METRICS_PORT_NAME = "metrics"


@dataclass(frozen=True)
class Owner:
    """The resource a child belongs to."""

    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        """The controller ownerReference: the garbage collector deletes the child with its owner."""
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
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
    """The range-test Job's config; an adaptive sweep's stops past the loss minimum (as ``recommend``'s)."""
    rt = range_test_spec(spec.range_test, spec.adaptive) if spec.method == "adaptive" else spec.range_test
    return TrainerConfig(**_shared_sections(spec), range_test=rt)


def trial_config(
    spec: LRSweepSpec, learning_rate: float, steps: int, match_epochs: bool = False
) -> TrainerConfig:
    """A short fine-tune at one LR: the sweep's recipe cut to `steps` steps (the trainer's own rule; an
    adaptive stage's trials with `match_epochs`)."""
    sections = trial_sections(spec, steps, match_epochs=match_epochs)
    return TrainerConfig(**sections, output_dir=OUTPUT_DIR, learning_rate=learning_rate)


def train_config(spec: FineTuneJobSpec, learning_rate: float, source: str | None = None) -> TrainerConfig:
    """The fine-tune's config; `source` (where the learning rate came from) goes into the model card."""
    return TrainerConfig(
        **_shared_sections(spec),
        early_stopping=spec.early_stopping,
        checkpoints=spec.checkpoints,
        learning_rate=learning_rate,
        output=ArtifactSpec(**_sections(spec.output, ArtifactSpec)),
        tracking=TrackingSpec(**_sections(spec.tracking, TrackingSpec)),
        learning_rate_source=source,
    )


def sweep_spec_for_auto(job: FineTuneJobSpec) -> LRSweepSpec:
    """The LRSweep an `auto` FineTuneJob creates: same model, data, adapter, batch, length and placement."""
    auto = job.learning_rate.auto
    assert auto is not None
    return LRSweepSpec(
        **_sections(job, WorkloadSpec) | {"output": OutputSpec(**_sections(job.output, OutputSpec))},
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


def _output_volume(workload: WorkloadSpec, owner: Owner, folder: str) -> tuple[dict, dict]:
    mount = {"name": "output", "mountPath": OUTPUT_DIR}
    if workload.output.persistent_volume_claim:
        volume = {
            "name": "output",
            "persistentVolumeClaim": {"claimName": workload.output.persistent_volume_claim},
        }
        base = workload.output.sub_path or naming.run_folder(owner.kind, owner.name, owner.uid)
        mount["subPath"] = f"{base.rstrip('/')}/{folder}"
    else:
        volume = {"name": "output", "emptyDir": {}}
    return volume, mount


def _source_volumes(workload: WorkloadSpec) -> tuple[list[dict], list[dict]]:
    """The read-only models-and-data PVC and the shared HF_HOME PVC, when set: (volumes, mounts)."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if workload.source_volume:
        src = workload.source_volume
        volumes.append(
            {
                "name": "sources",
                "persistentVolumeClaim": {"claimName": src.persistent_volume_claim, "readOnly": True},
            }
        )
        mount = {"name": "sources", "mountPath": src.mount_path, "readOnly": True}
        if src.sub_path:
            mount["subPath"] = src.sub_path
        mounts.append(mount)
    if workload.model_cache:
        cache = workload.model_cache
        volumes.append(
            {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.persistent_volume_claim}}
        )
        mount = {"name": "model-cache", "mountPath": HF_HOME}
        if cache.sub_path:
            mount["subPath"] = cache.sub_path
        mounts.append(mount)
    return volumes, mounts


def _tracking_env(workload: WorkloadSpec, role: str) -> list[dict[str, Any]]:
    """MLFLOW_TRACKING_URI for a fine-tune that reports to MLflow, from its Secret or ConfigMap key."""
    tracking = getattr(workload, "tracking", None)
    if role != "train" or not isinstance(tracking, FineTuneTrackingSpec) or tracking.report_to != "mlflow":
        return []
    uri = tracking.mlflow_tracking_uri
    if uri is None:
        return []
    if uri.secret_key_ref:
        ref = {"secretKeyRef": {"name": uri.secret_key_ref.name, "key": uri.secret_key_ref.key}}
    else:
        assert uri.config_map_key_ref
        ref = {"configMapKeyRef": {"name": uri.config_map_key_ref.name, "key": uri.config_map_key_ref.key}}
    return [{"name": "MLFLOW_TRACKING_URI", "valueFrom": ref}]


def trainer_job(
    *,
    owner: Owner,
    name: str,
    role: str,
    args: list[str],
    config: TrainerConfig,
    workload: WorkloadSpec,
    settings: Settings,
    trial: int | None = None,
    stage: int | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job that runs one trainer command (`range-test`, `trial` or `train`) on `config`."""
    labels = naming.child_labels(owner.kind, owner.name, role, trial, stage)
    queue = queueing.queue_name(workload.queue_name, settings.default_queue_name)
    output_volume, output_mount = _output_volume(workload, owner, naming.child_folder(role, trial, stage))
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HF_HOME", "value": HF_HOME if workload.model_cache else "/tmp/hf-home"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if workload.hub_token_secret:
        ref = workload.hub_token_secret
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    env += _tracking_env(workload, role)
    source_volumes, source_mounts = _source_volumes(workload)
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
            *source_mounts,
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    gpu = workload.resources.gpus > 0  # the operator's placement defaults are for GPU nodes only
    tolerations = [
        *(settings.tolerations if gpu else []),
        *(t.to_wire() for t in workload.resources.tolerations or []),
    ]
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
            *source_volumes,
        ],
    }
    node_selector = {**(settings.node_selector if gpu else {}), **(workload.resources.node_selector or {})}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if workload.service_account_name:
        pod_spec["serviceAccountName"] = workload.service_account_name
    if workload.priority_class_name:
        pod_spec["priorityClassName"] = workload.priority_class_name
    if workload.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in workload.image_pull_secrets]
    job_spec: dict[str, Any] = {
        "backoffLimit": workload.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "suspend": bool(workload.suspend) or queue is not None,  # Kueue unsuspends a queued Job
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
                "labels": {**(workload.pod_labels or {}), **labels},
                "annotations": {
                    **(workload.pod_annotations or {}),
                    CONFIG_ANNOTATION: json.dumps(config.to_wire(), indent=1, sort_keys=True),
                },
            },
            "spec": pod_spec,
        },
    }
    if workload.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = workload.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": {**labels, queueing.QUEUE_LABEL: queue} if queue else labels,
            "ownerReferences": [owner.reference()],
        },
        "spec": job_spec,
    }


def auto_sweep(owner: Owner, name: str, spec: LRSweepSpec) -> dict[str, Any]:
    """The LRSweep an `auto` FineTuneJob creates and owns (labelled like its Jobs)."""
    return {
        "apiVersion": API_VERSION,
        "kind": LRSWEEP.kind,
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": {**naming.MANAGED_BY, naming.KIND_LABELS[owner.kind]: owner.name},
            "ownerReferences": [owner.reference()],
        },
        "spec": spec.to_wire(),
    }
