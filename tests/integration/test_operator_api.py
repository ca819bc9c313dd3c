"""The operator against a real API server: children applied server-side, status, conditions, events,
refused children, restarts, deletion, run identity.

Trainer Jobs here are created suspended (as a Kueue queue would hold them), so no trainer runs: these tests
are about what the operator does with the API. tests/e2e runs real trainers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from finetune_operator import handlers
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


@pytest.fixture(autouse=True)
def operator_settings():
    handlers.configure(Settings(metrics_port=0, health_port=0, poll_interval=1.0))


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def create(api: client.ApiClient, namespace: str, plural: str, kind: str, name: str, spec: dict) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )


def get(api: client.ApiClient, namespace: str, plural: str, name: str) -> dict:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)


def jobs(api: client.ApiClient, namespace: str, selector: str) -> list:
    return client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=selector).items


def events(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    items = (
        client.CoreV1Api(api)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        .items
    )
    return [e.reason for e in items]


def test_range_test_sweep_gets_one_owned_job_and_pending_status(
    kube_api, namespace, crds_installed, run_operator
):
    with run_operator(OPERATOR, namespace=namespace) as runner:
        created = create(kube_api, namespace, "lrsweeps", "LRSweep", "sweep", BASE)
        job = wait_for(lambda: jobs(kube_api, namespace, "finetune.dev/lrsweep=sweep"), what="the Job")[0]
        status = wait_for(
            lambda: (
                get(kube_api, namespace, "lrsweeps", "sweep").get("status", {}).get("phase")
                and get(kube_api, namespace, "lrsweeps", "sweep")["status"]
            ),
            what="status",
        )
    assert runner.exception is None, runner.output
    sweep = get(kube_api, namespace, "lrsweeps", "sweep")
    assert job.metadata.name == "sweep-range-test"
    assert job.spec.suspend is True
    assert job.metadata.owner_references[0].uid == sweep["metadata"]["uid"]
    assert job.spec.template.spec.containers[0].args[0] == "range-test"
    assert '"/nonexistent/model"' in job.spec.template.metadata.annotations["finetune.dev/trainer-config"]
    assert status["phase"] == "Pending" and status["observedGeneration"] == 1
    assert "JobCreated" in events(kube_api, namespace, "sweep")
    assert sweep["spec"] == created["spec"], "the operator must never change spec"
    assert sweep["metadata"]["generation"] == 1


def test_restart_never_duplicates_children(kube_api, namespace, crds_installed, run_operator):
    spec = {**BASE, "method": "grid", "trials": {"learningRates": [1e-5, 1e-4, 1e-3], "parallelism": 2}}
    with run_operator(OPERATOR, namespace=namespace) as runner:
        create(kube_api, namespace, "lrsweeps", "LRSweep", "grid", spec)
        wait_for(
            lambda: len(jobs(kube_api, namespace, "finetune.dev/lrsweep=grid")) == 2, what="2 trial Jobs"
        )
    assert runner.exception is None, runner.output
    reconciles = handlers.State.metrics.reconcile_seconds.labels("LRSweep")
    before = reconciles._sum.get(), sum(b.get() for b in reconciles._buckets)
    with run_operator(OPERATOR, namespace=namespace) as runner:
        # the restarted operator reconciles the sweep it finds (and must create nothing)
        wait_for(
            lambda: sum(b.get() for b in reconciles._buckets) > before[1], what="a reconcile after restart"
        )
    assert runner.exception is None, runner.output
    names = sorted(j.metadata.name for j in jobs(kube_api, namespace, "finetune.dev/lrsweep=grid"))
    assert names == ["grid-trial-0", "grid-trial-1"], "parallelism 2 holds and nothing is created twice"
    status = get(kube_api, namespace, "lrsweeps", "grid")["status"]
    trials = status["trials"]  # the trials asked so far (Optuna's grid order); the third comes later
    assert [t["jobName"] for t in trials] == names and status["progress"]["totalSteps"] == 3
    lrs = [t["learningRate"] for t in trials]
    assert len(set(lrs)) == 2 and all(any(lr == pytest.approx(g) for g in (1e-5, 1e-4, 1e-3)) for lr in lrs)


def test_from_sweep_waits_with_a_condition_and_event(kube_api, namespace, crds_installed, run_operator):
    spec = {**BASE, "learningRate": {"fromSweep": {"name": "missing"}}}
    with run_operator(OPERATOR, namespace=namespace) as runner:
        create(kube_api, namespace, "finetunejobs", "FineTuneJob", "ftj", spec)
        status = wait_for(
            lambda: (
                get(kube_api, namespace, "finetunejobs", "ftj").get("status", {}).get("phase")
                == "WaitingForSweep"
                and get(kube_api, namespace, "finetunejobs", "ftj")["status"]
            ),
            what="WaitingForSweep",
        )
        assert not jobs(kube_api, namespace, "finetune.dev/finetunejob=ftj")
        wait_for(lambda: "WaitingForSweep" in events(kube_api, namespace, "ftj"), what="the event")
    assert runner.exception is None, runner.output
    cond = next(c for c in status["conditions"] if c["type"] == "WaitingForSweep")
    assert cond["status"] == "True" and cond["reason"] == "SweepNotFound"
    assert "learningRate.fromSweep.name" in cond["message"]


def test_a_swept_learning_rate_under_the_schedule_floor_fails_naming_the_field(
    kube_api, namespace, crds_installed, run_operator
):
    """The schema refuses a floor over a fixed value; a swept value is known only when the sweep is done."""
    create(kube_api, namespace, "lrsweeps", "LRSweep", "done", BASE)
    finished = {"phase": "Succeeded", "recommendedLearningRate": 1e-4, "effectiveBatchSize": 8}
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "lrsweeps", "done", {"status": finished}
    )
    spec = {
        **BASE,
        "learningRate": {"fromSweep": {"name": "done", "scale": "none"}},
        "schedule": {"minLearningRate": 2e-4},
    }
    with run_operator(OPERATOR, namespace=namespace) as runner:
        create(kube_api, namespace, "finetunejobs", "FineTuneJob", "floored", spec)
        status = wait_for(
            lambda: (
                (s := get(kube_api, namespace, "finetunejobs", "floored").get("status") or {}).get("phase")
                == "Failed"
                and s
            ),
            what="the Failed phase",
        )
    assert runner.exception is None, runner.output
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "MinLearningRateTooHigh"
    assert (
        "schedule.minLearningRate 0.0002 is not below the learning rate 0.0001 from sweep/done"
        in (failed["message"])
    )
    assert not jobs(kube_api, namespace, "finetune.dev/finetunejob=floored"), "nothing trained"


def test_auto_finetune_creates_and_owns_its_sweep(kube_api, namespace, crds_installed, run_operator):
    spec = {**BASE, "learningRate": {"auto": {"rangeTest": {"steps": 20}}}}
    with run_operator(OPERATOR, namespace=namespace) as runner:
        ftj = create(kube_api, namespace, "finetunejobs", "FineTuneJob", "auto", spec)
        sweep = wait_for(
            lambda: _maybe_get(kube_api, namespace, "lrsweeps", "auto-lr"), what="the owned LRSweep"
        )
        wait_for(lambda: jobs(kube_api, namespace, "finetune.dev/lrsweep=auto-lr"), what="the sweep's Job")
        status = wait_for(
            lambda: get(kube_api, namespace, "finetunejobs", "auto").get("status"), what="status"
        )
    assert runner.exception is None, runner.output
    assert sweep["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]
    assert sweep["spec"]["rangeTest"]["steps"] == 20 and sweep["spec"]["suspend"] is True
    assert status["phase"] == "Sweeping" and status["sweepName"] == "auto-lr"


def _maybe_get(api, namespace, plural, name):
    try:
        return get(api, namespace, plural, name)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise


def test_deleting_a_sweep_garbage_collects_its_jobs_and_metrics(
    kube_api, namespace, crds_installed, run_operator
):
    from prometheus_client import generate_latest

    with run_operator(OPERATOR, namespace=namespace) as runner:
        create(kube_api, namespace, "lrsweeps", "LRSweep", "gone", BASE)
        wait_for(lambda: jobs(kube_api, namespace, "finetune.dev/lrsweep=gone"), what="the Job")
        wait_for(
            lambda: 'name="gone"' in generate_latest(handlers.State.metrics.registry).decode(),
            what="the sweep's series",
        )
        client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "lrsweeps", "gone"
        )
        wait_for(
            lambda: not jobs(kube_api, namespace, "finetune.dev/lrsweep=gone"),
            timeout=60,
            what="garbage collection of the Job",
        )
        wait_for(
            lambda: 'name="gone"' not in generate_latest(handlers.State.metrics.registry).decode(),
            what="the sweep's series to go",
        )
    assert runner.exception is None, runner.output


def test_schema_rejects_bad_specs_with_the_cel_message(kube_api, namespace, crds_installed):
    bad = {**BASE, "rangeTest": {"minLearningRate": 1e-2, "maxLearningRate": 1e-3}}
    with pytest.raises(client.ApiException) as e:
        create(kube_api, namespace, "lrsweeps", "LRSweep", "bad", bad)
    assert e.value.status == 422
    assert "rangeTest.minLearningRate must be below rangeTest.maxLearningRate" in e.value.body
    with pytest.raises(client.ApiException) as e:
        create(kube_api, namespace, "finetunejobs", "FineTuneJob", "bad", {**BASE, "learningRate": {}})
    assert "learningRate needs exactly one of value, fromSweep or auto" in e.value.body


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"method": "bayesian", "trials": {"searchSpace": {}}}, "searchSpace needs at least one parameter"),
        (
            {"trials": {"searchSpace": {"learningRate": {"min": 1e-3, "max": 1e-5}}}},
            "searchSpace.learningRate.min must be below searchSpace.learningRate.max",
        ),
        (
            {"trials": {"searchSpace": {"warmupRatio": {"min": 0.0, "max": 0.2, "log": True}}}},
            "searchSpace.warmupRatio is searched on a log scale: its min must be above 0",
        ),
        (
            {"trials": {"searchSpace": {"batchSize": [4, 8]}}, "optimization": {"batchSize": 16}},
            "trials.searchSpace.batchSize is searched: remove the fixed optimization.batchSize",
        ),
        ({"method": "bayesian"}, "method bayesian needs trials.searchSpace"),
    ],
)
def test_schema_rejects_bad_search_spaces_naming_the_field(
    kube_api, namespace, crds_installed, patch, message
):
    with pytest.raises(client.ApiException) as e:
        create(kube_api, namespace, "lrsweeps", "LRSweep", "bad", {**BASE, **patch})
    assert e.value.status == 422 and message in e.value.body
    good = {"method": "bayesian", "trials": {"searchSpace": {"learningRate": {"min": 1e-5, "max": 1e-2}}}}
    create(kube_api, namespace, "lrsweeps", "LRSweep", "good", {**BASE, **good})


def test_spec_is_immutable_but_status_and_metadata_are_not(kube_api, namespace, crds_installed):
    create(kube_api, namespace, "lrsweeps", "LRSweep", "fixed", BASE)
    api = client.CustomObjectsApi(kube_api)
    with pytest.raises(client.ApiException) as e:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "lrsweeps", "fixed", {"spec": {"rangeTest": {"steps": 50}}}
        )
    assert "spec is immutable" in e.value.body
    api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "lrsweeps", "fixed", {"metadata": {"labels": {"team": "nlp"}}}
    )


def test_gpus_that_no_node_has_are_reported_not_hidden(kube_api, namespace, crds_installed, run_operator):
    spec = {**BASE, "suspend": False, "resources": {**BASE["resources"], "gpus": 8}}
    with run_operator(OPERATOR, namespace=namespace) as runner:
        create(kube_api, namespace, "lrsweeps", "LRSweep", "greedy", spec)
        status = wait_for(
            lambda: (
                "nvidia.com/gpu"
                in (
                    (s := get(kube_api, namespace, "lrsweeps", "greedy").get("status", {})).get("message")
                    or ""
                )
                and s
            ),
            timeout=60,
            what="an Unschedulable message naming the GPUs",
        )
        wait_for(lambda: "Unschedulable" in events(kube_api, namespace, "greedy"), what="the Warning event")
    assert runner.exception is None, runner.output
    assert status["phase"] == "Pending"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Unschedulable"


def test_a_burst_of_sweeps_is_reconciled_without_a_single_error(
    kube_api, namespace, crds_installed, run_operator
):
    """Many reconciles at once share the client's connections: each must leave its connection clean."""
    metrics = handlers.State.metrics
    errors = lambda: metrics.reconcile_errors.labels("LRSweep")._value.get()  # noqa: E731
    before = errors()
    names = [f"burst-{i}" for i in range(40)]
    with run_operator(OPERATOR, namespace=namespace) as runner:
        for name in names:
            create(kube_api, namespace, "lrsweeps", "LRSweep", name, BASE)
        wait_for(
            lambda: len(jobs(kube_api, namespace, "finetune.dev/role=range-test")) == len(names),
            timeout=60,
            what="a Job per sweep",
        )
        wait_for(
            lambda: all(
                get(kube_api, namespace, "lrsweeps", n).get("status", {}).get("phase") for n in names
            ),
            what="every status",
        )
        reasons = events(kube_api, namespace, "burst-0")
    assert runner.exception is None, runner.output
    assert errors() == before, runner.output
    assert reasons == ["JobCreated"], "one event per phase change, however many reconciles ran"


