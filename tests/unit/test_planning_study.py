"""Grid, random and bayesian sweeps on one Optuna study rebuilt from the status on every reconcile: the
rebuild is exact, the next ask is the same after a rebuild, and each method runs its trials once."""

from __future__ import annotations

import json
import math
from itertools import product

import pytest
from optuna.trial import TrialState
from plans import NOW, plan_sweep

from finetune_operator.api import TRIALS_MAX, LRSweepSpec, LRSweepStatus
from finetune_operator.children import ChildState
from finetune_operator.planning import study
from finetune_operator.planning.trials import at_window_edge

BASE = {"model": {"name": "/models/tiny"}, "dataset": {"files": ["/data/train.jsonl"]}}
SPACE = {"learningRate": {"min": 1e-5, "max": 1e-1}, "batchSize": [4, 8, 16], "loraR": [8, 16]}
BAYES = {**BASE, "method": "bayesian", "trials": {"searchSpace": SPACE, "maxTrials": 16, "parallelism": 2}}


def loss(params: dict) -> float:
    """A bowl at LR 1e-3, batch 8: lower is better."""
    return 2.0 + 0.3 * (math.log10(params["learningRate"]) + 3) ** 2 + 0.1 * abs(params["batchSize"] - 8) / 4


def run(spec: dict, plans: list | None = None) -> tuple[dict, list[str], list[dict]]:
    """Reconcile to the end (every reconcile rebuilds the study from the status alone); the oldest running
    trial finishes after each. Returns the status, the Jobs created in order and each one's params; each
    reconcile's plan goes into `plans` when given."""
    children: dict[str, ChildState] = {}
    created: list[str] = []
    params: dict[str, dict] = {}
    status: dict | None = None
    for _ in range(200):
        plan = plan_sweep("s", spec, status, 1, dict(children))
        status = plan.status
        if plans is not None:
            plans.append(plan)
        if status["phase"] in ("Succeeded", "Failed"):
            return status, created, [params[n] for n in created]
        for t in status["trials"]:
            params.setdefault(t["jobName"], t.get("params") or {"learningRate": t["learningRate"]})
        for child in plan.create:
            assert child.name not in created, f"{child.name} created twice"
            created.append(child.name)
            children[child.name] = ChildState(child.name, "Running")
        oldest = next(n for n, c in children.items() if c.phase == "Running")
        p = params[oldest]
        result = {"kind": "trial", "learningRate": p["learningRate"], "evalLoss": loss({"batchSize": 8, **p})}
        children[oldest] = ChildState(oldest, "Succeeded", result=result)
    raise AssertionError("the sweep never finished")


def test_a_bayesian_sweep_runs_max_trials_once_each_and_recommends_the_best_trials_params():
    status, created, drawn = run(BAYES)
    assert status["phase"] == "Succeeded", status["message"]
    assert len(created) == len(set(created)) == 16
    assert all(set(p) == {"learningRate", "batchSize", "loraR"} for p in drawn)
    best = min(status["trials"], key=lambda t: t["evalLoss"])
    assert (
        status["bestParams"] == best["params"] and status["recommendedLearningRate"] == best["learningRate"]
    )
    assert status["effectiveBatchSize"] == best["params"]["batchSize"]
    assert abs(math.log10(status["recommendedLearningRate"]) + 3) < 0.5, "TPE finds the bowl"


def test_a_grid_over_a_search_space_visits_every_point_once():
    spec = {
        **BASE,
        "method": "grid",
        "trials": {
            "searchSpace": {"learningRate": {"min": 1e-4, "max": 1e-2}, "batchSize": [4, 8]},
            "count": 3,
        },
    }
    status, _, drawn = run(spec)
    assert status["phase"] == "Succeeded"
    points = {(round(math.log10(p["learningRate"]), 6), p["batchSize"]) for p in drawn}
    assert points == set(product([-4.0, -3.0, -2.0], [4, 8])) and len(drawn) == 6


