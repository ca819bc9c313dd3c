"""Trial results outlive their Jobs: every trial-based method records each result in the status as soon
as it is known, and never creates a trial Job twice, even when every finished Job is deleted at once
(`ttlSecondsAfterFinished: 0`, or a person)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from plans import plan_sweep
from test_planning_adaptive import BASE, RANGE_TEST, SPEC, finished, parabola

from finetune_operator.children import ChildState

GRID = {**BASE, "method": "grid", "trials": {"learningRates": [1e-4, 1e-3, 1e-2, 3e-2], "parallelism": 2}}
RANDOM = {**BASE, "method": "random", "trials": {"count": 4, "parallelism": 2, "seed": 3}}


def run_deleting_finished_jobs(spec: dict, limit: int = 200) -> tuple[dict, list[str]]:
    """Reconcile to the end; each finished Job is deleted right after the reconcile that saw it finish.
    Returns the final status and every Job name created, in order."""
    children: dict[str, ChildState] = {}
    created: list[str] = []
    requests: dict = {}
    status: dict | None = None
    if spec.get("method", "adaptive") == "adaptive":
        created.append("s-range-test")
        children["s-range-test"] = ChildState("s-range-test", "Succeeded", result=RANGE_TEST)
    for _ in range(limit):
        plan = plan_sweep("s", spec, status, 1, dict(children))
        status = plan.status
        if status["phase"] in ("Succeeded", "Failed"):
            return status, created
        for name in [n for n, c in children.items() if c.phase != "Running"]:
            del children[name]  # seen finished by the reconcile above: its Job goes
        for child in plan.create:
            created.append(child.name)
            children[child.name] = ChildState(child.name, "Running")
            requests[child.name] = child
        oldest = next((n for n, c in children.items() if c.phase == "Running"), None)
        assert oldest is not None, "nothing running and nothing finished"
        config = requests[oldest].config
        children[oldest] = finished(oldest, config.learning_rate, config.optimization.max_steps, parabola)
    raise AssertionError("the sweep never finished")


@pytest.mark.parametrize("spec", [GRID, RANDOM, SPEC], ids=["grid", "random", "adaptive"])
def test_every_trial_job_is_created_once_though_finished_jobs_are_deleted(spec):
    status, created = run_deleting_finished_jobs(spec)
    assert len(created) == len(set(created)), f"a trial ran twice: {created}"
    assert status["phase"] == "Succeeded", status["message"]
    trials = status["trials"]
    assert len(trials) == len(created) - (spec is SPEC)
    assert all(t["phase"] == "Succeeded" and t["evalLoss"] is not None for t in trials), trials


@pytest.mark.parametrize("spec", [GRID, SPEC], ids=["grid", "adaptive"])
def test_a_trial_seen_running_whose_job_vanished_fails_and_is_not_run_again(spec):
    children = {"s-range-test": ChildState("s-range-test", "Succeeded", result=RANGE_TEST)}
    first = plan_sweep("s", spec, None, 1, children)
    names = [c.name for c in first.create]
    running = {**children, **{n: ChildState(n, "Running") for n in names}}
    seen = plan_sweep("s", spec, first.status, 1, running)
    assert [t["phase"] for t in seen.status["trials"] if t["jobName"] in names] == ["Running"] * len(names)
    gone = {**children, **{n: ChildState(n, "Running") for n in names[1:]}}  # names[0] deleted unseen
    after = plan_sweep("s", spec, seen.status, 1, gone)
    assert names[0] not in [c.name for c in after.create], "its result is lost, not re-run"
    lost = next(t for t in after.status["trials"] if t["jobName"] == names[0])
    assert (lost["phase"], lost["reason"], lost.get("evalLoss")) == ("Failed", "JobDeleted", None)
    again = plan_sweep("s", spec, after.status, 1, gone)
    assert names[0] not in [c.name for c in again.create]
    assert next(t for t in again.status["trials"] if t["jobName"] == names[0])["reason"] == "JobDeleted"


def test_a_trial_created_but_not_yet_seen_is_applied_again_not_lost():
    """The Job index may lag the create: a Pending trial without its Job is re-applied (idempotent)."""
    first = plan_sweep("s", GRID, None, 1, {})
    again = plan_sweep("s", GRID, first.status, 1, {})
    assert [c.name for c in again.create] == [c.name for c in first.create]


def test_a_short_ttl_is_set_on_finished_jobs_only_with_the_status_that_holds_their_results():
    """Jobs are created without `ttlSecondsAfterFinished` (the TTL controller could delete a Job before its
    result was read); the plan that records a finished trial asks for it, once, and a finished sweep asks
    for it on the Jobs that finished with it."""
    spec = {**GRID, "ttlSecondsAfterFinished": 5}
    first = plan_sweep("s", spec, None, 1, {})
    assert first.create and all("ttlSecondsAfterFinished" not in c.manifest["spec"] for c in first.create)
    assert first.desired.expire == {}
    names = [c.name for c in first.create]
    done = finished(names[0], first.create[0].config.learning_rate, 6, parabola)
    children = {names[0]: done, names[1]: ChildState(names[1], "Running")}
    second = plan_sweep("s", spec, first.status, 1, children)
    recorded = {t["jobName"]: t for t in second.status["trials"]}
    assert recorded[names[0]]["evalLoss"] is not None, "the status being written holds the result"
    assert second.desired.expire == {names[0]: 5}, "the running trial keeps no TTL yet"
    expired = {names[0]: replace(done, expires=True), names[1]: children[names[1]]}
    assert plan_sweep("s", spec, second.status, 1, expired).desired.expire == {}, "set once"
    assert plan_sweep("s", GRID, first.status, 1, children).desired.expire == {}, "no TTL in the spec"


def test_a_finished_sweep_sets_the_ttl_its_last_reconcile_could_not():
    spec = {**GRID, "ttlSecondsAfterFinished": 0}
    status, _ = run_deleting_finished_jobs(GRID)
    last = finished("s-trial-3", 3e-2, 6, parabola)
    settled = plan_sweep("s", spec, status, 1, {"s-trial-3": last})
    assert settled.status["phase"] == "Succeeded" and settled.create == []
    assert settled.desired.expire == {"s-trial-3": 0}
    gone = plan_sweep("s", spec, status, 1, {"s-trial-3": replace(last, expires=True)})
    assert gone.desired.expire == {}


@pytest.mark.parametrize("spec", [GRID, SPEC], ids=["grid", "adaptive"])
def test_a_recorded_result_survives_its_job_losing_its_pods_first(spec):
    """The TTL controller deletes a Job in the foreground: its pods (and the termination message with the
    result) go before the Job does. A result the status recorded stays; nothing is read from the podless
    Job, and the adaptive range test is not read again either."""
    children = {"s-range-test": ChildState("s-range-test", "Succeeded", result=RANGE_TEST)}
    first = plan_sweep("s", spec, None, 1, children)
    done = {
        c.name: finished(c.name, c.config.learning_rate, c.config.optimization.max_steps, parabola)
        for c in first.create
    }
    second = plan_sweep("s", spec, first.status, 1, {**children, **done})
    recorded = {t["jobName"]: t["evalLoss"] for t in second.status["trials"] if t["jobName"] in done}
    assert recorded and all(loss is not None for loss in recorded.values())
    podless = {name: ChildState(name, "Succeeded", expires=True) for name in [*children, *done]}
    third = plan_sweep("s", spec, second.status, 1, podless)
    assert third.status["phase"] not in ("Failed",), third.status["message"]
    after = {t["jobName"]: t["evalLoss"] for t in third.status["trials"] if t["jobName"] in done}
    assert after == recorded
    assert third.status.get("rangeTest") == second.status.get("rangeTest")
