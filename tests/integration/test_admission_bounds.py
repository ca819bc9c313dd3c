"""Bounded input at admission: the real API server refuses, from the generated CRDs, every spec whose names,
placement, secrets, paths, numbers or sizes the operator or Kubernetes could not use later, and its message
names the field and the fix. One table row is one bad manifest."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from pydantic import ValidationError

from finetune_operator import naming
from finetune_operator.api import FineTuneJobSpec, LRSweepSpec

pytestmark = pytest.mark.integration

GROUP, VERSION = "finetune.dev", "v1alpha1"
BASE: dict[str, Any] = {
    "model": {"name": "/models/tiny"},
    "dataset": {"files": ["/data/train.jsonl"]},
    "resources": {"gpus": 0},
    "suspend": True,
}
PLURAL = {"LRSweep": "lrsweeps", "FineTuneJob": "finetunejobs"}
MODEL = {"LRSweep": LRSweepSpec, "FineTuneJob": FineTuneJobSpec}
FTJ_VALUE = {"learningRate": {"value": 1e-4}}


def apply(api: client.ApiClient, namespace: str, kind: str, spec: dict[str, Any], name: str = "x") -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL[kind], body
    )


def refusal(api: client.ApiClient, namespace: str, kind: str, spec: dict[str, Any], name: str = "x") -> str:
    with pytest.raises(client.ApiException) as e:
        apply(api, namespace, kind, spec, name)
    assert e.value.status == 422, e.value.body
    return str(e.value.body)


def with_(section: str, **fields: Any) -> dict[str, Any]:
    return {**BASE, section: {**BASE.get(section, {}), **fields}}


# (what, kind, spec, words the refusal must contain)
REFUSED: list[tuple[str, str, dict[str, Any], list[str]]] = [
    # placement: node selectors and tolerations as the API server checks a pod's
    ("nodeSelector key", "LRSweep", with_("resources", nodeSelector={"bad key!": "a"}), ["nodeSelector"]),
    (
        "nodeSelector value",
        "LRSweep",
        with_("resources", nodeSelector={"gpu.example.com/type": "a b"}),
        ["nodeSelector"],
    ),
    ("nodeSelector long", "LRSweep", with_("resources", nodeSelector={"k": "v" * 64}), ["nodeSelector"]),
    (
        "Exists with a value",
        "LRSweep",
        with_("resources", tolerations=[{"key": "gpu", "operator": "Exists", "value": "x"}]),
        ["tolerations[].value must be empty when operator is Exists"],
    ),
    (
        "tolerationSeconds without NoExecute",
        "FineTuneJob",
        {
            **with_(
                "resources", tolerations=[{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}]
            ),
            **FTJ_VALUE,
        },
        ["tolerationSeconds applies only to effect NoExecute"],
    ),
    (
        "Equal without a key",
        "LRSweep",
        with_("resources", tolerations=[{"value": "x"}]),
        ["tolerations[].key is required unless operator is Exists"],
    ),
    (
        "toleration key",
        "LRSweep",
        with_("resources", tolerations=[{"key": "-bad-", "operator": "Exists"}]),
        ["tolerations[0].key"],
    ),
    # Secrets, claims, service accounts: Kubernetes object names and keys
    ("secret name", "LRSweep", {**BASE, "hubTokenSecret": {"name": "Hub_Token"}}, ["hubTokenSecret.name"]),
    (
        "secret key",
        "LRSweep",
        {**BASE, "hubTokenSecret": {"name": "hub", "key": "a/b"}},
        ["hubTokenSecret.key"],
    ),
    ("claim name", "LRSweep", with_("output", persistentVolumeClaim="My Claim"), ["persistentVolumeClaim"]),
    ("service account", "LRSweep", {**BASE, "serviceAccountName": "A_B"}, ["serviceAccountName"]),
    (
        "fromSweep name",
        "FineTuneJob",
        {**BASE, "learningRate": {"fromSweep": {"name": "Not A Name"}}},
        ["fromSweep.name"],
    ),
    # output.subPath stays inside the claim
    ("absolute subPath", "LRSweep", with_("output", subPath="/etc"), ["output.subPath must be a relative"]),
    ("subPath with ..", "LRSweep", with_("output", subPath="runs/../../x"), ["output.subPath"]),
    ("subPath ..", "FineTuneJob", {**with_("output", subPath=".."), **FTJ_VALUE}, ["output.subPath"]),
    # numbers the Job (int32) or the trainer (numpy seeds) cannot hold
    ("TTL over int32", "LRSweep", {**BASE, "ttlSecondsAfterFinished": 2**31}, ["ttlSecondsAfterFinished"]),
    ("deadline over int32", "LRSweep", {**BASE, "activeDeadlineSeconds": 2**31}, ["activeDeadlineSeconds"]),
    ("optimization seed", "LRSweep", with_("optimization", seed=2**32), ["optimization.seed"]),
    ("dataset seed", "LRSweep", with_("dataset", seed=-1), ["dataset.seed"]),
    ("trials seed", "LRSweep", {**BASE, "method": "random", "trials": {"seed": 2**32}}, ["trials.seed"]),
    (
        "grid LR of 0",
        "LRSweep",
        {**BASE, "method": "grid", "trials": {"learningRates": [0, 1e-4]}},
        ["trials.learningRates[0]"],
    ),
    (
        "grid LR over 10",
        "LRSweep",
        {**BASE, "method": "grid", "trials": {"learningRates": [1e-4, 11]}},
        ["trials.learningRates[1]"],
    ),
    # strings and lists bounded
    ("model name", "LRSweep", with_("model", name="m" * 4097), ["model.name"]),
    ("model revision", "LRSweep", with_("model", revision="r" * 254), ["model.revision"]),
    ("data file path", "LRSweep", with_("dataset", files=["f" * 4097]), ["dataset.files[0]"]),
    ("data files count", "LRSweep", with_("dataset", files=["f"] * 257), ["dataset.files"]),
    ("text field", "LRSweep", with_("dataset", textField="t" * 254), ["dataset.textField"]),
    ("target module", "LRSweep", with_("adapter", type="lora", targetModules=["m" * 254]), ["targetModules"]),
    ("image", "LRSweep", {**BASE, "image": "i" * 1025}, ["spec.image"]),
    ("cpu quantity length", "LRSweep", with_("resources", cpu="1" * 65), ["resources.cpu"]),
    ("maxSteps", "LRSweep", with_("optimization", maxSteps=10_000_001), ["optimization.maxSteps"]),
    (
        "schedule floor over 10",
        "LRSweep",
        with_("schedule", minLearningRate=11),
        ["schedule.minLearningRate"],
    ),
    ("eval cadence", "LRSweep", with_("evaluation", everySteps=10_000_001), ["evaluation.everySteps"]),
    (
        "nodeSelector size",
        "LRSweep",
        with_("resources", nodeSelector={f"k{i}": "v" for i in range(65)}),
        ["nodeSelector"],
    ),
    # trials need validation data
    (
        "grid without validation",
        "LRSweep",
        {**with_("dataset", validationFraction=0), "method": "grid"},
        ["trials compare validation losses", "dataset.validationFraction"],
    ),
    (
        "adaptive without validation",
        "LRSweep",
        with_("dataset", validationFraction=0),
        ["dataset.validationFraction is 0"],
    ),
    (
        "auto without validation",
        "FineTuneJob",
        {**with_("dataset", validationFraction=0), "learningRate": {"auto": {}}},
        ["learningRate.auto's adaptive trials", "dataset.validationFraction"],
    ),
    # what admission can know before a pod starts: QLoRA's 4-bit base needs CUDA
    (
        "QLoRA without a GPU",
        "FineTuneJob",
        with_("adapter", type="qlora"),
        ["adapter.type qlora needs a CUDA GPU", "resources.gpus"],
    ),
    # item 8: the schedule's floor under its peak
    (
        "floor at the peak",
        "FineTuneJob",
        {**BASE, "learningRate": {"value": 1e-4}, "schedule": {"minLearningRate": 1e-4}},
        ["schedule.minLearningRate must be below learningRate.value"],
    ),
]


@pytest.mark.parametrize(("kind", "spec", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_bad_input_is_refused_naming_the_field(kube_api, namespace, crds_installed, kind, spec, words):
    spec = spec if kind == "LRSweep" else {**FTJ_VALUE, **spec}
    body = refusal(kube_api, namespace, kind, spec)
    for word in words:
        assert word in body, body
    with pytest.raises(ValidationError):  # the operator's own models, the CRDs' source, agree
        MODEL[kind].model_validate(spec)


@pytest.mark.parametrize(
    ("status", "field"),
    [
        ({"recommendedLearningRate": -1e-3}, "status.recommendedLearningRate"),
        ({"phase": "Done"}, "status.phase"),
        ({"progress": {"step": 1, "percent": 101}}, "status.progress.percent"),
    ],
    ids=["negative recommendation", "unknown phase", "percent over 100"],
)
def test_status_values_are_bounded_whoever_writes_them(kube_api, namespace, crds_installed, status, field):
    """An admin (or a buggy writer) cannot store a status the tools reading it would trust."""
    apply(kube_api, namespace, "LRSweep", BASE, name="st")
    with pytest.raises(client.ApiException) as e:
        client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "lrsweeps", "st", {"status": status}
        )
    assert e.value.status == 422 and field in str(e.value.body), e.value.body


@pytest.mark.parametrize(
    ("kind", "limit"), [("LRSweep", naming.MAX_LRSWEEP_NAME), ("FineTuneJob", naming.MAX_FINETUNEJOB_NAME)]
)
def test_names_are_bounded_so_every_child_name_fits_63(kube_api, namespace, crds_installed, kind, limit):
    spec = BASE if kind == "LRSweep" else {**BASE, "learningRate": {"auto": {}}}
    body = refusal(kube_api, namespace, kind, spec, name="n" * (limit + 1))
    assert f"metadata.name must be at most {limit} characters" in body, body
    apply(kube_api, namespace, kind, spec, name="n" * limit)
    longest = (
        naming.adaptive_trial_job("n" * limit, 2, 63)
        if kind == "LRSweep"
        else naming.adaptive_trial_job(naming.auto_sweep("n" * limit), 2, 63)
    )
    # the longest Job name, plus the pod index a multi-node run's pods add (`<job>-63`), fills 63 exactly
    assert len(longest) + naming.POD_INDEX_ROOM == 63, longest
    assert longest.startswith("n" * limit), "derived names are never hashed"


def test_good_input_at_the_bounds_is_accepted(kube_api, namespace, crds_installed):
    spec = {
        **BASE,
        "method": "grid",
        "dataset": {
            "files": ["/data/train.jsonl"],
            "validationFraction": 0,
            "validationFiles": ["/d/v.jsonl"],
        },
        "trials": {"learningRates": [1e-6, 10], "seed": 2**32 - 1},
        "optimization": {"seed": 2**32 - 1},
        "resources": {
            "gpus": 0,
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": ""},
            "tolerations": [
                {"operator": "Exists"},
                {
                    "key": "nvidia.com/gpu",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 30,
                },
                {"key": "dedicated", "value": "ml-team", "effect": "NoSchedule"},
            ],
        },
        "hubTokenSecret": {"name": "hf.token-1", "key": "HF_TOKEN.v1"},
        "output": {"persistentVolumeClaim": "models", "subPath": "team/a..b/run-1"},
        "ttlSecondsAfterFinished": 2**31 - 1,
    }
    apply(kube_api, namespace, "LRSweep", spec, name="bounds")
    LRSweepSpec.model_validate(spec)
    apply(kube_api, namespace, "LRSweep", {**with_("dataset", validationFraction=0), "method": "rangeTest"})