def test_a_legacy_random_spec_searches_the_learning_rate_window_alone():
    spec = {
        **BASE,
        "method": "random",
        "trials": {"count": 5, "minLearningRate": 1e-5, "maxLearningRate": 1e-2},
    }
    status, created, drawn = run(spec)
    assert status["phase"] == "Succeeded" and len(created) == 5
    assert all(set(p) == {"learningRate"} and 1e-5 <= p["learningRate"] <= 1e-2 for p in drawn)
    assert len({p["learningRate"] for p in drawn}) == 5, "each trial its own draw, not the seed's first"


def test_rebuilding_the_study_from_the_status_is_exact_and_the_next_ask_is_the_same():
    status, _, _ = run({**BAYES, "trials": {**BAYES["trials"], "maxTrials": 40}})
    sweep = LRSweepSpec.model_validate(BAYES)
    trials = LRSweepStatus.model_validate(status).trials or []
    half = trials[:9]
    half[-1] = half[-1].model_copy(update={"phase": "Running", "eval_loss": None})
    half[-2] = half[-2].model_copy(update={"phase": "Failed", "eval_loss": None})
    rebuilt = study.rebuild(sweep, half)
    assert [t.number for t in rebuilt.trials] == [t.index for t in half]
    assert [t.params for t in rebuilt.trials] == [t.params for t in half]
    assert [t.value for t in rebuilt.trials] == [t.eval_loss for t in half]
    assert [t.state for t in rebuilt.trials][-2:] == [TrialState.FAIL, TrialState.RUNNING]
    first = study.ask(sweep, rebuilt, 3)
    again = study.ask(sweep, study.rebuild(sweep, half), 3)
    assert first == again, "a restarted operator asks exactly what the last one would have"
    other_seed = LRSweepSpec.model_validate({**BAYES, "trials": {**BAYES["trials"], "seed": 1}})
    assert study.ask(other_seed, study.rebuild(other_seed, half), 3) != first


def test_a_restarted_operator_plans_from_the_status_alone_and_creates_nothing_twice():
    children: dict[str, ChildState] = {}
    first = plan_sweep("s", BAYES, None, 1, children)
    for c in first.create:
        children[c.name] = ChildState(c.name, "Running")
    again = plan_sweep("s", BAYES, first.status, 1, dict(children))
    assert not again.create and again.status["trials"][0]["params"] == first.status["trials"][0]["params"]
    lost = plan_sweep("s", BAYES, None, 1, dict(children))  # status write lost: Jobs exist
    assert not lost.create, "the same asks name the Jobs that already run"
    assert [t["params"] for t in lost.status["trials"]] == [t["params"] for t in first.status["trials"]]


def test_searched_params_reach_the_trial_config():
    spec = {
        **BASE,
        "method": "bayesian",
        "trials": {
            "searchSpace": {
                **SPACE,
                "maxSteps": {"min": 5, "max": 9},
                "weightDecay": {"min": 0.0, "max": 0.1},
            }
        },
    }
    plan = plan_sweep("s", spec, None, 1, {})
    for child, trial in zip(plan.create, plan.status["trials"], strict=True):
        p, c = trial["params"], child.config
        assert c.learning_rate == p["learningRate"] and c.optimization.batch_size == p["batchSize"]
        assert c.adapter.r == p["loraR"] and c.optimization.weight_decay == p["weightDecay"]
        assert c.optimization.max_steps == p["maxSteps"] == trial["steps"]
        assert c.dataset.sample_fraction is None  # only adaptive trials train on a share of the data


def test_a_grid_larger_than_the_status_can_hold_fails_with_the_fields_to_shrink():
    space = {"learningRate": {"min": 1e-5, "max": 1e-1}, "batchSize": [1, 2, 4, 8, 16, 32, 64, 128]}
    spec = {**BASE, "method": "grid", "trials": {"searchSpace": space, "count": 9}}
    plan = plan_sweep("s", spec, None, 1, {})
    assert plan.status["phase"] == "Failed" and "trials.searchSpace" in plan.status["message"]
    assert not plan.create


