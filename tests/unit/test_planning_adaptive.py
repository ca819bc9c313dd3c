"""The adaptive LRSweep's planning, driven reconcile by reconcile with the operator's own ChildState values.

A fake "cluster" here is a dict of ChildState: each reconcile's requested Jobs appear as Running, and a
loss curve (a parabola in log10(LR), or whatever a test needs) decides how each trial finishes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
from plans import View as Plan
from plans import plan_finetune, plan_sweep

from finetune_operator import naming, rendering
from finetune_operator.api import FineTuneJobSpec, LRSweepSpec
from finetune_operator.children import ChildState, parse_termination_message
from finetune_operator.planning.rangetest import verdict as range_test_verdict
from finetune_trainer.adaptive import Ramp, TrialRequest, ramp_edge, ramp_minimum, run_to_decision
from finetune_trainer.config import AdaptiveSpec, RangeTestResult, RangeTestSpec, TrialRecord, TrialResult
from finetune_trainer.report import compact_json
from finetune_trainer.suggest import all_suggestions, recommend

NOW = "2026-01-01T00:00:10Z"
BASE = {"model": {"name": "/models/tiny"}, "dataset": {"files": ["/data/train.jsonl"]}}
SPEC = {**BASE, "adaptive": {"candidates": 5, "trialSteps": 8, "parallelism": 2}}
OPTIMUM = -2.7  # log10 of the best learning rate of the synthetic loss curve
EDGE = 0.1
RANGE_TEST = {
    "kind": "rangeTest",
    "rule": "minimum-over-10",
    "recommendedLearningRate": 2e-3,
    "curve": [
        {"lr": 1e-6, "loss": 3.0},
        {"lr": 1e-4, "loss": 2.9},
        {"lr": 1e-2, "loss": 2.0},
        {"lr": 0.2, "loss": 9.0},
    ],
    "stopReason": "diverged",
    "steps": 60,
    "bestLoss": 2.0,
    "effectiveBatchSize": 8,
    "minLearningRate": 1e-6,
    "maxLearningRate": 0.2,
    "divergenceLearningRate": EDGE,
    "priorLearningRate": 1e-3,
}


def parabola(lr: float) -> float:
    return 2.0 + 0.3 * (math.log10(lr) - OPTIMUM) ** 2


def finished(job: str, lr: float, steps: int, loss: Callable[[float], float | None]) -> ChildState:
    """A trial Job that finished: its result as the trainer writes its termination message
    (`compact_json`) and the operator reads it back (`parse_termination_message`)."""
    value = loss(lr)
    if value is None:
        return ChildState(job, "Failed", reason="Diverged", message="loss diverged at step 3")
    message = compact_json(TrialResult(learning_rate=lr, eval_loss=value, steps=steps))
    result, _ = parse_termination_message(message)
    return ChildState(job, "Succeeded", result=result)


class FakeCluster:
    """Children by name; reconciles the sweep, starts what the plan creates, finishes the oldest trial."""

    def __init__(
        self, spec: dict, loss: Callable[[float], float | None] = parabola, range_test: dict | None = None
    ) -> None:
        self.spec, self.loss, self.range_test = spec, loss, range_test or RANGE_TEST
        self.children: dict[str, ChildState] = {}
        self.requests: dict[str, object] = {}
        self.status: dict | None = None
        self.max_running = 0
        self.plans: list[Plan] = []

    def reconcile(self) -> Plan:
        plan = plan_sweep("s", self.spec, self.status, 1, dict(self.children), now=NOW)
        self.plans.append(plan)
        self.status = plan.status
        for child in plan.create:
            assert child.name not in self.children, f"{child.name} created twice"
            self.children[child.name] = ChildState(child.name, "Running")
            self.requests[child.name] = child
        running = [n for n, c in self.children.items() if c.phase == "Running" and n != "s-range-test"]
        self.max_running = max(self.max_running, len(running))
        return plan

    def finish_range_test(self, result: dict | None = None) -> None:
        self.children["s-range-test"] = ChildState(
            "s-range-test", "Succeeded", result=result or self.range_test
        )

    def finish_oldest_trial(self) -> bool:
        for name, c in self.children.items():
            if c.phase == "Running" and name != "s-range-test":
                req = self.requests[name]
                self.children[name] = finished(
                    name, req.config.learning_rate, req.config.optimization.max_steps, self.loss
                )
                return True
        return False

    def run(self, limit: int = 200) -> dict:
        """Reconcile until the sweep is Succeeded or Failed."""
        self.reconcile()
        self.finish_range_test()
        for _ in range(limit):
            plan = self.reconcile()
            if plan.status["phase"] in ("Succeeded", "Failed"):
                return plan.status
            assert self.finish_oldest_trial(), "nothing running and nothing finished"
        raise AssertionError("the sweep never finished")


def test_a_new_adaptive_sweep_runs_the_range_test_first():
    plan = plan_sweep("s", BASE, None, 1, {}, now=NOW)
    assert LRSweepSpec.model_validate(BASE).method == "adaptive"
    assert [(c.name, c.args) for c in plan.create] == [("s-range-test", ["range-test"])]
    assert plan.status["phase"] == "Pending"


def test_after_the_range_test_stage_one_starts_below_the_loss_minimum_two_at_a_time():
    cluster = FakeCluster(SPEC)
    cluster.reconcile()
    cluster.finish_range_test()
    plan = cluster.reconcile()
    assert [c.name for c in plan.create] == ["s-s1-trial-0", "s-s1-trial-1"]
    first = plan.create[0]
    assert (first.trial, first.stage, first.role) == (0, 1, "trial")
    assert first.args == ["trial", "--learning-rate", repr(first.config.learning_rate)]
    # the status curve bottoms out at 1e-2: the top candidate sits half a decade below it (under the edge's)
    assert first.config.learning_rate == pytest.approx(1e-2 * 10**-0.5)
    assert first.config.optimization.max_steps == 8
    s = plan.status
    assert s["rangeTest"]["edgeLearningRate"] == EDGE and s["rangeTest"]["priorLearningRate"] == 1e-3
    assert "recommendedLearningRate" not in s, "the range test's rule does not decide an adaptive sweep"
    assert [t["stage"] for t in s["trials"]] == [1] * 5 and len(s["trials"]) == 5
    assert s["phase"] == "Pending" and s["progress"]["totalSteps"] == 5 + 3
    again = cluster.reconcile()  # both still running: nothing more starts
    assert not again.create and again.status["phase"] == "Running"


def test_stage_one_hangs_from_the_loss_minimum_the_range_test_reported_not_from_its_thinned_curve():
    """The trainer reads the minimum from every step of the ramp; the status curve (at most 100 points from a
    termination message) may miss it. A result without the field (an older trainer) falls back to the curve,
    as the test above shows."""
    cluster = FakeCluster(SPEC, range_test={**RANGE_TEST, "lossMinimumLearningRate": 3e-2})
    cluster.reconcile()
    cluster.finish_range_test()
    plan = cluster.reconcile()
    assert plan.create[0].config.learning_rate == pytest.approx(3e-2 * 10**-0.5)
    assert plan.status["rangeTest"]["lossMinimumLearningRate"] == 3e-2
    assert cluster.reconcile().status["rangeTest"]["lossMinimumLearningRate"] == 3e-2, "kept once recorded"


def test_a_full_sweep_recommends_the_fitted_minimum_with_an_interval():
    cluster = FakeCluster(SPEC)
    s = cluster.run()
    assert s["phase"] == "Succeeded", s["message"]
    assert math.log10(s["recommendedLearningRate"]) == pytest.approx(OPTIMUM, abs=1e-6)
    assert s["interval"]["low"] < s["recommendedLearningRate"] < s["interval"]["high"]
    assert (s["rule"], s["decidedBy"], s["evidence"]) == ("adaptive", "stage-2-fit", "Fitted")
    assert s["fit"]["a"] == pytest.approx(0.3) and s["bestLoss"] == pytest.approx(2.0, abs=1e-3)
    assert s["effectiveBatchSize"] == 8
    stages = [(t["stage"], t["index"], t["steps"]) for t in s["trials"]]
    assert stages == [(1, i, 8) for i in range(5)] + [(2, j, 16) for j in range(3)]
    assert all(t["phase"] == "Succeeded" and t["evalLoss"] is not None for t in s["trials"])
    assert s["trials"][5]["jobName"] == naming.adaptive_trial_job("s", 2, 0) == "s-s2-trial-0"
    assert s["stepsSpent"] == 60 + 5 * 8 + 3 * 16
    assert s["progress"]["percent"] == 100
    assert cluster.max_running == 2
    conds = {c["type"]: c for c in s["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["Succeeded"]["reason"] == "Recommended"
    assert "interval" in s["message"]


def on_a_laptop(
    spec: dict, loss: Callable[[float], float], max_steps: int | None = None
) -> tuple[list[tuple], float | None]:
    """What `recommend` decides on the same range test and losses: its loop (`run_to_decision`) on the
    exact losses."""
    ramp = RangeTestResult.model_validate(RANGE_TEST)
    edge = ramp_edge(ramp.divergence_learning_rate, ramp.max_learning_rate)
    minimum = ramp_minimum(ramp.loss_minimum_learning_rate, ramp.curve)

    def run(t: TrialRequest) -> TrialRecord:
        value = loss(t.learning_rate)
        return TrialRecord(
            stage=t.stage, index=t.index, learning_rate=t.learning_rate, steps=t.steps, eval_loss=value
        )

    decision, records = run_to_decision(
        AdaptiveSpec.model_validate(spec["adaptive"]),
        Ramp(edge=edge, minimum=minimum, steps=ramp.steps),
        run,
        max_steps,
    )
    ran = sorted((r.stage, r.index, r.learning_rate, r.eval_loss) for r in records)
    return ran, decision.recommended_learning_rate


def test_a_near_tie_below_the_fourth_digit_is_decided_as_recommend_decides_it():
    """The operator reads trials from termination messages: losses that agree to 4 significant digits (a
    flat stretch, where each candidate down is better by 1e-5) must not be rounded into a tie that
    `recommend`, deciding on exact losses, does not see."""

    def shelf(lr: float) -> float:
        x = math.log10(lr)
        return 0.6925 + 1e-5 * (x + 6) if x < OPTIMUM + 0.2 else parabola(lr)

    cluster = FakeCluster(SPEC, loss=shelf)
    s = cluster.run()
    ran, recommended = on_a_laptop(SPEC, shelf)
    assert sorted((t["stage"], t["index"], t["learningRate"], t["evalLoss"]) for t in s["trials"]) == ran
    assert s["recommendedLearningRate"] == recommended
    assert len({round(t[3], 4) for t in ran if t[3] < 0.7}) < len([t for t in ran if t[3] < 0.7]), (
        "the test needs losses that 4 digits would tie"
    )


def test_a_short_fine_tune_s_sweep_stays_within_max_fine_tunes_counting_its_range_test():
    """A 64-step fine-tune: the 60-step ramp and five 8-step candidates leave 28 of the 128 steps that
    `adaptive.maxFineTunes` (2) allows, too few for three stage-2 trials longer than stage 1's, so stage 1
    decides, as `recommend` decides on the same ramp and losses."""
    spec = {**SPEC, "optimization": {"maxSteps": 64}}
    s = FakeCluster(spec).run()
    assert s["phase"] == "Succeeded", s["message"]
    assert {t["stage"] for t in s["trials"]} == {1} and s["stepsSpent"] == 60 + 5 * 8 <= 2 * 64
    assert s["decidedBy"] == "stage-1-fit" and "adaptive.maxFineTunes" in s["message"]
    ran, recommended = on_a_laptop(spec, parabola, max_steps=64)
    assert sorted((t["stage"], t["index"], t["learningRate"], t["evalLoss"]) for t in s["trials"]) == ran
    assert s["recommendedLearningRate"] == recommended
    roomy = FakeCluster({**spec, "adaptive": {**SPEC["adaptive"], "maxFineTunes": 4}}).run()
    assert {t["stage"] for t in roomy["trials"]} == {1, 2}, "with room, stage 2 runs"


def test_a_sweep_sized_in_epochs_is_sized_by_the_steps_its_range_test_counted():
    """No `maxSteps`: the range test's `fineTuneSteps` (64, the epochs over the data as the trainer counts
    them) sizes the trials, their share of the data and the `adaptive.maxFineTunes` budget, exactly as
    `maxSteps: 64` does."""
    by_steps = FakeCluster({**SPEC, "optimization": {"maxSteps": 64}}).run()
    in_epochs = FakeCluster(
        {**SPEC, "optimization": {"epochs": 3}}, range_test={**RANGE_TEST, "fineTuneSteps": 64}
    )
    s = in_epochs.run()
    assert s["rangeTest"]["fineTuneSteps"] == 64
    assert s["trials"] == by_steps["trials"] and s["stepsSpent"] == by_steps["stepsSpent"] <= 2 * 64
    assert s["recommendedLearningRate"] == by_steps["recommendedLearningRate"]
    first = next(r for n, r in in_epochs.requests.items() if n.startswith("s-s1-"))
    assert first.config.optimization.max_steps == 8 and first.config.dataset.sample_fraction == 8 / 64
    unsized = FakeCluster({**SPEC, "optimization": {"epochs": 3}}).run()  # an older trainer: no count
    assert {t["stage"] for t in unsized["trials"]} == {1, 2}, "no budget without a count"


def test_progress_counts_the_finalists_only_where_max_fine_tunes_leaves_them_room():
    tight, roomy = {**SPEC, "optimization": {"maxSteps": 64}}, {**SPEC, "optimization": {"maxSteps": 64}}
    roomy["adaptive"] = {**SPEC["adaptive"], "maxFineTunes": 4}
    for spec, total in ((tight, 5), (roomy, 5 + 3)):
        cluster = FakeCluster(spec)
        cluster.run()
        stage1 = [
            p.status["progress"]
            for p in cluster.plans
            if {t["stage"] for t in p.status.get("trials", [])} == {1}
        ]
        assert stage1 and {p["totalSteps"] for p in stage1} == {total}, spec["adaptive"]
        last = cluster.plans[-1].status["progress"]
        assert last["step"] == last["totalSteps"] and last["percent"] == 100


def test_planning_is_stateless_a_restart_recreates_nothing():
    cluster = FakeCluster(SPEC)
    cluster.reconcile()
    cluster.finish_range_test()
    for _ in range(4):
        cluster.reconcile()
        cluster.finish_oldest_trial()
    with_status = plan_sweep("s", SPEC, cluster.status, 1, dict(cluster.children), now=NOW)
    fresh = plan_sweep("s", SPEC, None, 1, dict(cluster.children), now=NOW)  # status lost: Jobs tell all
    assert [c.name for c in fresh.create] == [c.name for c in with_status.create]
    assert fresh.status["trials"] == with_status.status["trials"]


def test_finished_jobs_deleted_after_their_ttl_are_remembered_from_the_status():
    cluster = FakeCluster(SPEC)
    cluster.reconcile()
    cluster.finish_range_test()
    for _ in range(3):
        cluster.reconcile()
        cluster.finish_oldest_trial()
    cluster.reconcile()
    status = cluster.reconcile().status  # nothing new to start: the status shows every Job's phase
    alive = {n: c for n, c in cluster.children.items() if c.phase == "Running"}
    assert "s-range-test" not in alive and len(alive) == 2
    plan = plan_sweep("s", SPEC, status, 1, alive, now=NOW)
    assert not plan.create, "neither the range test nor a finished trial runs again"
    assert plan.status["trials"] == status["trials"]


def test_weak_evidence_fails_the_sweep_and_keeps_the_recommendation():
    cluster = FakeCluster(SPEC, loss=lambda lr: 2.0)
    s = cluster.run()
    assert s["phase"] == "Failed" and s["evidence"] == "FlatCurve"
    failed = next(c for c in s["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "FlatCurve"
    assert "adaptive.trialSteps" in s["message"]
    assert s["recommendedLearningRate"] is not None, "kept for people to read"


def test_a_classifier_whose_trials_never_beat_its_label_entropy_fails_nothing_trained():
    """The range test's baselineLoss reaches the status and the stages: trials at chance end the sweep with
    no learning rate and the field to raise, where a sweep without it would fit the noise."""
    chance = math.log(2)

    def at_chance(lr: float) -> float:
        return chance + 1e-4 * abs(math.log10(lr) + 3)  # a hair above chance everywhere, least near 1e-3

    cluster = FakeCluster(SPEC, loss=at_chance, range_test={**RANGE_TEST, "baselineLoss": chance})
    s = cluster.run()
    assert s["rangeTest"]["baselineLoss"] == pytest.approx(chance)
    assert (s["phase"], s["evidence"]) == ("Failed", "NothingTrained")
    assert "recommendedLearningRate" not in s
    failed = next(c for c in s["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NothingTrained" and "adaptive.trialSteps" in failed["message"]
    assert len(s["trials"]) == 5 + 3, "no extension below trials that learned nothing"
    blind = FakeCluster(SPEC, loss=at_chance).run()
    assert blind["evidence"] != "NothingTrained" and blind["recommendedLearningRate"] is not None
    # the ramp's own loss (bestLoss) fell below the labels' entropy: it learned where the trials did not
    learned = FakeCluster(
        SPEC, loss=at_chance, range_test={**RANGE_TEST, "baselineLoss": chance, "bestLoss": 0.5}
    )
    t = learned.run()
    assert t["rangeTest"]["bestLoss"] == 0.5
    assert (t["phase"], t["evidence"]) == ("Failed", "NothingTrained"), "still weak: auto must not train"
    assert t["recommendedLearningRate"] == max(x["learningRate"] for x in t["trials"]), "the ceiling"
    assert "unconfirmed by any trial" in t["message"] and "adaptive.trialSteps" in t["message"]


def test_best_at_the_lowest_candidate_after_extensions_names_the_bound():
    spec = {**SPEC, "adaptive": {**SPEC["adaptive"], "maxExtensions": 1}}
    cluster = FakeCluster(spec, loss=lambda lr: 2.0 + math.log10(lr) + 10)  # lower is always better
    s = cluster.run()
    assert (s["phase"], s["evidence"]) == ("Failed", "BestAtLowerEdge")
    assert len(s["trials"]) == 5 + 2, "one extension of two candidates below the lowest"
    assert "adaptive.maxExtensions" in s["message"]


def test_diverged_trials_count_as_diverged_and_the_sweep_goes_on():
    # a ramp whose loss bottomed out at the edge: the edge places the candidates, the top one diverges
    at_edge = {**RANGE_TEST, "curve": [{"lr": 1e-6, "loss": 3.0}, {"lr": EDGE, "loss": 2.0}]}
    cluster = FakeCluster(SPEC, loss=lambda lr: None if lr > 0.02 else parabola(lr), range_test=at_edge)
    s = cluster.run()
    top = s["trials"][0]
    assert top["diverged"] is True and top["phase"] == "Failed" and top.get("evalLoss") is None
    assert s["phase"] == "Succeeded", s["message"]
    assert math.log10(s["recommendedLearningRate"]) == pytest.approx(OPTIMUM, abs=1e-6)


def test_a_trial_with_a_config_error_stops_the_sweep_at_once():
    cluster = FakeCluster(SPEC)
    cluster.reconcile()
    cluster.finish_range_test()
    cluster.reconcile()
    cluster.children["s-s1-trial-1"] = ChildState(
        "s-s1-trial-1", "Failed", reason="InvalidConfig", message="dataset.files: no such file /data/x"
    )
    plan = cluster.reconcile()
    assert plan.status["phase"] == "Failed" and not plan.create
    assert "dataset.files: no such file /data/x" in plan.status["message"]
    assert next(c for c in plan.status["conditions"] if c["type"] == "Failed")["reason"] == "InvalidConfig"


def test_malformed_results_never_crash_a_reconcile():
    bad_range_test = {"s-range-test": ChildState("s-range-test", "Succeeded", result={"kind": "rangeTest"})}
    plan = plan_sweep("s", SPEC, None, 1, bad_range_test, now=NOW)
    assert (plan.status["phase"], plan.status["conditions"][0]["reason"]) == ("Failed", "NoResult")
    cluster = FakeCluster(SPEC)
    cluster.reconcile()
    cluster.finish_range_test()
    cluster.reconcile()
    cluster.children["s-s1-trial-0"] = ChildState(
        "s-s1-trial-0", "Succeeded", result={"kind": "trial", "learningRate": "fast", "evalLoss": []}
    )
    plan = cluster.reconcile()
    trial = plan.status["trials"][0]
    assert trial["phase"] == "Succeeded" and trial.get("evalLoss") is None
    assert [c.name for c in plan.create] == ["s-s1-trial-2"]


def test_a_range_test_without_an_edge_fails_with_the_fix():
    old = {k: v for k, v in RANGE_TEST.items() if k not in ("maxLearningRate", "divergenceLearningRate")}
    plan = plan_sweep(
        "s", SPEC, None, 1, {"s-range-test": ChildState("s-range-test", "Succeeded", result=old)}, now=NOW
    )
    assert plan.status["phase"] == "Failed" and "trainer image" in plan.status["message"]
    assert next(c for c in plan.status["conditions"] if c["type"] == "Failed")["reason"] == "NoEdge"


def test_trial_jobs_carry_the_stage_label_and_a_trial_config():
    cluster = FakeCluster(SPEC)
    cluster.reconcile()
    cluster.finish_range_test()
    job = cluster.reconcile().create[0].manifest
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert (labels[naming.STAGE_LABEL], labels[naming.TRIAL_LABEL], labels[naming.ROLE_LABEL]) == (
        "1",
        "0",
        "trial",
    )
    config = json.loads(job["spec"]["template"]["metadata"]["annotations"][rendering.CONFIG_ANNOTATION])
    assert config["optimization"]["maxSteps"] == 8 and config["evaluation"]["everySteps"] <= 8


def test_trial_jobs_train_on_their_share_of_the_data_unless_match_epochs_is_off():
    sized = {**SPEC, "optimization": {"maxSteps": 64}}  # 8-step trials: an eighth of the fine-tune
    for adaptive, fraction in ((SPEC["adaptive"], 0.125), ({**SPEC["adaptive"], "matchEpochs": False}, None)):
        cluster = FakeCluster({**sized, "adaptive": adaptive})
        cluster.reconcile()
        cluster.finish_range_test()
        job = cluster.reconcile().create[0].manifest
        config = json.loads(job["spec"]["template"]["metadata"]["annotations"][rendering.CONFIG_ANNOTATION])
        assert config["dataset"].get("sampleFraction") == fraction


# ------------------------------------------------------------------ FineTuneJob auto / fromSweep

FTJ = {**BASE, "optimization": {"batchSize": 8, "maxSteps": 160}}


def test_auto_runs_the_adaptive_method_sized_from_the_jobs_length():
    plan = plan_finetune("f", {**FTJ, "learningRate": {"auto": {}}}, None, 1, {}, None, now=NOW)
    sweep = LRSweepSpec.model_validate(plan.create_sweep)
    assert sweep.method == "adaptive" and sweep.optimization.max_steps == 160
    old = {"auto": {"rangeTest": {"minLearningRate": 1e-6, "maxLearningRate": 1.0, "steps": 30}}}
    job = FineTuneJobSpec.model_validate({**FTJ, "learningRate": old})
    assert rendering.sweep_spec_for_auto(job).method == "adaptive", "old manifests stay valid"
    chosen = FineTuneJobSpec.model_validate(
        {**FTJ, "learningRate": {"auto": {"method": "rangeTest", "adaptive": {"candidates": 3}}}}
    )
    assert rendering.sweep_spec_for_auto(chosen).method == "rangeTest"


def test_a_sweep_failed_on_weak_evidence_stops_the_finetune():
    weak = FakeCluster(SPEC, loss=lambda lr: 2.0).run()
    for choice in ({"auto": {}}, {"fromSweep": {"name": "s"}}):
        plan = plan_finetune("f", {**FTJ, "learningRate": choice}, None, 1, {}, {"status": weak}, now=NOW)
        assert plan.status["phase"] == "Failed" and not plan.create
        assert next(c for c in plan.status["conditions"] if c["type"] == "Failed")["reason"] == "SweepFailed"
        assert "adaptive.trialSteps" in plan.status["message"]


# ------------------------------------------------------------------ rangeTest verdicts


def _rt(**patch) -> RangeTestResult:
    return RangeTestResult.model_validate({**RANGE_TEST, **patch})


def test_a_range_test_recommendation_inside_its_window_succeeds():
    reason, message = range_test_verdict(_rt(), RangeTestSpec())
    assert reason == "Recommended" and "0.002" in message and "rule minimum-over-10" in message


def test_a_range_test_recommendation_outside_the_window_names_the_bound():
    reason, message = range_test_verdict(_rt(recommendedLearningRate=1e-7), RangeTestSpec())
    assert reason == "OutsideTestedWindow" and "lower rangeTest.minLearningRate" in message
    reason, message = range_test_verdict(_rt(recommendedLearningRate=0.5), RangeTestSpec())
    assert reason == "OutsideTestedWindow" and "raise rangeTest.maxLearningRate" in message


def test_a_range_test_curve_still_falling_at_its_end_fails_with_the_bound():
    falling = [{"lr": 1e-6, "loss": 3.0}, {"lr": 1e-4, "loss": 2.5}, {"lr": 1e-2, "loss": 2.0}]
    result = _rt(curve=falling, stopReason="completed", maxLearningRate=1e-2, divergenceLearningRate=None)
    reason, message = range_test_verdict(result, RangeTestSpec(extend=False))
    assert reason == "CurveStillFalling" and "raise rangeTest.maxLearningRate" in message
    plan = plan_sweep(
        "s",
        {**BASE, "method": "rangeTest"},
        None,
        1,
        {"s-range-test": ChildState("s-range-test", "Succeeded", result=result.to_wire())},
        now=NOW,
    )
    assert plan.status["phase"] == "Failed" and "rangeTest.ceilingLearningRate" in plan.status["message"]


FLAT = [{"lr": 10 ** (-9 + i / 10), "loss": 0.693 * (1 + 0.002 * math.sin(2.3 * i))} for i in range(31)]
WINDOW = {"minLearningRate": 1e-9, "maxLearningRate": 1e-6}
"""A ramp (1e-9..1e-6) whose loss never fell from its start (a 0.2% wobble, under the noise floor)."""


def test_a_range_test_that_trained_nothing_fails_naming_the_bound_and_recommends_no_noise():
    """The rules still find values on a flat curve (the trainer's own rules, here); none is evidence, so
    the sweep fails `NothingTrained` with the bound to move, and writes no recommendation to train with."""
    suggestions = all_suggestions([p["lr"] for p in FLAT], [p["loss"] for p in FLAT], planned_end=1e-6)
    rule, lr = recommend(suggestions, "ceiling")
    assert suggestions["ceiling"] is None and rule != "ceiling" and lr is not None
    found = {"suggestions": suggestions, "rule": rule, "recommendedLearningRate": lr}
    flat = _rt(curve=FLAT, stopReason="completed", **WINDOW, **found, divergenceLearningRate=None)
    reason, message = range_test_verdict(flat, RangeTestSpec())
    assert reason == "NothingTrained" and "never fell" in message
    assert "raise rangeTest.ceilingLearningRate or rangeTest.steps" in message
    reason, message = range_test_verdict(flat, RangeTestSpec(extend=False))
    assert "raise rangeTest.maxLearningRate or rangeTest.steps" in message
    diverged = _rt(curve=FLAT, stopReason="diverged", **WINDOW)  # past its first decade: not the window
    reason, message = range_test_verdict(diverged, RangeTestSpec())
    assert reason == "NothingTrained" and "before it diverged" in message
    assert "raise rangeTest.steps" in message
    child = {"s-range-test": ChildState("s-range-test", "Succeeded", result=flat.to_wire())}
    status = plan_sweep("s", {**BASE, "method": "rangeTest"}, None, 1, child, now=NOW).status
    assert status["phase"] == "Failed" and "rangeTest.ceilingLearningRate" in status["message"]
    assert "recommendedLearningRate" not in status and "rule" not in status
    assert status["suggestions"][rule] == pytest.approx(lr), "every rule's value is still reported"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NothingTrained"


def test_a_reported_loss_minimum_is_the_trainers_word_over_a_thinned_curve():
    """The trainer reads the fall on every step of the ramp; its `lossMinimumLearningRate` stands even when
    the curve thinned to the status looks flat."""
    reported = _rt(curve=FLAT, stopReason="diverged", **WINDOW, lossMinimumLearningRate=5e-8)
    reported = reported.model_copy(update={"recommended_learning_rate": 1.6e-8})
    assert range_test_verdict(reported, RangeTestSpec())[0] == "Recommended"


# ------------------------------------------------------------------ results no trainer should write


NAN, INF = float("nan"), float("inf")


def strict_json(status: dict) -> str:
    """The status as the API server must receive it: JSON has no NaN or Infinity."""
    return json.dumps(status, allow_nan=False)


def test_non_finite_numbers_in_a_range_test_result_never_reach_the_status():
    result = {
        **RANGE_TEST,
        "recommendedLearningRate": NAN,
        "bestLoss": NAN,
        "suggestions": {"valley": INF, "steepest": 1e-4},
        "curve": [*RANGE_TEST["curve"], {"lr": 0.3, "loss": INF}, {"lr": NAN, "loss": 2.0}],
        "priorLearningRate": NAN,
    }
    children = {"s-range-test": ChildState("s-range-test", "Succeeded", result=result)}
    for spec in ({**BASE, "method": "rangeTest"}, SPEC):
        status = plan_sweep("s", spec, None, 1, children).status
        strict_json(status)
        assert status.get("recommendedLearningRate") is None
        assert status["suggestions"] == {"valley": None, "steepest": 1e-4}, "a rule that found nothing"
        assert len(status["curve"]) == len(RANGE_TEST["curve"]), "the points past divergence are left out"
    assert plan_sweep("s", {**BASE, "method": "rangeTest"}, None, 1, children).status["phase"] == "Failed"


def test_non_finite_losses_of_trials_and_training_never_reach_the_status():
    grid = {**BASE, "method": "grid", "trials": {"learningRates": [1e-4, 1e-3], "parallelism": 2}}
    children = {
        "g-trial-0": ChildState(
            "g-trial-0", "Succeeded", result={"kind": "trial", "learningRate": 1e-4, "evalLoss": NAN}
        ),
        "g-trial-1": ChildState(
            "g-trial-1", "Succeeded", result={"kind": "trial", "learningRate": 1e-3, "evalLoss": 1.5}
        ),
    }
    status = plan_sweep("g", grid, None, 1, children).status
    strict_json(status)
    assert status["trials"][0]["diverged"] is True
    assert status["recommendedLearningRate"] == status["trials"][1]["learningRate"]
    result = {
        "kind": "train",
        "learningRate": 1e-4,
        "steps": 10,
        "evalLoss": INF,
        "trainLoss": NAN,
        "epochs": NAN,
    }
    trained = {"f-train": ChildState("f-train", "Succeeded", result=result)}
    status = plan_finetune("f", {**FTJ, "learningRate": {"value": 1e-4}}, None, 1, trained, None).status
    strict_json(status)
    assert status["phase"] == "Succeeded" and "evalLoss" not in status


def test_a_sweep_whose_status_claims_a_non_number_is_waited_for_not_trusted():
    odd = {"status": {"phase": "Succeeded", "recommendedLearningRate": "fast", "effectiveBatchSize": None}}
    plan = plan_finetune("f", {**FTJ, "learningRate": {"fromSweep": {"name": "s"}}}, None, 1, {}, odd)
    assert plan.status["phase"] == "WaitingForSweep" and not plan.create
    strict_json(plan.status)


# ------------------------------------------------------------------ live progress of running trials


def test_running_trials_report_their_live_progress():
    cluster = FakeCluster(SPEC)
    cluster.reconcile()
    cluster.finish_range_test()
    cluster.reconcile()
    live = {"s-s1-trial-0": {"step": 4, "total_steps": 8, "loss": 2.5, "learning_rate": 3e-3}}
    plan = plan_sweep("s", SPEC, cluster.status, 1, dict(cluster.children), samples=live)
    first, second = plan.status["trials"][:2]
    assert first["progress"]["step"] == 4 and first["progress"]["loss"] == 2.5
    assert first["progress"]["lastStepTime"] == NOW
    assert "progress" not in second, "no sample yet"
    grid = {**BASE, "method": "grid", "trials": {"learningRates": [1e-4, 1e-3], "parallelism": 2}}
    running = {f"g-trial-{i}": ChildState(f"g-trial-{i}", "Running") for i in range(2)}
    plan = plan_sweep("g", grid, None, 1, running, samples={"g-trial-1": {"step": 7, "learning_rate": 1e-3}})
    assert plan.status["trials"][1]["progress"]["step"] == 7 and "progress" not in plan.status["trials"][0]


def test_a_trials_progress_goes_once_it_finished():
    grid = {**BASE, "method": "grid", "trials": {"learningRates": [1e-4, 1e-3], "parallelism": 2}}
    running = {f"g-trial-{i}": ChildState(f"g-trial-{i}", "Running") for i in range(2)}
    before = plan_sweep("g", grid, None, 1, running, samples={"g-trial-0": {"step": 7}}).status
    done = ChildState(
        "g-trial-0", "Succeeded", result={"kind": "trial", "learningRate": 1e-4, "evalLoss": 2.0}
    )
    after = plan_sweep("g", grid, before, 1, {**running, "g-trial-0": done}).status
    assert "progress" not in after["trials"][0] and after["trials"][0]["evalLoss"] == 2.0


def test_grid_trials_deleted_after_their_ttl_are_remembered_not_run_again():
    grid = {**BASE, "method": "grid", "trials": {"learningRates": [1e-4, 1e-3, 1e-2], "parallelism": 2}}

    def done(i: int, loss: float) -> ChildState:
        result = {"kind": "trial", "learningRate": [1e-4, 1e-3, 1e-2][i], "evalLoss": loss}
        return ChildState(f"g-trial-{i}", "Succeeded", result=result)

    first = plan_sweep(
        "g", grid, None, 1, {"g-trial-0": done(0, 2.0), "g-trial-1": ChildState("g-trial-1", "Running")}
    )
    assert [c.name for c in first.create] == ["g-trial-2"]
    # trial 0's Job is deleted after its TTL; trial 1 finishes, trial 2 runs: one slot free
    later = plan_sweep(
        "g",
        grid,
        first.status,
        1,
        {"g-trial-1": done(1, 1.5), "g-trial-2": ChildState("g-trial-2", "Running")},
    )
    assert not later.create, "trial 0 finished before its Job went: it is not run again"
    assert later.status["trials"][0]["evalLoss"] == 2.0 and later.status["trials"][0]["phase"] == "Succeeded"


def test_a_range_test_that_diverged_in_its_first_decade_fails_before_any_trial_naming_the_bound():
    """Trials sit below the edge: one within a decade of the ramp's start would put them below anything the
    ramp tested (this sweep once recommended 5e-8 from a ramp that started at 1e-6)."""
    early = {
        **RANGE_TEST,
        "curve": [{"lr": 1e-6, "loss": 3.0}, {"lr": 3e-6, "loss": 30.0}],
        "maxLearningRate": 3e-6,
        "divergenceLearningRate": 3e-6,
    }
    cluster = FakeCluster(SPEC, range_test=early)
    s = cluster.run()
    assert s["phase"] == "Failed" and s["evidence"] == "DivergedAtMinimumLearningRate"
    assert s["decidedBy"] == "range-test" and s.get("recommendedLearningRate") is None
    assert "lower rangeTest.minLearningRate" in s["message"] and not s.get("trials")
    assert list(cluster.children) == ["s-range-test"], "no trial Job"
    failed = next(c for c in s["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "DivergedAtMinimumLearningRate"


def test_a_recommendation_below_everything_the_sweep_tested_fails_naming_the_bound(monkeypatch):
    """The horizon step may move the fit below the trials; below the ramp's start too, the operator fails
    the sweep as `recommend` does (the stages' decision is replaced by one that lands there)."""
    from finetune_operator.planning import adaptive as planning
    from finetune_trainer.config import Recommendation

    below = Recommendation(
        recommended_learning_rate=5e-7, decided_by="stage-2-horizon", evidence="Fitted", message="moved"
    )
    monkeypatch.setattr(planning, "decide", lambda *a, **k: planning.AdaptiveDecision(trials=(), done=below))
    s = FakeCluster(SPEC).run()
    assert s["phase"] == "Failed" and s["evidence"] == "OutsideTestedWindow"
    assert s["recommendedLearningRate"] == 5e-7, "kept for people to read"
    assert "below the lowest learning rate tested (1e-06)" in s["message"]
    assert "lower rangeTest.minLearningRate" in s["message"]


@pytest.mark.parametrize(
    "optimum",
    [-9.0, -5.1, OPTIMUM],
    ids=["below-every-extension", "reached-by-the-last-extension", "inside-stage-one"],
)
def test_at_the_specs_largest_settings_every_trial_fits_in_the_status(optimum):
    from finetune_operator.api import TRIALS_MAX

    most = {f: AdaptiveSpec.model_fields[f].metadata for f in ("candidates", "finalists", "max_extensions")}
    largest = {name: next(m.le for m in meta if hasattr(m, "le")) for name, meta in most.items()}
    spec = {
        **SPEC,
        "adaptive": {
            **SPEC["adaptive"],
            "candidates": largest["candidates"],
            "finalists": largest["finalists"],
            "maxExtensions": largest["max_extensions"],
            "spacing": 0.1,
        },
    }
    cluster = FakeCluster(spec, loss=lambda lr: 2.0 + 0.3 * (math.log10(lr) - optimum) ** 2)
    s = cluster.run()
    jobs = sorted(n for n in cluster.children if n != "s-range-test")
    assert len(jobs) <= TRIALS_MAX, f"{len(jobs)} trials, more than the status keeps ({TRIALS_MAX})"
    kept = sorted(naming.adaptive_trial_job("s", t["stage"], t["index"]) for t in s["trials"])
    assert kept == jobs, "every trial that ran is in the status, so none is forgotten and run again"
    stages = [t["stage"] for t in s["trials"]]
    if optimum == -5.1:  # every extension ran, then every finalist: the most trials a sweep can ask for
        assert stages.count(1) == largest["candidates"] + 2 * largest["max_extensions"]
        assert stages.count(2) == largest["finalists"] and s["phase"] == "Succeeded"
