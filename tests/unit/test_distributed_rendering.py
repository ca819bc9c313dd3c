"""Distributed runs as pure rendering: the torchrun command, the Indexed Job and its headless Service, the
world size in status and in the batch-size LR scaling, and which pod speaks for an Indexed Job."""

from __future__ import annotations

import kopf
import pytest
from plans import observe_indexed as observe
from plans import plan_finetune, plan_sweep
from pydantic import ValidationError

from finetune_operator import distributed, naming
from finetune_operator.api import FineTuneJobSpec, LRSweepSpec, ResourcesSpec
from finetune_trainer.config import TrainResult

BASE = {"model": {"name": "/models/tiny"}, "dataset": {"files": ["/data/train.jsonl"]}}
PVC = {"output": {"persistentVolumeClaim": "shared"}}
FT = {**BASE, **PVC, "learningRate": {"value": 1e-4}, "optimization": {"batchSize": 4}}


def _created(spec: dict) -> list[dict]:
    return plan_finetune("ft", spec, None, 1, {}, None).desired.children


def test_one_process_keeps_the_plain_trainer_job():
    (job,) = _created({**FT, "resources": {"gpus": 1}})
    assert job["kind"] == "Job" and "completionMode" not in job["spec"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["finetune-trainer"]


def test_several_gpus_on_one_node_run_torchrun_standalone_in_one_job():
    (job,) = _created({**FT, "resources": {"gpus": 4}})
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        "--nproc-per-node=4",
        f"--max-restarts={distributed.MAX_RESTARTS}",
        "--no-python",
        "finetune-trainer",
    ]
    assert container["args"][0] == "train"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert "completionMode" not in job["spec"] and job["spec"]["completions"] == 1


def test_several_nodes_render_an_indexed_job_and_a_headless_service():
    job, service = _created({**FT, "resources": {"gpus": 2, "nodes": 3}})
    name = naming.train_job("ft")
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimit"] == 2 * (3 + 1)  # each group restart fails every pod (plus a straggler)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name == service["metadata"]["name"]
    command = pod["containers"][0]["command"]
    assert command[: command.index("--no-python")] == [
        "torchrun",
        "--nnodes=3",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={name}-0.{name}:{distributed.RENDEZVOUS_PORT}",
        f"--rdzv-id={name}",
        "--rdzv-conf=read_timeout=600",  # pods start minutes apart: wait for pod 0's store, not 60 s
        "--max-restarts=0",  # the Job restarts the group: every pod anew, pod 0 with a fresh store
    ]
    assert {"name": "rendezvous", "containerPort": distributed.RENDEZVOUS_PORT} in pod["containers"][0][
        "ports"
    ]
    # the Service: headless, lists pods before they are ready, selects exactly this Job's pods, owned alike
    assert service["apiVersion"] == "v1" and service["kind"] == "Service"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    assert service["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-finetunejob"
    assert service["metadata"]["labels"] == job["metadata"]["labels"]


def test_a_name_that_starts_with_a_digit_gets_a_service_name_the_api_server_takes():
    """A Service name is an RFC 1035 label (a letter first); the pods' subdomain follows the Service."""
    job, service = plan_finetune(
        "7b-run", {**FT, "resources": {"gpus": 0, "nodes": 2}}, None, 1, {}, None
    ).desired.children
    name = naming.train_job("7b-run")
    assert service["metadata"]["name"] == f"s{name}" == job["spec"]["template"]["spec"]["subdomain"]
    assert (
        f"--rdzv-endpoint={name}-0.s{name}:{distributed.RENDEZVOUS_PORT}"
        in job["spec"]["template"]["spec"]["containers"][0]["command"]
    )
    longest = "x" * (naming.MAX_NAME - naming.POD_INDEX_ROOM)
    assert len(distributed.service_name("7" + longest[1:])) <= naming.MAX_NAME


def test_cpu_nodes_run_one_gloo_process_each():
    job, _ = _created({**FT, "resources": {"gpus": 0, "nodes": 2}})
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "--nproc-per-node=1" in container["command"] and "--nnodes=2" in container["command"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_status_records_world_size_and_effective_batch():
    view = plan_finetune("ft", {**FT, "resources": {"gpus": 2, "nodes": 3}}, None, 1, {}, None)
    assert view.status["worldSize"] == 6
    assert view.status["effectiveBatchSize"] == 4 * 6
    assert distributed.world_size(ResourcesSpec(gpus=0, nodes=5)) == 5


def test_the_trainers_result_sets_the_effective_batch_it_trained_at():
    from finetune_operator.children import ChildState

    result = TrainResult(learning_rate=1e-4, steps=3, effective_batch_size=16, world_size=2).to_wire()
    done = ChildState(naming.train_job("ft"), "Succeeded", result=result)
    previous = plan_finetune("ft", FT, None, 1, {}, None).status
    view = plan_finetune("ft", FT, previous, 1, {done.name: done}, None)
    assert view.status["phase"] == "Succeeded"
    assert (view.status["effectiveBatchSize"], view.status["worldSize"]) == (16, 2)


def test_sweep_lr_is_scaled_to_the_fine_tunes_world_size():
    """A sweep at batch 4 on one process; a fine-tune at batch 4 on 4 processes: linear scaling x4."""
    sweep = {"status": {"phase": "Succeeded", "recommendedLearningRate": 1e-4, "effectiveBatchSize": 4}}
    spec = {
        **FT,
        "resources": {"gpus": 0, "nodes": 4},
        "learningRate": {"fromSweep": {"name": "sw", "scale": "linear"}},
    }
    view = plan_finetune("ft", spec, None, 1, {}, sweep)
    assert view.status["learningRate"] == pytest.approx(4e-4)


def test_every_trial_job_of_a_multi_node_sweep_gets_its_headless_service():
    spec = {
        **BASE,
        **PVC,
        "method": "grid",
        "resources": {"gpus": 0, "nodes": 2},
        "dataset": {**BASE["dataset"], "validationFraction": 0.2},
        "trials": {"count": 2, "steps": 5},
        "optimization": {"batchSize": 3},
    }
    first = plan_sweep("sw", spec, None, 1, {})
    assert all(m["kind"] in ("Job", "Service") for m in first.desired.children)
    assert sum(m["kind"] == "Service" for m in first.desired.children) == 2  # one per trial Job


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {**BASE, "learningRate": {"value": 1e-4}, "resources": {"nodes": 2}},
            "output.persistentVolumeClaim",
        ),
        (
            {**FT, "resources": {"nodes": 2, "gpus": 0}, "distributed": {"strategy": "fsdp"}},
            r"distributed\.strategy fsdp",
        ),
    ],
)
def test_bad_multi_node_specs_are_refused_naming_the_field(spec: dict, field: str):
    with pytest.raises(ValidationError, match=field):
        FineTuneJobSpec.model_validate(spec)


