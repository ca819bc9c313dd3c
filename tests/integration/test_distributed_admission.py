"""Multi-node runs against a real API server: bad specs refused at admission naming the field, and the
Indexed Job + headless Service the operator applies accepted as they are (suspended: no trainer runs)."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from finetune_operator import handlers, naming
from finetune_operator.settings import Settings

pytestmark = pytest.mark.integration

GROUP, VERSION = "finetune.dev", "v1alpha1"
OPERATOR = "finetune_operator.handlers"
BASE = {
    "model": {"name": "/nonexistent/model"},
    "dataset": {"files": ["/nonexistent/train.jsonl"]},
    "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
    "suspend": True,
}
FT = {**BASE, "learningRate": {"value": 1e-4}}


@pytest.fixture(autouse=True)
def operator_settings():
    handlers.configure(Settings(metrics_port=0, health_port=0, poll_interval=1.0))


def create(api, namespace: str, plural: str, kind: str, name: str, spec: dict) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )


@pytest.mark.parametrize(
    ("plural", "kind", "spec", "message"),
    [
        (
            "finetunejobs",
            "FineTuneJob",
            {**FT, "resources": {**BASE["resources"], "nodes": 2}},
            "resources.nodes above 1 needs output.persistentVolumeClaim",
        ),
        (
            "lrsweeps",
            "LRSweep",
            {**BASE, "method": "rangeTest", "resources": {**BASE["resources"], "nodes": 2}},
            "resources.nodes above 1 needs output.persistentVolumeClaim",
        ),
        (
            "finetunejobs",
            "FineTuneJob",
            {
                **FT,
                "output": {"persistentVolumeClaim": "shared"},
                "resources": {**BASE["resources"], "nodes": 2},
                "distributed": {"strategy": "fsdp"},
            },
            "distributed.strategy fsdp across resources.nodes above 1 needs GPUs",
        ),
        (
            "finetunejobs",
            "FineTuneJob",
            {**FT, "output": {"persistentVolumeClaim": "shared"}, "resources": {"nodes": 65}},
            "spec.resources.nodes",
        ),
        (
            "finetunejobs",
            "FineTuneJob",
            {**FT, "distributed": {"strategy": "zero"}},
            "spec.distributed.strategy",
        ),
    ],
)
def test_bad_distributed_specs_are_refused_naming_the_field(
    kube_api, namespace, crds_installed, plural, kind, spec, message
):
    with pytest.raises(client.ApiException) as e:
        create(kube_api, namespace, plural, kind, "bad", spec)
    assert e.value.status == 422 and message in e.value.body


def test_a_multi_node_finetune_gets_an_owned_indexed_job_and_headless_service(
    kube_api, namespace, crds_installed, run_operator
):
    spec = {
        **FT,
        "output": {"persistentVolumeClaim": "shared"},
        "resources": {**BASE["resources"], "nodes": 3},
    }
    job_name = naming.train_job("multi")
    with run_operator(OPERATOR, namespace=namespace):
        created = create(kube_api, namespace, "finetunejobs", "FineTuneJob", "multi", spec)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = client.BatchV1Api(kube_api).list_namespaced_job(namespace).items
            services = client.CoreV1Api(kube_api).list_namespaced_service(namespace).items
            if jobs and services:
                break
            time.sleep(0.3)
    [job] = jobs
    [service] = services
    assert job.metadata.name == service.metadata.name == job_name
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 3, 3)
    assert job.spec.template.spec.subdomain == job_name and job.spec.suspend is True
    assert job.spec.template.spec.containers[0].command[0] == "torchrun"
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True
    assert service.spec.selector == {"batch.kubernetes.io/job-name": job_name}
    for obj in (job, service):
        [owner] = obj.metadata.owner_references
        assert (owner.kind, owner.uid, owner.controller) == ("FineTuneJob", created["metadata"]["uid"], True)
