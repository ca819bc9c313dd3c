"""Pruning: trials report intermediate validation losses (the trainer's eval_step/eval_loss gauges), the
operator records them in the status and Optuna's pruner stops the poor ones (Job deleted, Pruned, step
and why, an event); a pruned trial is never run again."""

from __future__ import annotations

import pytest
from plans import plan_sweep

from finetune_operator.api import EvalPoint, LRSweepSpec, TrialStatus
from finetune_operator.children import ChildState
from finetune_operator.planning import study

BASE = {"model": {"name": "/models/tiny"}, "dataset": {"files": ["/data/train.jsonl"]}}
SPEC = {
    **BASE,
    "method": "random",
    "trials": {"count": 5, "steps": 8, "parallelism": 1, "pruner": {"type": "median", "startupTrials": 2}},
}


def finished_trial(i: int, losses: list[float]) -> TrialStatus:
    evals = [EvalPoint(step=2 * (k + 1), eval_loss=v) for k, v in enumerate(losses)]
    return TrialStatus(
        index=i,
        learning_rate=1e-5 * (i + 1),
        params={"learningRate": 1e-5 * (i + 1)},
        steps=8,
        phase="Succeeded",
        eval_loss=losses[-1],
        evals=evals,
        job_name=f"s-trial-{i}",
    )


def running_trial(i: int, losses: list[float]) -> TrialStatus:
    t = finished_trial(i, losses)
    return t.model_copy(update={"phase": "Running", "eval_loss": None})


@pytest.mark.parametrize(
    ("kind", "running", "pruned"),
    [
        ("median", [3.0, 4.0], True),  # worse than the median of the finished trials at step 4
        ("median", [2.0, 1.5], False),
        ("none", [3.0, 4.0], False),
        ("successiveHalving", [3.0, 4.0], True),
        ("hyperband", [3.0, 9.0], True),
        ("hyperband", [1.0, 0.5], False),
        ("successiveHalving", [1.0, 0.5], False),
    ],
)
def test_the_pruners_decisions_on_recorded_intermediate_values(kind, running, pruned):
    sweep = LRSweepSpec.model_validate({**SPEC, "trials": {**SPEC["trials"], "pruner": {"type": kind}}})
    done = [finished_trial(i, [2.5 + i / 100, 2.0, 1.8, 1.7]) for i in range(12)]
    trials = [*done, running_trial(12, running)]
    assert study.prune(sweep, trials, {12}) == ({12} if pruned else set())
    assert study.prune(sweep, trials, set()) == set(), "only trials with a new value are judged"


def test_a_pruned_trial_is_stopped_recorded_with_its_step_and_never_run_again():
    children = {f"s-trial-{i}": ChildState(f"s-trial-{i}", "Succeeded") for i in range(2)}
    previous = {
        "phase": "Running",
        "trials": [finished_trial(i, [2.5, 2.0, 1.8, 1.7]).to_wire() for i in range(2)]
        + [running_trial(2, [2.6]).to_wire()],
    }
    for t in previous["trials"][:2]:
        children[t["jobName"]] = ChildState(
            t["jobName"],
            "Succeeded",
            result={"kind": "trial", "learningRate": t["learningRate"], "evalLoss": 1.7},
        )
    children["s-trial-2"] = ChildState("s-trial-2", "Running")
    plan = plan_sweep(
        "s", SPEC, previous, 1, children, samples={"s-trial-2": {"step": 5, "eval_step": 4, "eval_loss": 3.5}}
    )
    t = plan.status["trials"][2]
    assert (t["phase"], t["prunedAtStep"], t["reason"]) == ("Pruned", 4, "Pruned")
    assert t["evals"] == [{"step": 2, "evalLoss": 2.6}, {"step": 4, "evalLoss": 3.5}]
    assert "3.5 at step 4" in t["message"] and "median" in t["message"]
    assert plan.desired.delete == ["s-trial-2"]
    assert [e.reason for e in plan.events if e.reason == "TrialPruned"] == ["TrialPruned"]
    assert [c.name for c in plan.create] == ["s-trial-3"], "its slot goes to the next trial"

    gone = {n: c for n, c in children.items() if n != "s-trial-2"}
    after = plan_sweep("s", SPEC, plan.status, 1, gone)
    assert after.status["trials"][2]["phase"] == "Pruned" and "s-trial-2" not in [
        c.name for c in after.create
    ]
    still = plan_sweep(
        "s", SPEC, plan.status, 1, {**children, "s-trial-2": ChildState("s-trial-2", "Failed")}
    )
    assert still.status["trials"][2]["phase"] == "Pruned" and still.desired.delete == ["s-trial-2"]


def test_pruned_trials_count_as_finished_and_the_best_completed_trial_wins():
    trials = [finished_trial(i, [2.0, 1.0 + i]).to_wire() for i in range(4)]
    trials.append({**running_trial(4, [5.0]).to_wire(), "phase": "Pruned", "prunedAtStep": 2})
    spec = {**SPEC, "trials": {**SPEC["trials"], "count": 5}}
    done = plan_sweep("s", spec, {"phase": "Running", "trials": trials}, 1, {})
    assert done.status["phase"] == "Succeeded" and done.status["bestParams"] == trials[0]["params"]


def test_trials_are_validated_at_the_pruners_cadence():
    plan = plan_sweep("s", SPEC, None, 1, {})
    assert plan.create[0].config.evaluation.every_steps == 2
    off = {**SPEC, "trials": {**SPEC["trials"], "pruner": {"type": "none"}}}
    assert plan_sweep("s", off, None, 1, {}).create[0].config.evaluation.every_steps == 8


def test_finished_trials_record_every_reported_step_so_a_running_one_is_judged_at_any_step():
    """No poll caught trials 0 and 1 between evaluations: their results carry every intermediate value,
    so trial 2's first polled value (step 2) already has finished trials to be compared with."""
    children = {
        f"s-trial-{i}": ChildState(
            f"s-trial-{i}",
            "Succeeded",
            result={
                "kind": "trial",
                "learningRate": 1e-5 * (i + 1),
                "evalLoss": 1.7,
                "evals": [{"step": s, "evalLoss": 3.0 - s / 8} for s in (2, 4, 6, 8)],
            },
        )
        for i in range(2)
    }
    started = plan_sweep("s", SPEC, None, 1, {})
    previous = {"phase": "Running", "trials": started.status["trials"]}
    first = plan_sweep("s", SPEC, previous, 1, children)
    assert [e["step"] for e in first.status["trials"][0]["evals"]] == [2, 4, 6, 8]
    assert first.status["trials"][0]["evalLoss"] == 1.7
    children["s-trial-2"] = ChildState("s-trial-2", "Running")
    lagging = plan_sweep(
        "s", SPEC, first.status, 1, children, samples={"s-trial-2": {"eval_step": 2, "eval_loss": 3.5}}
    )
    t = lagging.status["trials"][2]
    assert (t["phase"], t["prunedAtStep"]) == ("Pruned", 2)
    assert lagging.desired.delete == ["s-trial-2"]