def test_a_finetune_using_all_of_a_sweep_trains_with_its_best_params_and_scales_the_lr_to_that_batch():
    from plans import plan_finetune

    best = {"learningRate": 1e-3, "batchSize": 16.0, "loraR": 8.0, "weightDecay": 0.05, "maxSteps": 7.0}
    sweep = {
        "status": {
            "phase": "Succeeded",
            "recommendedLearningRate": 1e-3,
            "effectiveBatchSize": 16,
            "bestParams": best,
        }
    }
    job = {**BASE, "optimization": {"batchSize": 4, "gradientAccumulationSteps": 2, "maxSteps": 100}}
    lr_only = {**job, "learningRate": {"fromSweep": {"name": "s", "scale": "linear"}}}
    plan = plan_finetune("f", lr_only, None, 1, {}, sweep)
    assert plan.status["learningRate"] == pytest.approx(1e-3 * 8 / 16) and "params" not in plan.status
    assert plan.create[0].config.optimization.batch_size == 4

    use_all = {**job, "learningRate": {"fromSweep": {"name": "s", "scale": "linear", "use": "all"}}}
    first = plan_finetune("f", use_all, None, 1, {}, sweep)
    assert first.status["learningRate"] == pytest.approx(1e-3 * 32 / 16), "16 x 2 accumulation vs 16"
    assert first.status["params"] == {"batchSize": 16, "loraR": 8, "weightDecay": 0.05}
    for plan in (first, plan_finetune("f", use_all, first.status, 1, {}, None)):  # later: from the status
        c = plan.create[0].config
        assert (c.optimization.batch_size, c.adapter.r, c.optimization.weight_decay) == (16, 8, 0.05)
        assert c.optimization.max_steps == 100, "the trial's length is not the fine-tune's"


def test_a_64_trial_study_over_every_searched_parameter_keeps_its_status_well_under_the_object_limit():
    """The study lives in the status: 64 trials (the cap), every parameter searched, each trial with 16
    intermediate losses and its live progress while it runs; the largest status seen over the whole sweep
    stays far below etcd's 1.5 MiB object limit."""
    space = {
        "learningRate": {"min": 1e-5, "max": 1e-1},
        "warmupRatio": {"min": 0.0, "max": 0.3},
        "weightDecay": {"min": 0.0, "max": 0.1},
        "batchSize": [4, 8, 16],
        "loraR": [8, 16, 32],
        "loraAlpha": [16, 32, 64],
        "maxSteps": {"min": 32, "max": 64},
    }
    trials = {
        "searchSpace": space,
        "maxTrials": TRIALS_MAX,
        "parallelism": 8,
        "pruner": {"type": "none"},
    }
    spec = {**BASE, "adapter": {"type": "lora"}, "method": "bayesian", "trials": trials}
    children: dict[str, ChildState] = {}
    status: dict | None = None
    sizes: list[int] = []
    steps = [4 * (k + 1) for k in range(16)]
    for n in range(200):
        running = {name: c for name, c in children.items() if c.phase == "Running"}
        samples = {
            name: {
                "step": 40,
                "total_steps": 64,
                "learning_rate": 1e-3,
                "loss": 2.5,
                "samples_per_second": 30.0,
            }
            | {"eval_step": 4 * (1 + n % 16), "eval_loss": 3.0 - n / 100}
            for name in running
        }
        plan = plan_sweep("s", spec, status, 1, dict(children), samples=samples)
        status = plan.status
        sizes.append(len(json.dumps(status, separators=(",", ":"))))
        if status["phase"] in ("Succeeded", "Failed"):
            break
        for child in plan.create:
            children[child.name] = ChildState(child.name, "Running", start_time=NOW)
        for name in plan.desired.delete:
            children.pop(name, None)
        for name in list(running)[:4]:
            evals = [{"step": s, "evalLoss": 3.0 - s / 100 + hash(name) % 7 / 10} for s in steps]
            result = {
                "kind": "trial",
                "learningRate": 1e-3,
                "evalLoss": evals[-1]["evalLoss"],
                "evals": evals,
            }
            children[name] = ChildState(name, "Succeeded", result=result)
    assert status is not None and status["phase"] == "Succeeded", status
    assert len(status["trials"]) == TRIALS_MAX
    assert all(len(t["evals"]) == 16 for t in status["trials"]), (
        "every trial with its 16 losses (none pruned)"
    )
    largest = max(sizes)
    print(f"largest LRSweep status of a {TRIALS_MAX}-trial study: {largest} bytes")
    assert largest < 128 * 1024, f"{largest} bytes: a twelfth of the 1.5 MiB limit at most"


