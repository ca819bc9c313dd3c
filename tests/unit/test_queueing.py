"""Kueue labels, suspend and pod passthrough in rendered trainer Jobs; what a Kueue Workload says; the spec
rules around queueName and suspend; the operator's default-queue flag."""

from __future__ import annotations

import pytest
from plans import range_test_job
from pydantic import ValidationError

from finetune_operator import queueing, rendering, settings
from finetune_operator.api import LRSweepSpec
from finetune_operator.settings import Settings

SPEC = {"model": {"name": "/models/tiny"}, "dataset": {"files": ["/data/train.jsonl"]}, "method": "rangeTest"}
GPU_PLACEMENT = Settings(
    node_selector={"nvidia.com/gpu.present": "true"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
)


def _job(spec: dict, settings: Settings | None = None) -> dict:
    return range_test_job({**SPEC, **spec}, settings)


def test_unqueued_job_has_no_queue_label_and_runs_at_once():
    job = _job({})
    assert queueing.QUEUE_LABEL not in job["metadata"]["labels"]
    assert job["spec"]["suspend"] is False


def test_queued_job_carries_the_queue_label_and_is_created_suspended():
    job = _job({"queueName": "team-a"})
    assert job["metadata"]["labels"][queueing.QUEUE_LABEL] == "team-a"
    assert job["spec"]["suspend"] is True
    # the operator's own labels stay (it finds its Jobs by them)
    assert job["metadata"]["labels"]["finetune.dev/lrsweep"] == "s"


def test_operator_default_queue_applies_unless_the_spec_names_one():
    default = Settings(default_queue_name="shared")
    assert _job({}, default)["metadata"]["labels"][queueing.QUEUE_LABEL] == "shared"
    assert _job({"queueName": "mine"}, default)["metadata"]["labels"][queueing.QUEUE_LABEL] == "mine"
    assert _job({}, default)["spec"]["suspend"] is True


def test_paused_run_renders_suspended_jobs():
    assert _job({"suspend": True})["spec"]["suspend"] is True
    assert _job({"suspend": False})["spec"]["suspend"] is False


def test_pod_passthrough_labels_annotations_priority_and_pull_secrets():
    job = _job(
        {
            "podLabels": {"team": "nlp", "cost-centre": "42"},
            "podAnnotations": {"example.com/owner": "alice"},
            "priorityClassName": "high",
            "imagePullSecrets": [{"name": "regcred"}],
        }
    )
    template = job["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "nlp"
    assert template["metadata"]["labels"]["finetune.dev/lrsweep"] == "s"
    assert template["metadata"]["annotations"]["example.com/owner"] == "alice"
    assert rendering.CONFIG_ANNOTATION in template["metadata"]["annotations"]
    assert template["spec"]["priorityClassName"] == "high"
    assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert "team" not in job["metadata"]["labels"]  # pod labels are the pods', not the Job's


def test_no_passthrough_fields_render_nothing_extra():
    pod = _job({})["spec"]["template"]["spec"]
    assert "priorityClassName" not in pod and "imagePullSecrets" not in pod


def test_cpu_only_run_gets_no_gpu_node_selector_or_toleration():
    cpu = _job({"resources": {"gpus": 0}}, GPU_PLACEMENT)["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    gpu = _job({"resources": {"gpus": 1}}, GPU_PLACEMENT)["spec"]["template"]["spec"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    # a CPU run's own placement is kept
    own = _job({"resources": {"gpus": 0, "nodeSelector": {"pool": "cpu"}}}, GPU_PLACEMENT)
    assert own["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "cpu"}


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"queueName": "q", "suspend": False}, "suspend: false contradicts"),
        ({"podLabels": {"finetune.dev/lrsweep": "x"}}, "podLabels keys"),
        ({"podLabels": {"kueue.x-k8s.io/queue-name": "x"}}, "use queueName"),
        ({"podLabels": {"ok": "not a label value"}}, "podLabels keys"),
        ({"podAnnotations": {"finetune.dev/trainer-config": "{}"}}, "podAnnotations keys"),
    ],
)
def test_spec_rules_refuse_contradictions_and_reserved_keys(spec: dict, words: str):
    with pytest.raises(ValidationError, match=words):
        LRSweepSpec.model_validate({**SPEC, **spec})


def test_queue_name_with_suspend_true_or_unset_is_fine():
    assert LRSweepSpec.model_validate({**SPEC, "queueName": "q", "suspend": True}).suspend is True
    assert LRSweepSpec.model_validate({**SPEC, "queueName": "q"}).suspend is None