def test_children_are_applied_server_side_by_the_operators_field_manager(
    kube_api, namespace, crds_installed, run_operator
):
    with run_operator(OPERATOR, namespace=namespace) as runner:
        create(kube_api, namespace, "lrsweeps", "LRSweep", "ssa", BASE)
        job = wait_for(lambda: jobs(kube_api, namespace, "finetune.dev/lrsweep=ssa"), what="the Job")[0]
    assert runner.exception is None, runner.output
    applied = [f for f in job.metadata.managed_fields if f.manager == "finetune-operator"]
    assert [f.operation for f in applied] == ["Apply"]


def test_a_child_the_api_server_refuses_becomes_a_condition_and_an_event(
    kube_api, namespace, crds_installed, run_operator
):
    """The spec passes the CRD's schema, but the Job rendered from it does not pass the Job's validation: 100
    data paths of 4,000 characters each fit the schema's bounds, but not the 256 KiB of annotations the Job
    carries its trainer config in (the schema refuses bad node selectors itself since issue 17)."""
    files = [f"/data/{i:03d}/" + "d" * 3990 + ".jsonl" for i in range(100)]
    spec = {**BASE, "dataset": {"files": files}}
    with run_operator(OPERATOR, namespace=namespace) as runner:
        create(kube_api, namespace, "lrsweeps", "LRSweep", "refused", spec)
        status = wait_for(
            lambda: next(
                (
                    s
                    for s in [get(kube_api, namespace, "lrsweeps", "refused").get("status") or {}]
                    for c in s.get("conditions", [])
                    if c["type"] == "ApplyFailed" and c["status"] == "True"
                ),
                None,
            ),
            what="the ApplyFailed condition",
        )
        wait_for(lambda: "ApplyFailed" in events(kube_api, namespace, "refused"), what="the Warning event")
    assert runner.exception is None, runner.output
    failed = next(c for c in status["conditions"] if c["type"] == "ApplyFailed")
    assert failed["reason"] == "Invalid" and "Job refused-range-test" in failed["message"]
    assert "spec.template.annotations: Too long" in failed["message"], "the API server's own words"
    assert "startTime" not in status and not jobs(kube_api, namespace, "finetune.dev/lrsweep=refused")