def test_fsdp_on_gpus_and_ddp_on_cpu_nodes_are_fine():
    FineTuneJobSpec.model_validate(
        {**FT, "resources": {"nodes": 2, "gpus": 8}, "distributed": {"strategy": "fsdp"}}
    )
    FineTuneJobSpec.model_validate({**FT, "resources": {"nodes": 2, "gpus": 0}})
    LRSweepSpec.model_validate({**BASE, **PVC, "method": "rangeTest", "resources": {"nodes": 2, "gpus": 0}})


def _pod(index: str | None, phase: str, created: str, message: str = "", ip: str = "") -> dict:
    annotations = {distributed.COMPLETION_INDEX: index} if index is not None else {}
    state = {"terminated": {"exitCode": 0, "message": message}} if phase == "Succeeded" else {"running": {}}
    return {
        "metadata": {"name": f"p{index}", "creationTimestamp": created, "annotations": annotations},
        "status": {"phase": phase, "podIP": ip, "containerStatuses": [{"state": state}]},
    }


def test_index_zero_speaks_for_an_indexed_job():
    job = {"metadata": {"name": "j"}, "status": {"active": 2, "startTime": "2026-01-01T00:00:00Z"}}
    pods = [
        _pod("0", "Running", "2026-01-01T00:00:01Z", ip="127.0.0.5"),
        _pod("1", "Running", "2026-01-01T00:00:09Z", ip="127.0.0.6"),
    ]
    assert observe(job, pods).pod_ip == "127.0.0.5"
    done = {**job, "status": {**job["status"], "conditions": [{"type": "Complete", "status": "True"}]}}
    pods = [
        _pod("0", "Succeeded", "2026-01-01T00:00:01Z", '{"kind":"train","learningRate":0.001}'),
        _pod("1", "Succeeded", "2026-01-01T00:00:09Z", ""),
    ]
    assert observe(done, pods).result == {"kind": "train", "learningRate": 0.001}


def test_index_zero_speaks_for_an_indexed_job_through_the_operators_slim_pod_index():
    """The operator observes the slim bodies its pod index keeps, not whole pods: the completion index
    must survive the slimming, or the newest pod (a worker, with no result) speaks for the Job."""
    from finetune_operator.handlers import _slim

    status = {"startTime": "2026-01-01T00:00:00Z", "conditions": [{"type": "Complete", "status": "True"}]}
    done = {"metadata": {"name": "j"}, "status": status}
    pods = [
        _pod("1", "Succeeded", "2026-01-01T00:00:09Z", ""),
        _pod("0", "Succeeded", "2026-01-01T00:00:01Z", '{"kind":"train","learningRate":0.001}'),
    ]
    slim = [_slim(kopf.Body(p)) for p in pods]
    assert [s["metadata"]["annotations"] for s in slim] == [{distributed.COMPLETION_INDEX: i} for i in "10"]
    assert observe(done, slim).result == {"kind": "train", "learningRate": 0.001}
    plain = _slim(kopf.Body({**pods[0], "metadata": {**pods[0]["metadata"], "annotations": {"a": "b"}}}))
    assert "annotations" not in plain["metadata"], "no other annotation is kept"


def test_pod_zero_is_rank_zero_under_c10d():
    """c10d ranks nodes by their sorted addresses (the pods' FQDNs `<job>-<i>.<job>.<ns>.svc…`), so the
    pod at index 0, whose termination message and metrics the operator reads, is node rank 0."""
    job = naming.train_job("ft")
    fqdns = [f"{job}-{i}.{job}.ns.svc.cluster.local" for i in reversed(range(naming.MAX_NODES))]
    assert sorted(fqdns)[0] == f"{job}-0.{job}.ns.svc.cluster.local"


def test_the_trainers_exit_code_survives_torchrun():
    """torchrun exits 1 whatever its worker exited with; rank 0's error result still names the reason."""
    job = {
        "metadata": {"name": "j"},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]},
    }
    message = '{"kind":"error","exitCode":2,"reason":"BAD_CONFIG","error":"model.name: no such folder"}'
    pod = {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 1, "message": message}}}],
        },
    }
    failed = observe(job, [pod])
    assert (failed.reason, failed.exit_code, failed.message) == (
        "InvalidConfig",
        2,
        "model.name: no such folder",
    )