def test_default_queue_flag_is_checked():
    parsed = settings.from_args(settings.parser().parse_args(["--default-queue-name", "shared"]))
    assert parsed.default_queue_name == "shared"
    assert settings.from_args(settings.parser().parse_args([])).default_queue_name is None
    with pytest.raises(SystemExit, match="--default-queue-name"):
        settings.from_args(settings.parser().parse_args(["--default-queue-name", "Not_A_Queue"]))


# ------------------------------------------------------------------ what Kueue's Workload says


def _workload(*conditions: dict, active: bool = True) -> dict:
    return {"spec": {"active": active}, "status": {"conditions": list(conditions)}}


def test_workload_pending_for_quota_is_queued_with_kueues_words():
    wl = _workload(
        {
            "type": "QuotaReserved",
            "status": "False",
            "reason": "Pending",
            "message": "couldn't assign flavors to pod set main: insufficient unused quota for cpu",
        }
    )
    state = queueing.workload_state("team-a", wl)
    assert (state.phase, state.reason) == ("Queued", "Pending")
    assert "insufficient unused quota" in state.message and "team-a" in state.message


def test_admitted_workload_is_admitted():
    wl = _workload(
        {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "Quota reserved"},
        {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted"},
    )
    assert queueing.workload_state("q", wl).phase == "Admitted"


def test_evicted_workload_is_queued_again_with_the_eviction_reason():
    wl = _workload(
        {"type": "Admitted", "status": "False", "reason": "NoReservation", "message": ""},
        {"type": "Evicted", "status": "True", "reason": "Deactivated", "message": "deactivated by user"},
        active=False,
    )
    state = queueing.workload_state("q", wl)
    assert (state.phase, state.reason) == ("Queued", "Deactivated")
    assert not queueing.workload_active(wl)


def test_no_workload_yet_and_unavailable_queue():
    assert queueing.workload_state("q", None).reason == "WorkloadPending"
    gone = queueing.unavailable("q", "Kueue is not installed (no workloads.kueue.x-k8s.io)")
    assert gone.phase == "QueueUnavailable" and "Kueue is not installed" in gone.message


# ------------------------------------------------------------------ planning: conditions and pausing

FT_SPEC = {
    "model": {"name": "/models/tiny"},
    "dataset": {"files": ["/data/train.jsonl"]},
    "learningRate": {"value": 1e-4},
}
TRAIN_JOB = "ft-train"


def _plan(spec: dict, children: dict, queue: dict | None = None, previous: dict | None = None, gen: int = 1):
    from finetune_operator import planning

    r = planning.Resource("FineTuneJob", "ns", "ft", "uid-ft", gen, {**FT_SPEC, **spec}, previous or {})
    return planning.plan_finetune(r, children, queue=queue, now="2026-01-01T00:00:10Z")


def _conditions(desired) -> dict:
    return {c.type: c for c in desired.status.conditions}


def _pending(reason: str | None = "Suspended"):
    from finetune_operator.children import ChildState

    return {TRAIN_JOB: ChildState(TRAIN_JOB, "Pending", reason=reason)}


def _running():
    from finetune_operator.children import ChildState

    return {TRAIN_JOB: ChildState(TRAIN_JOB, "Running", pod_ip="10.0.0.1")}


def test_plan_shows_queued_with_kueues_reason_then_admitted():
    waiting = queueing.QueueState("Queued", "Pending", "queue q: insufficient quota for cpu", "wl-1")
    first = _plan({"queueName": "q"}, _pending(), {TRAIN_JOB: waiting})
    cond = _conditions(first)
    assert (cond["Queued"].status, cond["Queued"].reason) == ("True", "Pending")
    assert "insufficient quota" in cond["Queued"].message and cond["Admitted"].status == "False"
    assert first.status.phase == "Pending" and "insufficient quota" in (first.status.message or "")
    assert not (first.resume or first.suspend or first.activate or first.deactivate)  # Kueue starts it

    admitted = queueing.QueueState("Admitted", "Admitted", "The workload is admitted", "wl-1")
    second = _plan({"queueName": "q"}, _running(), {TRAIN_JOB: admitted}, first.status.to_wire())
    cond = _conditions(second)
    assert (cond["Queued"].status, cond["Admitted"].status) == ("False", "True")
    assert second.status.phase == "Running"


def test_plan_says_queue_unavailable_and_stalls():
    gone = queueing.unavailable("q", "there is no LocalQueue q in namespace ns")
    desired = _plan({"queueName": "q"}, _pending(), {TRAIN_JOB: gone})
    cond = _conditions(desired)
    assert cond["QueueUnavailable"].status == "True" and cond["Stalled"].status == "True"
    assert "no LocalQueue q" in cond["QueueUnavailable"].message
    assert desired.status.phase == "Pending"


def test_pausing_an_unqueued_run_suspends_and_resuming_unsuspends():
    paused = _plan({"suspend": True}, _running(), gen=2)
    assert paused.suspend == [TRAIN_JOB] and _conditions(paused)["Suspended"].status == "True"
    again = _plan({"suspend": True}, _pending("Suspended"), previous=paused.status.to_wire(), gen=2)
    assert again.suspend == []  # already suspended: nothing to do
    resumed = _plan({}, _pending("Suspended"), previous=paused.status.to_wire(), gen=3)
    assert resumed.resume == [TRAIN_JOB] and _conditions(resumed)["Suspended"].status == "False"


def test_pausing_a_queued_run_deactivates_its_workload_and_never_touches_the_job():
    admitted = queueing.QueueState("Admitted", "Admitted", "", "wl-1", active=True)
    paused = _plan({"queueName": "q", "suspend": True}, _running(), {TRAIN_JOB: admitted}, gen=2)
    assert paused.deactivate == ["wl-1"] and not paused.suspend and not paused.resume
    inactive = queueing.QueueState("Queued", "Deactivated", "", "wl-1", active=False)
    resumed = _plan({"queueName": "q"}, _pending(), {TRAIN_JOB: inactive}, paused.status.to_wire(), gen=3)
    assert resumed.activate == ["wl-1"] and not resumed.resume


def test_a_finished_run_ignores_a_later_pause():
    done = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "learningRate": 1e-4,
        "conditions": [],
    }
    desired = _plan({"suspend": True}, {}, previous=done, gen=2)
    assert desired.status.phase == "Succeeded" and desired.status.observed_generation == 2
    assert not desired.children and not desired.suspend


