"""The reconcile loop: the work queue, the resource cache, and one reconcile through the real planner and
applier logic, with the API server's side recorded in memory (tests/integration runs the real one)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from finetune_operator.api import EvalPoint, LRSweepStatus, TrialStatus
from finetune_operator.applier import ApiError, Applier, status_delta
from finetune_operator.children import ChildState
from finetune_operator.controller import Controller, Outcome, Snapshot, slim, sweep_waited_for
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.settings import Settings
from finetune_operator.workqueue import WorkQueue


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------ work queue


def test_a_key_waits_once_however_often_it_is_added():
    async def go():
        q = WorkQueue()
        for key in ("a", "b", "a", "a"):
            q.add(key)
        assert len(q) == 2
        return [await q.get(), await q.get()]

    assert run(go()) == ["a", "b"]


def test_a_key_being_processed_is_not_handed_out_again_until_done():
    async def go():
        q = WorkQueue()
        q.add("a")
        first = await q.get()
        q.add("a")  # changed while a worker has it
        assert len(q) == 0
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.get(), 0.05)
        q.done(first)
        return await asyncio.wait_for(q.get(), 1)

    assert run(go()) == "a"


def test_done_without_a_new_add_does_not_requeue():
    async def go():
        q = WorkQueue()
        q.add("a")
        q.done(await q.get())
        return len(q)

    assert run(go()) == 0


def test_add_after_fires_once_and_the_earliest_delay_wins():
    async def go():
        q = WorkQueue()
        q.add_after("a", 5.0)
        q.add_after("a", 0.02)  # earlier: replaces the later one
        q.add_after("a", 1.0)  # later than pending: ignored
        assert q.delayed == 1
        key = await asyncio.wait_for(q.get(), 1)
        await asyncio.sleep(0.1)
        return key, len(q), q.delayed

    assert run(go()) == ("a", 0, 0)


def test_forget_and_close_cancel_delayed_adds():
    async def go():
        q = WorkQueue()
        q.add_after("a", 0.02)
        q.forget("a")
        q.add_after("b", 0.02)
        q.close()
        q.add("c")
        await asyncio.sleep(0.1)
        return len(q)

    assert run(go()) == 0


# ------------------------------------------------------------------ resource cache


def body(name="s", rv="1", status=None, spec=None, generation=1):
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": "u",
            "generation": generation,
            "resourceVersion": rv,
            "managedFields": [{"huge": True}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 1000},
        },
        "spec": spec or {"model": {"name": "m"}},
        "status": status or {},
    }


def controller():
    return Controller(Settings(), OperatorMetrics(CollectorRegistry()), api=lambda: None)


def test_the_cache_keeps_what_a_reconcile_reads_and_drops_the_rest():
    s = slim(body())
    assert set(s) == {"metadata", "spec", "status"}
    assert "managedFields" not in s["metadata"] and "annotations" not in s["metadata"]
    assert s["metadata"]["resourceVersion"] == "1"


def test_changes_are_queued_and_our_own_status_echo_is_not():
    async def go():
        c = controller()
        key = ("LRSweep", "ns", "s")
        c.observe_resource("LRSweep", None, body())
        queued = [await c.queue.get()]
        c.queue.done(key)
        # a reconcile patched the status; the cache holds the response (rv 2) ...
        c.resources[key] = slim(body(rv="2", status={"phase": "Pending"}))
        c.observe_resource("LRSweep", "MODIFIED", body(rv="2", status={"phase": "Pending"}))  # ... its echo
        c.observe_resource("LRSweep", "MODIFIED", body(rv="1"))  # a late, older event: ignored
        assert len(c.queue) == 0 and c.resources[key]["status"] == {"phase": "Pending"}
        c.observe_resource("LRSweep", "MODIFIED", body(rv="3", status={"phase": "Running"}))  # someone else
        queued.append(await asyncio.wait_for(c.queue.get(), 1))
        return queued

    assert run(go()) == [("LRSweep", "ns", "s")] * 2


def test_a_sweep_change_wakes_the_finetunejobs_waiting_for_it():
    async def go():
        c = controller()
        spec = {"model": {"name": "m"}, "learningRate": {"fromSweep": {"name": "lr"}}}
        c.observe_resource("FineTuneJob", None, body("ftj", spec=spec))
        c.queue.done(await c.queue.get())
        c.observe_resource("LRSweep", "MODIFIED", body("lr", status={"phase": "Succeeded"}))
        return {await c.queue.get(), await c.queue.get()}

    assert run(go()) == {("FineTuneJob", "ns", "ftj"), ("LRSweep", "ns", "lr")}


def test_a_child_event_queues_its_owner_and_deletion_forgets_the_resource():
    async def go():
        c = controller()
        c.observe_child(
            "ns", {"app.kubernetes.io/managed-by": "finetune-operator", "finetune.dev/lrsweep": "s"}
        )
        c.observe_child("ns", {"app.kubernetes.io/managed-by": "finetune-operator"})  # not ours: ignored
        got = await c.queue.get()
        c.queue.done(got)
        c.observe_resource("LRSweep", None, body())
        c.queue.done(await c.queue.get())
        c.observe_resource("LRSweep", "DELETED", body())
        return got, dict(c.resources), len(c.queue)

    got, resources, queued = run(go())
    assert got == ("LRSweep", "ns", "s") and resources == {} and queued == 0


def test_sweep_waited_for_names_the_sweep_or_the_auto_sweep():
    assert sweep_waited_for({"learningRate": {"fromSweep": {"name": "x"}}}, "ftj") == "x"
    assert sweep_waited_for({"learningRate": {"auto": {}}}, "ftj").startswith("ftj")
    assert sweep_waited_for({"learningRate": {"value": 1e-4}}, "ftj") is None


def test_status_delta_is_a_merge_patch_of_what_changed():
    old = {"phase": "Pending", "startTime": "t", "progress": {"step": 1}}
    new = {"phase": "Running", "startTime": "t"}
    assert status_delta(old, new) == {"phase": "Running", "progress": None}
    assert status_delta(new, new) == {}


def test_a_failing_reconcile_backs_off_and_the_worker_lives_on():
    async def go():
        c = controller()
        c.bind_indices({}, {}, {})
        calls = []

        def reconcile(snap):
            calls.append(snap.key)
            if len(calls) == 1:
                raise RuntimeError("API server unavailable")
            return Outcome(None, LRSweepStatus(phase="Succeeded", observed_generation=1))

        c.reconcile = reconcile
        await c.start(1)
        c.observe_resource("LRSweep", None, body())
        for _ in range(100):  # first attempt fails, the retry (1 s back-off) succeeds
            if len(calls) == 2:
                break
            await asyncio.sleep(0.05)
        await c.stop()
        return calls

    assert run(go()) == [("LRSweep", "ns", "s")] * 2


def test_a_resource_being_deleted_is_not_reconciled():
    async def go():
        c = controller()
        c.bind_indices({}, {}, {})
        calls = []
        c.reconcile = lambda snap: calls.append(snap) or Outcome(None, LRSweepStatus())
        await c.start(1)
        going = body()
        going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        c.observe_resource("LRSweep", "MODIFIED", going)
        await asyncio.sleep(0.2)
        await c.stop()
        return calls

    assert run(go()) == []


def test_pod_retries_and_failed_jobs_are_counted_once_and_not_again_after_a_restart():
    from finetune_operator.children import ChildTally

    tally = ChildTally()
    first = tally.update({"old": ChildState("old", "Failed", reason="OutOfMemory", failed_pods=3)})
    assert (first.retries, first.failures) == (0, ()), "what a restarted operator finds is the baseline"
    assert tally.update({"j": ChildState("j", "Running", failed_pods=2)}).retries == 2  # new since: counts
    assert tally.update({"j": ChildState("j", "Running", failed_pods=3)}).retries == 1
    assert tally.update({"j": ChildState("j", "Running", failed_pods=3)}).retries == 0
    failed = tally.update({"j": ChildState("j", "Failed", reason="OutOfMemory", failed_pods=4)})
    assert (failed.retries, failed.failures) == (0, ("OutOfMemory",)), "the last failure is no retry"
    assert tally.update({"j": ChildState("j", "Failed", reason="OutOfMemory", failed_pods=4)}).failures == ()
    assert tally.update({"k": ChildState("k", "Succeeded", failed_pods=1)}).retries == 1


def test_a_deleted_finetunejob_stops_waiting_for_its_sweep():
    async def go():
        c = controller()
        spec = {"model": {"name": "m"}, "learningRate": {"fromSweep": {"name": "lr"}}}
        c.observe_resource("FineTuneJob", None, body("ftj", spec=spec))
        c.queue.done(await c.queue.get())
        c.observe_resource("FineTuneJob", "DELETED", body("ftj", spec=spec))
        c.observe_resource("LRSweep", "MODIFIED", body("lr", status={"phase": "Succeeded"}))
        return dict(c.waiters), await c.queue.get(), len(c.queue)

    assert run(go()) == ({}, ("LRSweep", "ns", "lr"), 0)


def test_adaptive_trials_of_both_stages_export_distinct_series():
    c = controller()
    trials = [
        TrialStatus(index=1, stage=1, learning_rate=1e-3, eval_loss=2.0, phase="Succeeded"),
        TrialStatus(index=1, stage=2, learning_rate=1e-3, eval_loss=1.9, phase="Succeeded"),  # same LR
    ]
    status = LRSweepStatus(phase="Succeeded", recommended_learning_rate=1e-3, rule="adaptive", trials=trials)
    c.statuses[("LRSweep", "ns", "s")] = status
    registry = c.metrics.registry
    for label, loss in (("1-1", 2.0), ("2-1", 1.9)):
        labels = {"namespace": "ns", "name": "s", "trial": label, "learning_rate": "1.000e-03"}
        assert registry.get_sample_value("finetune_trial_eval_loss", labels) == loss
    rec = {"namespace": "ns", "name": "s", "rule": "adaptive"}
    assert registry.get_sample_value("finetune_recommended_learning_rate", rec) == 1e-3
    c.forget(("LRSweep", "ns", "s"))
    assert registry.get_sample_value("finetune_recommended_learning_rate", rec) is None, "gone with it"


def test_each_trial_exports_its_state_objective_latest_intermediate_loss_and_params_until_deleted():
    c = controller()
    params = {"learningRate": 1e-3, "warmupRatio": 0.1}
    evals = [EvalPoint(step=4, eval_loss=2.5), EvalPoint(step=8, eval_loss=2.2)]
    trials = [
        TrialStatus(
            index=0, learning_rate=1e-3, params=params, phase="Succeeded", eval_loss=2.0, evals=evals
        ),
        TrialStatus(
            index=1,
            learning_rate=1e-2,
            params={**params, "learningRate": 1e-2},
            phase="Pruned",
            evals=evals[:1],
            pruned_at_step=4,
        ),
    ]
    c.statuses[("LRSweep", "ns", "s")] = LRSweepStatus(phase="Running", trials=trials)
    value = c.metrics.registry.get_sample_value
    t0, t1 = {"namespace": "ns", "name": "s", "trial": "0"}, {"namespace": "ns", "name": "s", "trial": "1"}
    assert value("finetune_trial_state", {**t0, "phase": "Succeeded"}) == 1.0
    assert value("finetune_trial_state", {**t0, "phase": "Pruned"}) == 0.0
    assert value("finetune_trial_state", {**t1, "phase": "Pruned"}) == 1.0
    assert value("finetune_trial_eval_loss", {**t0, "learning_rate": "1.000e-03"}) == 2.0
    assert value("finetune_trial_eval_loss", {**t1, "learning_rate": "1.000e-02"}) is None, (
        "pruned: no objective"
    )
    assert value("finetune_trial_intermediate_eval_loss", t0) == 2.2
    assert value("finetune_trial_intermediate_eval_loss", t1) == 2.5
    assert value("finetune_trial_param", {**t1, "param": "learningRate"}) == 1e-2
    assert value("finetune_trial_param", {**t1, "param": "warmupRatio"}) == 0.1
    c.forget(("LRSweep", "ns", "s"))
    assert value("finetune_trial_state", {**t0, "phase": "Succeeded"}) is None, "gone with the sweep"
    assert value("finetune_trial_param", {**t1, "param": "warmupRatio"}) is None


# ------------------------------------------------------------------ one reconcile: plan, apply, status


class RecordingApplier(Applier):
    """The applier's own logic over an in-memory API server: every request is recorded; `refuse` maps an
    object name to the (code, reason) the server answers its apply with."""

    def __init__(self) -> None:
        super().__init__(api=lambda: None)
        self.requests: list[tuple[str, str, dict, str, dict]] = []
        self.refuse: dict[str, tuple[int, str]] = {}
        self.rv = 1

    def request(self, method, resource_path, body, content_type="application/json", query=None):
        self.requests.append((method, resource_path, body, content_type, dict(query or [])))
        name = (body.get("metadata") or {}).get("name")
        if content_type == "application/apply-patch+yaml" and name in self.refuse:
            code, reason = self.refuse[name]
            raise ApiError(code, reason, f"{name} is not allowed")
        if resource_path.endswith("/status"):
            self.rv += 1
            return {"metadata": {"name": "s", "resourceVersion": str(self.rv)}, "status": body["status"]}
        return {}

    def calls(self, content_type: str) -> list[tuple[str, str, dict, str, dict]]:
        return [r for r in self.requests if r[3] == content_type]


APPLY, MERGE = "application/apply-patch+yaml", "application/merge-patch+json"
SWEEP_SPEC = {"model": {"name": "/m"}, "dataset": {"files": ["/d.jsonl"]}, "method": "rangeTest"}


def reconcile_once(c: Controller, status: dict | None = None, children=None, kind="LRSweep", spec=None):
    b = body(status=status or {}, spec=spec or SWEEP_SPEC)
    return c.reconcile(Snapshot((kind, "ns", "s"), slim(b), children or {}))


def test_a_reconcile_applies_children_server_side_posts_events_and_patches_the_status():
    applier = RecordingApplier()
    c = Controller(Settings(), OperatorMetrics(CollectorRegistry()), api=lambda: None, applier=applier)
    outcome = reconcile_once(c)
    [(method, path, job, _, query)] = applier.calls(APPLY)
    assert (method, path) == ("PATCH", "/apis/batch/v1/namespaces/ns/jobs/s-range-test")
    assert query == {"fieldManager": "finetune-operator", "force": "true"}
    assert job["kind"] == "Job" and job["metadata"]["ownerReferences"][0]["uid"] == "u"
    [event] = [r for r in applier.requests if r[1].endswith("/events")]
    assert event[2]["reason"] == "JobCreated" and event[2]["regarding"]["uid"] == "u"
    [(_, path, patch, _, _)] = applier.calls(MERGE)
    assert path == "/apis/finetune.dev/v1alpha1/namespaces/ns/lrsweeps/s/status"
    assert patch["status"]["phase"] == "Pending" and not outcome.refused
    assert c.metrics.registry.get_sample_value("finetune_jobs_created_total", {"kind": "LRSweep"}) == 1
    assert outcome.status.phase == "Pending"


def test_the_status_is_patched_only_when_it_changed():
    applier = RecordingApplier()
    c = Controller(Settings(), OperatorMetrics(CollectorRegistry()), api=lambda: None, applier=applier)
    written = reconcile_once(c).status.to_wire()
    applier.requests.clear()
    quiet = {"s-range-test": ChildState("s-range-test", "Pending")}  # the Job's pod has nothing to say
    reconcile_once(c, status=written, children=quiet)
    assert applier.requests == [], "no apply, no event, no status write"


def test_a_refused_child_becomes_a_condition_and_an_event_and_is_retried():
    applier = RecordingApplier()
    applier.refuse["s-range-test"] = (403, "Forbidden")
    c = Controller(Settings(), OperatorMetrics(CollectorRegistry()), api=lambda: None, applier=applier)
    outcome = reconcile_once(c)
    assert outcome.refused
    [(_, _, patch, _, _)] = applier.calls(MERGE)
    status = patch["status"]
    failed = next(x for x in status["conditions"] if x["type"] == "ApplyFailed")
    assert (failed["status"], failed["reason"]) == ("True", "Forbidden")
    assert "Job s-range-test: s-range-test is not allowed" in failed["message"]
    assert "startTime" not in status, "the Job was not created, and the status does not claim it was"
    assert status["message"] == failed["message"]
    ready = next(x for x in status["conditions"] if x["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Forbidden")
    [event] = [r[2] for r in applier.requests if r[1].endswith("/events")]
    assert (event["type"], event["reason"]) == ("Warning", "ApplyFailed")
    errors = c.metrics.registry.get_sample_value("finetune_reconcile_errors_total", {"kind": "LRSweep"})
    assert errors == 1
    # refused again: nothing new to say
    applier.requests.clear()
    assert reconcile_once(c, status=status).refused
    assert not [r for r in applier.requests if r[1].endswith("/events")] and not applier.calls(MERGE)
    # allowed now (RBAC fixed): the Job is applied and the condition flips
    del applier.refuse["s-range-test"]
    outcome = reconcile_once(c, status=status)
    assert not outcome.refused and applier.calls(APPLY)
    after = {x.type: x for x in outcome.status.conditions}
    assert after["ApplyFailed"].status == "False" and outcome.status.phase == "Pending"


def test_the_auto_sweep_is_applied_without_taking_over_fields_others_own():
    applier = RecordingApplier()
    c = Controller(Settings(), OperatorMetrics(CollectorRegistry()), api=lambda: None, applier=applier)
    spec = {"model": {"name": "/m"}, "dataset": {"files": ["/d.jsonl"]}, "learningRate": {"auto": {}}}
    reconcile_once(c, kind="FineTuneJob", spec=spec)
    [(_, path, sweep, _, query)] = applier.calls(APPLY)
    assert path == "/apis/finetune.dev/v1alpha1/namespaces/ns/lrsweeps/s-lr"
    assert sweep["kind"] == "LRSweep" and query["force"] == "false"


def test_a_reconcile_validates_the_spec_once(monkeypatch):
    from finetune_operator.api import LRSweepSpec

    calls = []
    original = LRSweepSpec.model_validate.__func__

    def counting(cls, *args, **kwargs):
        calls.append(cls)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(LRSweepSpec, "model_validate", classmethod(counting))
    c = Controller(
        Settings(), OperatorMetrics(CollectorRegistry()), api=lambda: None, applier=RecordingApplier()
    )
    reconcile_once(c)
    assert calls == [LRSweepSpec]


def test_failed_jobs_counts_trainer_jobs_that_failed_not_resources():
    applier = RecordingApplier()
    c = Controller(Settings(), OperatorMetrics(CollectorRegistry()), api=lambda: None, applier=applier)
    registry = c.metrics.registry

    def failed(reason: str) -> float | None:
        return registry.get_sample_value("finetune_jobs_failed_total", {"kind": "LRSweep", "reason": reason})

    invalid = reconcile_once(c, spec={**SWEEP_SPEC, "rangeTest": {"steps": 1}}).status
    assert invalid.phase == "Failed" and failed("InvalidSpec") is None, "a bad spec is no failed Job"
    c = Controller(Settings(), OperatorMetrics(CollectorRegistry()), api=lambda: None, applier=applier)
    registry = c.metrics.registry
    created = reconcile_once(c).status.to_wire()
    job = {"s-range-test": ChildState("s-range-test", "Failed", reason="OutOfMemory", failed_pods=1)}
    reconcile_once(c, status=created, children=job)
    reconcile_once(c, status=created, children=job)  # seen again: counted once
    assert failed("OutOfMemory") == 1


def test_a_resource_deleted_while_it_is_reconciled_leaves_no_status_behind():
    """A reconcile still running when the resource's DELETED event arrives must not bring its series back."""
    import threading

    class SlowApplier(RecordingApplier):
        def __init__(self) -> None:
            super().__init__()
            self.inside, self.release = threading.Event(), threading.Event()

        def request(self, method, resource_path, body, content_type="application/json", query=None):
            if resource_path.endswith("/status"):
                self.inside.set()
                self.release.wait(5)
            return super().request(method, resource_path, body, content_type, query)

    async def go():
        applier = SlowApplier()
        c = Controller(Settings(), OperatorMetrics(CollectorRegistry()), api=lambda: None, applier=applier)
        c.bind_indices({}, {}, {})
        await c.start(1)
        c.observe_resource("LRSweep", None, body(spec=SWEEP_SPEC))
        await asyncio.get_running_loop().run_in_executor(None, applier.inside.wait, 5)
        c.observe_resource("LRSweep", "DELETED", body(spec=SWEEP_SPEC))  # while it patches the status
        applier.release.set()
        await asyncio.sleep(0.3)
        await c.stop()
        return dict(c.statuses), list(c.held()), dict(c._tallies)

    assert run(go()) == ({}, [], {})