def test_sweeps_with_neighbouring_seeds_share_no_draws():
    """Trial n's sampler seed mixes the sweep's seed with n: seeds 0 and 1 do not draw the same trials
    shifted by one (as `seed + n` did)."""
    draws = {}
    for seed in (0, 1):
        sweep = LRSweepSpec.model_validate({**BASE, "method": "random", "trials": {"count": 8, "seed": seed}})
        draws[seed] = {p["learningRate"] for p in study.ask(sweep, study.rebuild(sweep, []), 8)}
    assert len(draws[0]) == len(draws[1]) == 8
    assert not draws[0] & draws[1]


def ready(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


@pytest.mark.parametrize(
    ("trials", "reason", "fix"),
    [
        (
            {"learningRates": [1e-2, 3e-2, 1e-1]},
            "BestAtLowerEdge",
            "add a lower value to trials.learningRates",
        ),
        (
            {"minLearningRate": 1e-6, "maxLearningRate": 1e-4, "count": 3},
            "BestAtUpperEdge",
            "set trials.maxLearningRate higher",
        ),
        (
            {"searchSpace": {"learningRate": {"min": 1e-2, "max": 1.5e-2}}, "count": 4},
            "BestAtLowerEdge",
            "set trials.searchSpace.learningRate.min lower",
        ),
    ],
)
def test_a_best_trial_at_the_edge_of_the_spec_s_learning_rates_succeeds_with_a_warning_naming_the_bound(
    trials: dict, reason: str, fix: str
):
    """The bowl is at 1e-3. A grid, random or bayesian sweep runs the trials its spec names, so its best
    stays usable (a FineTuneJob's `fromSweep`), but never as a plain `Recommended`."""
    plans: list = []
    method = "random" if "searchSpace" in trials else "grid"
    status, _, _ = run({**BASE, "method": method, "trials": trials}, plans)
    assert status["phase"] == "Succeeded" and ready(status)["status"] == "True"
    assert ready(status)["reason"] == reason and fix in status["message"]
    assert len(status["warnings"]) == 1 and fix in status["warnings"][0]
    assert [(e.type, e.reason) for e in plans[-1].events] == [("Warning", reason)]


def test_a_best_trial_between_others_or_far_from_a_drawn_range_s_bound_is_a_plain_recommendation():
    status, _, _ = run({**BASE, "method": "grid", "trials": {"learningRates": [1e-4, 1e-3, 1e-2]}})
    assert ready(status)["reason"] == "Recommended" and not status.get("warnings")
    drawn = LRSweepSpec.model_validate(
        {**BASE, "method": "random", "trials": {"minLearningRate": 1e-6, "maxLearningRate": 1e-1}}
    )
    assert at_window_edge(drawn, 1e-3, [1e-3, 1e-2, 3e-2]) is None, "lowest drawn, 3 decades above the bound"
    reason, warning = at_window_edge(drawn, 1.5e-6, [1.5e-6, 1e-3]) or ("", "")
    assert reason == "BestAtLowerEdge" and "set trials.minLearningRate lower" in warning
