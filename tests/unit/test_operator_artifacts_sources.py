"""Sources, artifacts and tracking on the operator side, as pure functions: what the trainer pod mounts and
gets in its environment, what the API server rejects at admission (CEL, same message as pydantic), what the
trainer config carries, and how the training result lands in the FineTuneJob's status.
"""

from __future__ import annotations

from typing import Any

import pytest
from plans import NOW, plan_finetune
from pydantic import ValidationError

from finetune_operator import rendering
from finetune_operator.api import FINETUNEJOB, LRSWEEP, FineTuneJobSpec, LRSweepSpec
from finetune_operator.children import ChildState
from finetune_operator.settings import Settings
from finetune_tooling import crdgen

SPEC = {"model": {"name": "/sources/models/tiny"}, "dataset": {"files": ["/sources/data/chat.jsonl"]}}
FTJ = {**SPEC, "learningRate": {"value": 2e-5}}


def pod_of(spec: dict[str, Any], kind: str = "FineTuneJob", role: str = "train") -> dict[str, Any]:
    if kind == "FineTuneJob":
        parsed: Any = FineTuneJobSpec.model_validate(spec)
        config = rendering.train_config(parsed, 2e-5)
    else:
        parsed = LRSweepSpec.model_validate(spec)
        config = rendering.range_test_config(parsed)
    job = rendering.trainer_job(
        owner=rendering.Owner(kind, "x", "ns", "uid-1"),
        name="x-" + role,
        role=role,
        args=[role],
        config=config,
        workload=parsed,
        settings=Settings(),
    )
    return job["spec"]["template"]["spec"]


def test_a_source_pvc_is_mounted_read_only_where_the_spec_says() -> None:
    pod = pod_of({**FTJ, "sourceVolume": {"persistentVolumeClaim": "models", "subPath": "team-a"}})
    volume = next(v for v in pod["volumes"] if v["name"] == "sources")
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "sources")
    assert mount == {"name": "sources", "mountPath": "/sources", "readOnly": True, "subPath": "team-a"}


def test_the_model_cache_pvc_is_hf_home_and_without_one_hf_home_is_in_the_pods_tmp() -> None:
    pod = pod_of({**SPEC, "modelCache": {"persistentVolumeClaim": "hf-cache"}}, "LRSweep", "range-test")
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HF_HOME"] == rendering.HF_HOME
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model-cache")
    assert mount["mountPath"] == rendering.HF_HOME and "readOnly" not in mount
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in pod["volumes"]
    bare = pod_of(SPEC, "LRSweep", "range-test")
    assert {e["name"]: e.get("value") for e in bare["containers"][0]["env"]}["HF_HOME"] == "/tmp/hf-home"
    assert not any(v["name"] in ("model-cache", "sources") for v in bare["volumes"])


def test_a_private_model_gets_hf_token_from_the_secret() -> None:
    pod = pod_of({**FTJ, "hubTokenSecret": {"name": "hf", "key": "write"}})
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "write"}}


@pytest.mark.parametrize(
    ("source", "ref"),
    [
        ({"secretKeyRef": {"name": "ml", "key": "uri"}}, {"secretKeyRef": {"name": "ml", "key": "uri"}}),
        (
            {"configMapKeyRef": {"name": "ml", "key": "uri"}},
            {"configMapKeyRef": {"name": "ml", "key": "uri"}},
        ),
    ],
)
def test_mlflow_tracking_uri_comes_from_a_secret_or_configmap(source: dict, ref: dict) -> None:
    spec = {**FTJ, "tracking": {"reportTo": "mlflow", "mlflowTrackingUri": source}}
    pod = pod_of(spec)
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"] == ref
    config = rendering.train_config(FineTuneJobSpec.model_validate(spec), 1e-4)
    assert config.tracking.report_to == "mlflow"


def test_the_train_config_carries_the_artifacts_and_where_the_lr_came_from() -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            **FTJ,
            "adapter": {"type": "lora"},
            "hubTokenSecret": {"name": "hf"},
            "output": {
                "persistentVolumeClaim": "out",
                "mergeAdapter": True,
                "pushToHub": True,
                "hubModelId": "org/model",
            },
        }
    )
    config = rendering.train_config(spec, 3e-4, "LRSweep s, learningRate.fromSweep")
    assert config.output.merge_adapter and config.output.push_to_hub
    assert config.output.hub_model_id == "org/model" and config.learning_rate_source.startswith("LRSweep s")
    assert "persistentVolumeClaim" not in config.to_wire()["output"]  # the volume is the operator's business


