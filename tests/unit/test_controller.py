"""The reconcile loop's pure parts: the work queue, the resource cache and the status merge patch."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from finetune_operator.controller import Controller, slim, status_delta, sweep_waited_for
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
    old = {"phase": "Pending", "startTime": "t", "progress": {"step": 1}, "kopf": {"x": 1}}
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
            return None, {"phase": "Succeeded", "observedGeneration": 1}

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
        c.reconcile = lambda snap: calls.append(snap) or (None, {})
        await c.start(1)
        going = body()
        going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        c.observe_resource("LRSweep", "MODIFIED", going)
        await asyncio.sleep(0.2)
        await c.stop()
        return calls

    assert run(go()) == []


def test_pod_retries_are_counted_once_and_not_again_after_a_restart():
    from finetune_operator.children import ChildState
    from finetune_operator.controller import new_retries

    seen: dict[str, int] = {}
    assert new_retries(seen, {"j": ChildState("j", "Running", failed_pods=2)}) == 0  # baseline only
    assert new_retries(seen, {"j": ChildState("j", "Running", failed_pods=3)}) == 1
    assert new_retries(seen, {"j": ChildState("j", "Running", failed_pods=3)}) == 0
    assert (
        new_retries(seen, {"j": ChildState("j", "Failed", failed_pods=4)}) == 0
    )  # the last failure is no retry
    assert new_retries(seen, {"k": ChildState("k", "Pending")}) == 0
    assert new_retries(seen, {"k": ChildState("k", "Succeeded", failed_pods=1)}) == 1


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
        {"index": 1, "stage": 1, "learningRate": 1e-3, "evalLoss": 2.0},
        {"index": 1, "stage": 2, "learningRate": 1e-3, "evalLoss": 1.9},  # a finalist at a stage-1 LR
    ]
    status = {"phase": "Succeeded", "recommendedLearningRate": 1e-3, "rule": "adaptive", "trials": trials}
    c._export("LRSweep", "ns", "s", status)
    registry = c.metrics.registry
    for label, loss in (("1-1", 2.0), ("2-1", 1.9)):
        labels = {"namespace": "ns", "name": "s", "trial": label, "learning_rate": "1.000e-03"}
        assert registry.get_sample_value("finetune_trial_eval_loss", labels) == loss
    rec = {"namespace": "ns", "name": "s", "rule": "adaptive"}
    assert registry.get_sample_value("finetune_recommended_learning_rate", rec) == 1e-3
