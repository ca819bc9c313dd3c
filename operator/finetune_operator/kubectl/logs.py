"""`kubectl finetune logs`: the trainer pod's output, found through the resource's Jobs (labelled by the
operator's `naming`), read from pods/log.

Where the cluster cannot serve pods/log (no kubelet endpoint, as on the local pod runner), it falls back
to what the API does hold: the container's termination message (the trainer's result JSON, or the tail of
its output when it failed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from kubernetes.client import ApiException

from finetune_operator import naming, rendering
from finetune_operator.api import FINETUNEJOB
from finetune_operator.kubectl.cluster import Cluster
from finetune_operator.kubectl.errors import ExitCode, PluginError, api_message
from finetune_operator.kubectl.resources import Found

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def pick_job(cluster: Cluster, found: Found, trial: int | None, stage: int | None) -> dict[str, Any]:
    """The Job whose logs to show: the given trial's, else a FineTuneJob's training Job, else the
    resource's newest Job."""
    selector = f"{naming.KIND_LABELS[found.kind.kind]}={found.name}"
    if trial is not None:
        if found.kind is FINETUNEJOB:
            raise PluginError(
                ExitCode.WRONG_KIND, f"--trial: {found.ref} is a FineTuneJob; trials are an LRSweep's"
            )
        selector += f",{naming.TRIAL_LABEL}={trial}"
    if stage is not None:
        selector += f",{naming.STAGE_LABEL}={stage}"
    jobs = cluster.jobs(found.namespace, selector)
    if found.kind is FINETUNEJOB and trial is None:
        jobs = [j for j in jobs if j["metadata"]["name"] == naming.train_job(found.name)] or jobs
    if not jobs:
        what = f"trial {trial}" + (f" of stage {stage}" if stage else "") if trial is not None else "any Job"
        raise PluginError(
            ExitCode.NOT_FOUND,
            f"{found.ref} has no {what} in namespace {found.namespace} (phase {found.status.phase}); "
            f"`kubectl finetune describe {found.ref}` lists its trials and their Jobs",
        )
    if trial is not None and len(jobs) > 1:
        names = ", ".join(sorted(j["metadata"]["name"] for j in jobs))
        raise PluginError(ExitCode.USAGE, f"trial {trial} of {found.ref} matches {names}: add --stage 1 or 2")
    return max(jobs, key=lambda j: j["metadata"].get("creationTimestamp") or "")


def newest_pod(cluster: Cluster, job: dict[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    pods = cluster.pods(meta["namespace"], f"{JOB_NAME_LABEL}={meta['name']}")
    if not pods:
        suspended = (job.get("spec") or {}).get("suspend")
        why = " (the Job is suspended: a queue such as Kueue has not admitted it)" if suspended else ""
        raise PluginError(ExitCode.NOT_FOUND, f"job/{meta['name']} has no pod yet{why}")
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")


def termination(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == rendering.CONTAINER and "terminated" in (cs.get("state") or {}):
            return cs["state"]["terminated"]
    return None


def read_log(cluster: Cluster, found: Found) -> str | None:
    """The whole log of the resource's newest trainer pod (a FineTuneJob's: its training pod), or None
    when there is no pod or the cluster does not serve its log."""
    try:
        pod = newest_pod(cluster, pick_job(cluster, found, None, None))
        chunks = cluster.pod_log(found.namespace, pod["metadata"]["name"], rendering.CONTAINER, follow=False)
        return b"".join(chunks).decode(errors="replace")
    except (PluginError, ApiException):
        return None


def logs(
    cluster: Cluster,
    found: Found,
    trial: int | None,
    stage: int | None,
    follow: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    poll: float = 2.0,
) -> None:
    job = pick_job(cluster, found, trial, stage)
    pod = newest_pod(cluster, job)
    name = pod["metadata"]["name"]
    print(f"==> job/{job['metadata']['name']} pod/{name} <==", file=err)
    try:
        for chunk in cluster.pod_log(found.namespace, name, rendering.CONTAINER, follow):
            out.write(chunk.decode(errors="replace"))
            out.flush()
        return
    except ApiException as exc:
        reason = f"{exc.status} {api_message(exc)}"
    print(
        f"pods/log of pod/{name} is not served ({reason}); showing its container's termination message "
        "instead (the trainer's result, or its last output when it failed)",
        file=err,
    )
    for text in termination_messages(cluster, pod, follow, poll):
        out.write(text if text.endswith("\n") else text + "\n")


def termination_messages(cluster: Cluster, pod: dict[str, Any], follow: bool, poll: float) -> Iterator[str]:
    meta = pod["metadata"]
    while True:
        done = termination(pod)
        if done is not None:
            yield done.get("message") or f"(no termination message; exit code {done.get('exitCode')})"
            return
        if not follow:
            phase = (pod.get("status") or {}).get("phase", "Pending")
            raise PluginError(
                ExitCode.NOT_FOUND,
                f"pod/{meta['name']} is {phase} and its log is not served here; -f waits for it to finish",
            )
        time.sleep(poll)
        pods = cluster.pods(meta["namespace"], f"{JOB_NAME_LABEL}={meta['labels'][JOB_NAME_LABEL]}")
        pod = next((p for p in pods if p["metadata"]["name"] == meta["name"]), pod)