def test_an_auto_sweep_gets_the_volume_but_not_the_merge_or_push() -> None:
    job = FineTuneJobSpec.model_validate(
        {
            **SPEC,
            "learningRate": {"auto": {}},
            "hubTokenSecret": {"name": "hf"},
            "sourceVolume": {"persistentVolumeClaim": "models"},
            "output": {"persistentVolumeClaim": "out", "pushToHub": True, "hubModelId": "o/m"},
        }
    )
    sweep = rendering.sweep_spec_for_auto(job).to_wire()
    assert sweep["output"] == {"persistentVolumeClaim": "out"}
    assert sweep["sourceVolume"]["persistentVolumeClaim"] == "models"


def _error(model: Any, data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return str(e.value)


@pytest.mark.parametrize(
    ("kind", "patch", "message"),
    [
        (
            LRSWEEP,
            {"adapter": {"type": "qlora"}, "resources": {"gpus": 0}},
            "adapter.type qlora needs a CUDA GPU: set resources.gpus to 1 or more",
        ),
        (
            FINETUNEJOB,
            {"adapter": {"type": "qlora"}, "resources": {"gpus": 0}},
            "adapter.type qlora needs a CUDA GPU: set resources.gpus to 1 or more",
        ),
        (
            FINETUNEJOB,
            {"output": {"pushToHub": True, "hubModelId": "o/m"}},
            "output.pushToHub needs hubTokenSecret",
        ),
        (
            FINETUNEJOB,
            {"output": {"pushToHub": True}, "hubTokenSecret": {"name": "hf"}},
            "output.hubModelId is required when output.pushToHub is true",
        ),
        (
            FINETUNEJOB,
            {"tracking": {"reportTo": "mlflow"}},
            "tracking.mlflowTrackingUri is required when tracking.reportTo is mlflow",
        ),
        (
            LRSWEEP,
            {"dataset": {"files": ["a.jsonl"], "config": "x"}},
            "dataset.config needs dataset.name",
        ),
    ],
)
def test_admission_rejects_with_the_field_named(kind: Any, patch: dict, message: str) -> None:
    assert message in crdgen.render_crd(kind)  # the API server's CEL rule
    data = {**(FTJ if kind is FINETUNEJOB else SPEC), **patch}
    assert message in _error(kind.spec, data)  # the same rule in pydantic


def test_qlora_on_a_gpu_is_admitted() -> None:
    LRSweepSpec.model_validate({**SPEC, "adapter": {"type": "qlora"}, "resources": {"gpus": 1}})


def test_finished_training_names_best_and_last_checkpoints_and_the_artifacts() -> None:
    result = {
        "kind": "train",
        "learningRate": 2e-5,
        "steps": 30,
        "totalSteps": 30,
        "evalLoss": 1.5,
        "bestEvalLoss": 1.2,
        "bestCheckpoint": "checkpoint-20",
        "lastCheckpoint": "checkpoint-30",
        "finalModel": "final",
        "finalModelFrom": "best",
        "mergedModel": "merged",
        "modelCard": "README.md",
        "hubUrl": "https://huggingface.co/o/m",
    }
    plan = plan_finetune(
        "f",
        FTJ,
        {"learningRate": 2e-5, "learningRateSource": "value"},
        1,
        {"f-train": ChildState("f-train", "Succeeded", result=result)},
        None,
        now=NOW,
    )
    s = plan.status
    assert (s["bestCheckpoint"], s["lastCheckpoint"], s["checkpoint"]) == (
        "checkpoint-20",
        "checkpoint-30",
        "checkpoint-20",
    )
    assert (s["model"], s["modelFrom"], s["mergedModel"]) == ("final", "best", "merged")
    assert (s["modelCard"], s["hubUrl"]) == ("README.md", "https://huggingface.co/o/m")


def test_the_training_job_records_where_its_learning_rate_came_from() -> None:
    plan = plan_finetune(
        "f",
        {**SPEC, "learningRate": {"fromSweep": {"name": "s"}}},
        {"learningRate": 3e-4, "learningRateSource": "sweep/s"},
        1,
        {},
        None,
        now=NOW,
    )
    assert plan.create[0].config.learning_rate_source == "LRSweep s, learningRate.fromSweep"