def test_a_pruned_trial_s_job_is_deleted_with_its_pods_and_an_event_says_why(monkeypatch):
    applier = RecordingApplier()
    c = Controller(Settings(), OperatorMetrics(CollectorRegistry()), api=lambda: None, applier=applier)
    spec = {
        **SWEEP_SPEC,
        "method": "random",
        "trials": {"count": 4, "steps": 8, "parallelism": 1, "pruner": {"startupTrials": 1}},
    }
    first = reconcile_once(c, spec=spec).status.to_wire()
    result = {"kind": "trial", "learningRate": first["trials"][0]["learningRate"], "evalLoss": 1.0}
    done = {
        **first["trials"][0],
        "phase": "Succeeded",
        "evalLoss": 1.0,
        "evals": [{"step": 2, "evalLoss": 1.5}],
    }
    running = reconcile_once(
        c,
        status={**first, "trials": [done]},
        spec=spec,
        children={"s-trial-0": ChildState("s-trial-0", "Succeeded", result=result)},
    ).status.to_wire()
    monkeypatch.setattr(
        c.poller, "poll", lambda ns, ch: {"s-trial-1": {"step": 3, "eval_step": 2, "eval_loss": 4.0}}
    )
    applier.requests.clear()
    children = {
        "s-trial-0": ChildState("s-trial-0", "Succeeded", result=result),
        "s-trial-1": ChildState("s-trial-1", "Running", pod_ip="10.0.0.1"),
    }
    outcome = reconcile_once(c, status=running, spec=spec, children=children)
    [delete] = [r for r in applier.requests if r[0] == "DELETE"]
    assert delete[1] == "/apis/batch/v1/namespaces/ns/jobs/s-trial-1"
    assert delete[2]["propagationPolicy"] == "Background"
    assert [r[2]["reason"] for r in applier.requests if r[1].endswith("/events")].count("TrialPruned") == 1
    pruned = outcome.status.trials[1]
    assert (pruned.phase, pruned.pruned_at_step) == ("Pruned", 2)