def test_auto_stops_at_an_lrsweep_it_did_not_create_and_goes_on_once_it_is_gone(
    kube_api, namespace, crds_installed, run_operator
):
    create(kube_api, namespace, "lrsweeps", "LRSweep", "mine-lr", BASE)  # someone's own sweep
    spec = {**BASE, "learningRate": {"auto": {"rangeTest": {"steps": 20}}}}
    with run_operator(OPERATOR, namespace=namespace) as runner:
        ftj = create(kube_api, namespace, "finetunejobs", "FineTuneJob", "mine", spec)
        status = wait_for(
            lambda: (
                (s := get(kube_api, namespace, "finetunejobs", "mine").get("status") or {}).get("message")
                and "SweepNameTaken" in {c["reason"] for c in s["conditions"]}
                and s
            ),
            what="the SweepNameTaken condition",
        )
        sweep = get(kube_api, namespace, "lrsweeps", "mine-lr")
        assert not sweep["metadata"].get("ownerReferences"), "not adopted"
        assert "delete LRSweep mine-lr" in status["message"]
        stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
        assert stalled["status"] == "True"
        client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "lrsweeps", "mine-lr"
        )
        owned = wait_for(
            lambda: (
                (s := _maybe_get(kube_api, namespace, "lrsweeps", "mine-lr"))
                and s["metadata"].get("ownerReferences")
                and s
            ),
            what="the FineTuneJob's own sweep",
        )
    assert runner.exception is None, runner.output
    assert owned["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]


def test_a_re_created_resource_starts_a_fresh_run(kube_api, namespace, crds_installed, run_operator):
    """Deleting and re-creating (what the immutability error tells users to do) never resumes the old run:
    the output folder carries the uid, and the old Job is not adopted while the garbage collector works."""
    spec = {**BASE, "output": {"persistentVolumeClaim": "checkpoints"}}
    api = client.CustomObjectsApi(kube_api)

    def job_of(uid: str):
        found = jobs(kube_api, namespace, "finetune.dev/lrsweep=again")
        return next((j for j in found if j.metadata.owner_references[0].uid == uid), None)

    def sub_path(job) -> str:
        mounts = job.spec.template.spec.containers[0].volume_mounts
        return next(m.sub_path for m in mounts if m.name == "output")

    with run_operator(OPERATOR, namespace=namespace) as runner:
        first = create(kube_api, namespace, "lrsweeps", "LRSweep", "again", spec)["metadata"]["uid"]
        old = wait_for(lambda: job_of(first), what="the first run's Job")
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, "lrsweeps", "again")
        second = create(kube_api, namespace, "lrsweeps", "LRSweep", "again", spec)["metadata"]["uid"]
        new = wait_for(lambda: job_of(second), timeout=90, what="the second run's Job")
        status = wait_for(
            lambda: (
                (s := get(kube_api, namespace, "lrsweeps", "again").get("status") or {}).get("startTime")
                and s
            ),
            what="the second run's status",
        )
    assert runner.exception is None, runner.output
    assert sub_path(old) == f"lrsweep/again/{first}/range-test"
    assert sub_path(new) == f"lrsweep/again/{second}/range-test"
    assert status["phase"] == "Pending" and status["observedGeneration"] == 1


