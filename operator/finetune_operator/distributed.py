"""Distributed trainer runs: how many processes a run spans, the `torchrun` command, and the Indexed Job plus
headless Service of a multi-node run. Pure functions over a rendered single-pod Job; `planning` calls
`children` for every trainer Job, so a run of one process stays exactly the Job `rendering` made.

    resources.gpus = N, nodes = 1   one pod, `torchrun --standalone --nproc-per-node=N` (DDP, or FSDP)
    resources.nodes = M > 1         an Indexed Job (completions = parallelism = M, pods `<job>-<i>`) and a
                                    headless Service `<job>` (the pods' subdomain), `torchrun` with c10d
                                    rendezvous on `<job>-0.<job>`; one process per pod on CPU (gloo)

Restarts: on one node torchrun restarts its worker processes up to `MAX_RESTARTS` times. Across nodes a lost
process fails every pod of the group (`--max-restarts=0`: in-place rendezvous rounds proved fragile, since an
agent that gives up closes the rendezvous for good while pod 0's store lives on), and the Job re-creates all
of them, pod 0 with a fresh store. Every restart resumes from the newest complete checkpoint on the shared
output claim (the trainer's `train` resumes by itself), which admission requires for nodes > 1.
"""

from __future__ import annotations

import copy
from typing import Any

from finetune_operator.api import ResourcesSpec, WorkloadSpec

RENDEZVOUS_PORT = 29400
"""torchrun's c10d rendezvous port on pod 0 (torchrun's own default)."""
RENDEZVOUS_READ_TIMEOUT_S = 600
"""How long a pod's torchrun waits for pod 0's c10d store (its `read_timeout`; torch's default is 60 s). The
pods of one Indexed Job start minutes apart: image pulls on different nodes, and after a group failure the
Job re-creates pods with its back-off delay (10 s doubling to 6 min). A pod that gave up after 60 s failed
and spent the Job's `backoffLimit` while pod 0 was still on its way; 600 s matches the rendezvous's own
`join_timeout`."""
MAX_RESTARTS = 3
"""Group restarts torchrun makes inside one pod (`--standalone`, one node) after a worker process fails,
before the pod itself fails. A multi-node run makes none (`--max-restarts=0`): see `children`."""
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
"""The annotation (and label) the Job controller puts on each pod of an Indexed Job."""
TORCHRUN = "torchrun"


def processes_per_node(resources: ResourcesSpec) -> int:
    """Trainer processes in one pod: one per GPU, one on CPU."""
    return max(resources.gpus, 1)


def world_size(resources: ResourcesSpec) -> int:
    """Trainer processes of one run: nodes x processes per node."""
    return resources.nodes * processes_per_node(resources)


def service_name(job: str) -> str:
    """The headless Service of a multi-node Job: the Job's own name, so pods are `<job>-<i>.<job>`; with an
    `s` in front when the name starts with a digit (a Service name is an RFC 1035 label; pod hostnames and
    subdomains may start with a digit). A Job name leaves room for it (`naming.POD_INDEX_ROOM`)."""
    return job if job[:1].isalpha() else f"s{job}"


def rendezvous_endpoint(job: str) -> str:
    """`host:port` of the c10d rendezvous: the pod at index 0, by its stable DNS name."""
    return f"{job}-0.{service_name(job)}:{RENDEZVOUS_PORT}"


def torchrun_command(job: str, resources: ResourcesSpec, trainer: list[str]) -> list[str]:
    """`torchrun … --no-python <trainer command>`; the trainer's own args follow unchanged."""
    per_node = f"--nproc-per-node={processes_per_node(resources)}"
    if resources.nodes == 1:
        launch = ["--standalone", "--nnodes=1", per_node]
    else:
        launch = [
            f"--nnodes={resources.nodes}",
            per_node,
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous_endpoint(job)}",
            f"--rdzv-id={job}",
            f"--rdzv-conf=read_timeout={RENDEZVOUS_READ_TIMEOUT_S}",
        ]
    restarts = MAX_RESTARTS if resources.nodes == 1 else 0
    return [TORCHRUN, *launch, f"--max-restarts={restarts}", "--no-python", *trainer]


def headless_service(job: dict[str, Any]) -> dict[str, Any]:
    """The Service that gives a multi-node Job's pods their `<job>-<i>.<job>` names (no cluster IP; pods
    are listed before they are ready, since rendezvous happens before any of them could be)."""
    meta = job["metadata"]
    name = meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(name),
            "namespace": meta["namespace"],
            "labels": dict(meta["labels"]),
            "ownerReferences": copy.deepcopy(meta["ownerReferences"]),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"batch.kubernetes.io/job-name": name},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def children(job: dict[str, Any], workload: WorkloadSpec) -> list[dict[str, Any]]:
    """The manifests that run `job` (a single-pod trainer Job from `rendering`) at the workload's size:
    the Job itself for one process; under torchrun for several; an Indexed Job and its headless Service
    for several nodes."""
    resources = workload.resources
    if world_size(resources) == 1:
        return [job]
    job = copy.deepcopy(job)
    name = job["metadata"]["name"]
    spec = job["spec"]
    container = spec["template"]["spec"]["containers"][0]
    container["command"] = torchrun_command(name, resources, list(container["command"]))
    if resources.nodes == 1:
        return [job]
    spec["completionMode"] = "Indexed"
    spec["completions"] = spec["parallelism"] = resources.nodes
    # One lost process fails every pod of the group (its agent exits, the others' collectives break), and
    # the Job re-creates them all: pod 0 anew hosts a fresh rendezvous store, so the group forms again and
    # resumes from the shared checkpoint. Each such restart costs up to `nodes` pod failures (plus one for
    # a pod re-created while the old pod 0 still held the closed rendezvous).
    spec["backoffLimit"] = workload.backoff_limit * (resources.nodes + 1)
    spec["template"]["spec"]["subdomain"] = service_name(name)
    container["ports"] = [
        *container.get("ports", []),
        {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT},
    ]
    return [job, headless_service(job)]


def leader(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods that speak for a Job: those at completion index 0 (rank 0 writes the result and serves
    metrics) when the Job is Indexed, else all of them."""
    indexed = [p for p in pods if COMPLETION_INDEX in (p.get("metadata", {}).get("annotations") or {})]
    if not indexed:
        return pods
    return [p for p in indexed if p["metadata"]["annotations"][COMPLETION_INDEX] == "0"]