def test_an_auto_fine_tune_pauses_and_resumes_its_own_sweep_until_the_rate_is_known():
    from finetune_operator import planning
    from finetune_operator.planning import SweepRef

    spec = {**FT_SPEC, "learningRate": {"auto": {"method": "rangeTest"}}}
    sweep = SweepRef("ft-lr", {"phase": "Sweeping"}, "uid-ft")

    def plan(extra: dict, ref: SweepRef = sweep):
        r = planning.Resource("FineTuneJob", "ns", "ft", "uid-ft", 2, {**spec, **extra}, {})
        return planning.plan_finetune(r, {}, ref, now="2026-01-01T00:00:10Z")

    assert plan({"suspend": True}).sweep_suspend == ("ft-lr", True)
    assert plan({}).sweep_suspend == ("ft-lr", False)
    assert plan({"suspend": True}, SweepRef("ft-lr", {}, "someone-else")).sweep_suspend is None


# ------------------------------------------------------------------ reading Kueue (workloads.py)


class _Answers:
    """The applier's one request method, answering from a table of paths (404 for anything else)."""

    def __init__(self, answers: dict[str, dict]) -> None:
        self.answers, self.asked = answers, []

    def request(self, method: str, resource_path: str, body, *_: object) -> dict:
        from finetune_operator.applier import ApiError

        self.asked.append(resource_path)
        if resource_path not in self.answers:
            raise ApiError(404, "NotFound", f"{resource_path} not found")
        return self.answers[resource_path]


WORKLOADS = "/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads"
LOCAL_QUEUE = "/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/localqueues/q"


def test_no_kueue_api_makes_every_unfinished_job_queue_unavailable():
    from finetune_operator import workloads

    states = workloads.queue_states(_Answers({}), "ns", "q", {**_pending(), "done": _done()})
    assert list(states) == [TRAIN_JOB]
    assert (
        states[TRAIN_JOB].phase == "QueueUnavailable"
        and "Kueue is not installed" in states[TRAIN_JOB].message
    )


def test_a_waiting_job_without_its_local_queue_is_queue_unavailable():
    from finetune_operator import workloads

    answers = _Answers({WORKLOADS: {"items": []}})
    states = workloads.queue_states(answers, "ns", "q", _pending())
    assert states[TRAIN_JOB].phase == "QueueUnavailable" and "no LocalQueue q in namespace ns" in (
        states[TRAIN_JOB].message
    )
    answers = _Answers({WORKLOADS: {"items": [_owned_workload()]}, LOCAL_QUEUE: {}})
    states = workloads.queue_states(answers, "ns", "q", _pending())
    assert (states[TRAIN_JOB].phase, states[TRAIN_JOB].workload) == ("Queued", "job-ft-train-abcde")


def _done():
    from finetune_operator.children import ChildState

    return ChildState("done", "Succeeded")


def _owned_workload() -> dict:
    return {
        "metadata": {
            "name": "job-ft-train-abcde",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": TRAIN_JOB}],
        },
        "spec": {"active": True},
        "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending"}]},
    }