@pytest.mark.parametrize(
    ("extra", "reason", "words"),
    [
        (
            {"hubTokenSecret": {"name": "missing-hub"}},
            "CreateContainerConfigError",
            'secret "missing-hub" not found',
        ),
        (
            {"output": {"persistentVolumeClaim": "missing-claim"}},
            "Unschedulable",
            'persistentvolumeclaim "missing-claim"',
        ),
        ({"image": "Private/Trainer:1"}, "InvalidImageName", "couldn't parse image name"),
        ({"serviceAccountName": "nobody"}, "FailedCreate", "created no pod for Job stuck-range-test"),
    ],
    ids=["secret", "claim", "image", "service account"],
)
def test_a_pod_that_cannot_start_is_reported_then_fails_the_resource_after_the_deadline(
    kube_cluster, kube_api, namespace, crds_installed, run_operator, extra, reason, words
):
    if kube_cluster.runner is None:
        pytest.skip("needs the local pod runner (a kubelet's behaviour)")
    handlers.configure(Settings(metrics_port=0, health_port=0, poll_interval=1.0, pod_start_deadline=8))
    spec = {**BASE, "method": "rangeTest", "suspend": False, **extra}

    def status() -> dict:
        return get(kube_api, namespace, "lrsweeps", "stuck").get("status") or {}

    def ready_reason() -> str | None:
        return next((c["reason"] for c in status().get("conditions") or [] if c["type"] == "Ready"), None)

    with run_operator(OPERATOR, namespace=namespace) as runner:
        create(kube_api, namespace, "lrsweeps", "LRSweep", "stuck", spec)
        wait_for(lambda: ready_reason() == reason, timeout=60, what=f"a Ready condition with reason {reason}")
        pending = status()
        failed = wait_for(lambda: (s := status()).get("phase") == "Failed" and s, timeout=60, what="Failed")
        wait_for(lambda: reason in events(kube_api, namespace, "stuck"), what="the Warning event")
        # Its Job is suspended: a pod that could start later must not train for a failed resource.
        wait_for(
            lambda: all(j.spec.suspend for j in jobs(kube_api, namespace, "finetune.dev/lrsweep=stuck")),
            what="the stuck Job suspended",
        )
    assert runner.exception is None, runner.output
    assert pending["phase"] == "Pending" and words in pending["message"]
    condition = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert condition["status"] == "True" and condition["reason"] == reason
    assert "its pod did not start within 8s" in condition["message"] and words in condition["message"]
