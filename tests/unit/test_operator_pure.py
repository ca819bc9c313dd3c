"""The operator's decisions, as pure functions: names, LR choices, rendering, child observation, planning."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import kopf
import pytest
from plans import NOW, OWNER, plan_finetune, plan_sweep, range_test_job
from plans import observe_indexed as observe

from finetune_operator import naming, rendering
from finetune_operator.api import FineTuneJobSpec, LRSweepSpec, TrialsSpec
from finetune_operator.children import parse_termination_message
from finetune_operator.planning.status import progress_from_sample, set_condition
from finetune_operator.polling import parse_trainer_metrics
from finetune_operator.settings import Settings
from finetune_operator.sweeps import best_learning_rate, scale_learning_rate, trial_learning_rates

SPEC = {"model": {"name": "/models/tiny"}, "dataset": {"files": ["/data/train.jsonl"]}}
RT_SPEC = {**SPEC, "method": "rangeTest"}


# ------------------------------------------------------------------ naming


def test_child_names_are_deterministic_and_fit_a_label_value():
    assert naming.range_test_job("bert") == "bert-range-test"
    long = "x" * 80
    name = naming.trial_job(long, 12)
    assert len(name) <= 63 and name.endswith("-trial-12")
    assert name == naming.trial_job(long, 12)
    assert naming.trial_job(long, 12) != naming.trial_job("x" * 79 + "y", 12)


# ------------------------------------------------------------------ sweeps


def test_grid_is_log_spaced_and_random_is_seeded():
    grid = trial_learning_rates("grid", TrialsSpec(min_learning_rate=1e-5, max_learning_rate=1e-3, count=3))
    assert grid == pytest.approx([1e-5, 1e-4, 1e-3])
    a = trial_learning_rates("random", TrialsSpec(count=5, seed=7))
    assert a == trial_learning_rates("random", TrialsSpec(count=5, seed=7)) and a == sorted(a)
    assert all(1e-6 <= x <= 1e-3 for x in a)
    assert trial_learning_rates("grid", TrialsSpec(learning_rates=[3e-4, 1e-5])) == [1e-5, 3e-4]


def test_best_trial_is_refined_by_a_parabola_in_log_lr():
    # loss = (log10(lr) + 4.3)^2: true optimum at 10**-4.3, grid points at -5, -4, -3
    results = [(10.0**e, (e + 4.3) ** 2) for e in (-5, -4, -3)]
    lr, loss = best_learning_rate(results)
    assert math.log10(lr) == pytest.approx(-4.3, abs=1e-9)
    assert loss == pytest.approx(0.09)


def test_best_trial_at_the_edge_or_with_failures():
    assert best_learning_rate([(1e-5, 1.0), (1e-4, 2.0), (1e-3, None)]) == (1e-5, 1.0)
    assert best_learning_rate([(1e-5, None), (1e-4, float("nan"))]) is None


def test_learning_rate_scaling_rules():
    assert scale_learning_rate(1e-4, 8, 32, "none") == 1e-4
    assert scale_learning_rate(1e-4, 8, 32, "sqrt") == pytest.approx(2e-4)
    assert scale_learning_rate(1e-4, 8, 32, "linear") == pytest.approx(4e-4)
    with pytest.raises(ValueError, match=r"fromSweep\.scale"):
        scale_learning_rate(1e-4, 8, 32, "cube")


# ------------------------------------------------------------------ rendering


def test_job_is_locked_down_owned_labelled_and_asks_for_gpus():
    job = range_test_job({**SPEC, "resources": {"gpus": 2, "nodeSelector": {"gpu": "a100"}}})
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert job["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["metadata"]["labels"]["finetune.dev/lrsweep"] == "s"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["restartPolicy"] == "Never"
    assert container["args"][:3] == ["range-test", "--config", "/etc/finetune/config.json"]
    assert container["terminationMessagePath"] == "/dev/termination-log"


def test_job_failure_policy_never_retries_bad_config_or_divergence():
    rules = range_test_job(SPEC)["spec"]["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert fail["onExitCodes"]["values"] == [2, 3]
    assert any(r["action"] == "Ignore" for r in rules)


def test_job_passes_through_suspend_deadlines_secret_and_pvc():
    job = range_test_job(
        {
            **SPEC,
            "suspend": True,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 60,
            "backoffLimit": 5,
            "hubTokenSecret": {"name": "hf"},
            "output": {"persistentVolumeClaim": "out"},
        }
    )
    spec = job["spec"]
    assert (spec["suspend"], spec["activeDeadlineSeconds"], spec["backoffLimit"]) == (True, 600, 5)
    assert "ttlSecondsAfterFinished" not in spec, "set once the status holds the result (planning.expiring)"
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    mount = next(
        m for m in spec["template"]["spec"]["containers"][0]["volumeMounts"] if m["name"] == "output"
    )
    assert mount["subPath"] == "lrsweep/s/uid-1/range-test"


def test_cpu_only_job_asks_no_gpu_and_uses_operator_defaults():
    job = range_test_job(
        {**SPEC, "resources": {"gpus": 0}}, settings=Settings(default_cpu="2", default_memory="4Gi")
    )
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "2", "memory": "4Gi"}


def test_trial_config_is_cut_to_trial_steps_and_warmup_fits():
    sweep = LRSweepSpec.model_validate(
        {**SPEC, "method": "grid", "trials": {"steps": 20}, "schedule": {"warmupSteps": 50}}
    )
    cfg = rendering.trial_config(sweep, 1e-4, sweep.trials.steps)
    assert cfg.optimization.max_steps == 20 and cfg.learning_rate == 1e-4
    assert cfg.schedule.warmup_steps is None and cfg.schedule.warmup_ratio == 0.1


def test_auto_sweep_copies_model_data_adapter_batch_and_placement():
    job = FineTuneJobSpec.model_validate(
        {
            **SPEC,
            "learningRate": {"auto": {"rangeTest": {"steps": 40}}},
            "adapter": {"type": "lora"},
            "optimization": {"batchSize": 4},
            "resources": {"gpus": 0},
        }
    )
    sweep = rendering.sweep_spec_for_auto(job)
    assert (
        sweep.adapter.type,
        sweep.optimization.batch_size,
        sweep.range_test.steps,
        sweep.resources.gpus,
    ) == ("lora", 4, 40, 0)


def test_the_job_carries_the_trainer_config_as_the_file_the_trainer_reads():
    template = range_test_job(SPEC)["spec"]["template"]
    config = json.loads(template["metadata"]["annotations"][rendering.CONFIG_ANNOTATION])
    assert config["model"]["name"] == "/models/tiny"
    [volume] = [v for v in template["spec"]["volumes"] if v["name"] == "config"]
    [item] = volume["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == f"metadata.annotations['{rendering.CONFIG_ANNOTATION}']"
    [mount] = [m for m in template["spec"]["containers"][0]["volumeMounts"] if m["name"] == "config"]
    assert f"{mount['mountPath']}/{item['path']}" == rendering.CONFIG_FILE
    assert rendering.CONFIG_FILE in template["spec"]["containers"][0]["args"]


# ------------------------------------------------------------------ children


def _pod(phase="Running", exit_code=None, message=None, ip="127.0.0.5"):
    status = {"phase": phase, "podIP": ip}
    if exit_code is not None:
        status["containerStatuses"] = [{"state": {"terminated": {"exitCode": exit_code, "message": message}}}]
    return {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "status": status}


def _jobobj(cond=None, active=0, reason=None):
    status = {"active": active, "startTime": "2026-01-01T00:00:00Z"}
    if cond:
        status["conditions"] = [{"type": cond, "status": "True", "reason": reason or cond}]
    return {"metadata": {"name": "j"}, "status": status}


def test_observe_reads_result_exit_codes_and_running_ip():
    done = observe(_jobobj("Complete"), [_pod("Succeeded", 0, '{"kind":"trial","learningRate":0.001}')])
    assert done.phase == "Succeeded" and done.result["learningRate"] == 0.001
    bad = observe(
        _jobobj("Failed", reason="PodFailurePolicy"),
        [_pod("Failed", 2, "Traceback\nmodel.name: no such dir")],
    )
    assert (bad.phase, bad.reason, bad.message) == ("Failed", "InvalidConfig", "model.name: no such dir")
    running = observe(_jobobj(active=1), [_pod("Running")])
    assert running.phase == "Running" and running.pod_ip == "127.0.0.5"
    assert observe(_jobobj(), []).phase == "Pending"


def test_a_complete_job_whose_pod_update_has_not_arrived_is_still_running_until_its_result_is_read():
    """The Job watch can run ahead of the pod watch: a Complete Job whose pod the index still holds as
    Running has a result nobody has read yet, and a trial recorded then would finish without its loss."""
    lagging = observe(_jobobj("Complete"), [_pod("Running")])
    assert (lagging.phase, lagging.result) == ("Running", None)
    done = observe(_jobobj("Complete"), [_pod("Succeeded", 0, '{"kind":"trial","evalLoss":1.5}')])
    assert (done.phase, done.result) == ("Succeeded", {"kind": "trial", "evalLoss": 1.5})
    assert observe(_jobobj("Complete"), []).phase == "Succeeded", "its pods gone: nothing more will come"


def test_observe_says_whether_a_finished_job_has_its_ttl_from_the_slim_index_entry():
    from finetune_operator.handlers import _slim

    body = {**_jobobj("Complete"), "spec": {"ttlSecondsAfterFinished": 5, "template": {"spec": {}}}}
    slim = _slim(kopf.Body(body))
    assert slim["spec"] == {"ttlSecondsAfterFinished": 5}, "the index keeps only the TTL of the spec"
    assert observe(slim, [_pod("Succeeded", 0, "{}")]).expires
    assert not observe(_slim(kopf.Body(_jobobj("Complete"))), [_pod("Succeeded", 0, "{}")]).expires


def test_a_started_job_the_job_controller_made_no_pod_for_is_stuck_since_it_started():
    from finetune_operator.children import past_start_deadline

    orphan = observe(_jobobj(), [])
    assert (orphan.phase, orphan.reason, orphan.stuck_since) == (
        "Pending",
        "FailedCreate",
        "2026-01-01T00:00:00Z",
    )
    assert "created no pod for Job j" in orphan.message and "serviceAccountName" in orphan.message
    failed = past_start_deadline({"j": orphan}, "2026-01-01T00:10:01Z", 600)["j"]
    assert failed.phase == "Failed" and failed.reason == "FailedCreate"
    # not stuck: suspended (Kueue), not started yet, or the Job counted a pod the index has not seen yet
    assert observe({**_jobobj(), "spec": {"suspend": True}}, []).stuck_since is None
    assert observe({"metadata": {"name": "j"}, "status": {}}, []).stuck_since is None
    assert observe(_jobobj(active=1), []).stuck_since is None


def test_termination_message_parsing():
    assert parse_termination_message('{"kind": "train"}') == ({"kind": "train"}, "")
    assert parse_termination_message("oops\nlast line") == (None, "last line")
    assert parse_termination_message(None) == (None, "")


# ------------------------------------------------------------------ planning


def test_a_message_longer_than_the_status_bound_is_cut_so_the_status_is_still_written():
    from finetune_operator.api import MESSAGE_MAX, LRSweepStatus
    from finetune_operator.planning.status import StatusBuilder

    b = StatusBuilder(LRSweepStatus(), 1, NOW)
    b.phase("Failed", "AllTrialsFailed", "x" * (MESSAGE_MAX + 10))
    status = LRSweepStatus.model_validate(b.status.to_wire())  # the schema's bounds hold
    assert len(status.message) == MESSAGE_MAX and status.message.endswith("(cut)")
    assert all(len(c.message) <= MESSAGE_MAX for c in status.conditions)


def test_conditions_keep_transition_time_until_status_flips():
    c = set_condition([], "Ready", True, "A", "", 1, "t1")
    c = set_condition(c, "Ready", True, "B", "", 1, "t2")
    assert c[0].last_transition_time == "t1" and c[0].reason == "B"
    c = set_condition(c, "Ready", False, "C", "", 1, "t3")
    assert c[0].last_transition_time == "t3" and len(c) == 1


def test_new_range_test_sweep_creates_one_job():
    plan = plan_sweep("s", SPEC, None, 1, {}, now=NOW)
    assert [c.name for c in plan.create] == ["s-range-test"]
    assert plan.status["phase"] == "Pending" and plan.status["startTime"] == NOW
    assert plan.status["observedGeneration"] == 1


def _child(phase, result=None, reason=None, message=""):
    from finetune_operator.children import ChildState

    return ChildState(
        "s-range-test",
        phase,
        result=result,
        reason=reason,
        message=message,
        pod_ip="127.0.0.9",
        start_time="2026-01-01T00:00:00Z",
    )


RESULT = {
    "kind": "rangeTest",
    "recommendedLearningRate": 3e-4,
    "rule": "valley",
    "suggestions": {"valley": 3e-4, "steepest": 1e-4, "minimum-over-10": 5e-4, "max-over-3": None},
    "curve": [
        {"lr": 1e-7, "loss": 3.0},
        {"lr": 1e-6, "loss": 2.9},
        {"lr": 1e-4, "loss": 2.0},
        {"lr": 1e-2, "loss": 9.0},
    ],
    "stopReason": "diverged",
    "steps": 80,
    "bestLoss": 2.0,
    "effectiveBatchSize": 16,
    "adapter": "lora",
}


def test_running_range_test_reports_progress_from_metrics():
    plan = plan_sweep(
        "s",
        SPEC,
        None,
        1,
        {"s-range-test": _child("Running")},
        samples={"s-range-test": {"step": 25, "total_steps": 100, "loss": 2.5, "learning_rate": 1e-5}},
        now=NOW,
    )
    p = plan.status["progress"]
    assert (plan.status["phase"], p["step"], p["percent"], p["loss"], p["etaSeconds"]) == (
        "Running",
        25,
        25,
        2.5,
        30,
    )
    assert not plan.create


def test_finished_range_test_writes_recommendation_curve_and_conditions():
    plan = plan_sweep(
        "s", RT_SPEC, {"phase": "Running"}, 1, {"s-range-test": _child("Succeeded", RESULT)}, now=NOW
    )
    s = plan.status
    assert (s["phase"], s["recommendedLearningRate"], s["rule"], s["effectiveBatchSize"]) == (
        "Succeeded",
        3e-4,
        "valley",
        16,
    )
    assert s["suggestions"]["steepest"] == 1e-4 and len(s["curve"]) == 4
    conds = {c["type"]: c for c in s["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["Diverged"]["status"] == "True"
    assert s["completionTime"] == NOW
    assert any(e.reason == "Recommended" for e in plan.events)


def test_an_adaptive_sweep_s_range_test_stops_past_the_minimum_and_a_range_test_sweep_s_does_not():
    from finetune_trainer.adaptive import PAST_MINIMUM

    adaptive = rendering.range_test_config(LRSweepSpec.model_validate(SPEC))
    assert adaptive.range_test.stop_past_minimum == PAST_MINIMUM
    told = LRSweepSpec.model_validate({**SPEC, "rangeTest": {"stopPastMinimum": 2.0}})
    assert rendering.range_test_config(told).range_test.stop_past_minimum == 2.0
    wide = LRSweepSpec.model_validate({**SPEC, "adaptive": {"spacing": 1.5}})  # looks a spacing past it
    assert rendering.range_test_config(wide).range_test.stop_past_minimum == 1.5
    assert (
        rendering.range_test_config(LRSweepSpec.model_validate(RT_SPEC)).range_test.stop_past_minimum is None
    )


def test_a_ramp_stopped_past_its_minimum_did_not_diverge():
    past = {
        **RESULT,
        "stopReason": "past-minimum",
        "curve": [{"lr": 1e-7, "loss": 3.0}, {"lr": 5e-7, "loss": 3.5}],
    }
    plan = plan_sweep("s", RT_SPEC, None, 1, {"s-range-test": _child("Succeeded", past)}, now=NOW)
    conds = {c["type"]: c for c in plan.status["conditions"]}
    assert (conds["Diverged"]["status"], conds["Diverged"]["reason"]) == ("False", "PastMinimum")
    assert plan.status["stopReason"] == "past-minimum"
    assert "minLearningRate" not in plan.status["message"], "a stop in the first decade is not divergence"


def test_divergence_at_the_start_of_the_ramp_fails_with_the_fix():
    early = {**RESULT, "curve": [{"lr": 1e-7, "loss": 3.0}, {"lr": 5e-7, "loss": 30.0}]}
    plan = plan_sweep("s", RT_SPEC, None, 1, {"s-range-test": _child("Succeeded", early)}, now=NOW)
    assert plan.status["phase"] == "Failed"
    assert "lower rangeTest.minLearningRate" in plan.status["message"]


def test_failed_trainer_explains_the_reason_and_fix():
    plan = plan_sweep(
        "s",
        SPEC,
        None,
        1,
        {"s-range-test": _child("Failed", reason="InvalidConfig", message="model.name: not found")},
        now=NOW,
    )
    assert plan.status["phase"] == "Failed"
    assert "model.name: not found" in plan.status["message"]
    assert plan.events[-1].type == "Warning"


def test_finished_resources_are_left_alone():
    from finetune_operator.applier import status_delta

    done = plan_sweep("s", RT_SPEC, None, 1, {"s-range-test": _child("Succeeded", RESULT)}).status
    again = plan_sweep("s", RT_SPEC, done, 1, {}, now="2026-02-01T00:00:00Z")
    assert again.status == done and not again.create and not again.events
    assert status_delta(done, again.status) == {}, "nothing to write"


def test_a_finished_status_from_before_ready_meant_succeeded_is_settled_once():
    old = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "recommendedLearningRate": 1e-4,
        "completionTime": "t0",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Recommended", "lastTransitionTime": "t0"},
            {"type": "Succeeded", "status": "True", "reason": "Recommended", "lastTransitionTime": "t0"},
        ],
    }
    settled = plan_sweep("s", SPEC, old, 1, {}).status
    assert conditions(settled) == {
        "Ready": "True",
        "Succeeded": "True",
        "Failed": "False",
        "Reconciling": "False",
    }
    assert settled["completionTime"] == "t0" and settled["recommendedLearningRate"] == 1e-4
    assert plan_sweep("s", SPEC, settled, 1, {}, now="2026-02-01T00:00:00Z").status == settled


def test_grid_respects_parallelism_then_picks_the_best_trial():
    """Optuna's GridSampler orders the points (seeded); each point runs once, two at a time."""
    from finetune_operator.children import ChildState

    lrs = [1e-5, 1e-4, 1e-3]
    loss = {1e-5: 2.0, 1e-4: 1.0, 1e-3: 3.0}
    spec = {**SPEC, "method": "grid", "trials": {"learningRates": lrs, "parallelism": 2}}
    first = plan_sweep("g", spec, None, 1, {}, now=NOW)
    assert [c.trial for c in first.create] == [0, 1]
    assert first.create[0].args == ["trial", "--learning-rate", repr(first.create[0].config.learning_rate)]

    def trial(i, status):
        lr = status["trials"][i]["learningRate"]
        result = {"kind": "trial", "learningRate": lr, "evalLoss": loss[lr]}
        return ChildState(naming.trial_job("g", i), "Succeeded", result=result)

    mid = plan_sweep(
        "g",
        spec,
        first.status,
        1,
        {"g-trial-0": trial(0, first.status), "g-trial-1": ChildState("g-trial-1", "Running")},
        now=NOW,
    )
    assert [c.trial for c in mid.create] == [2]
    assert sorted(t["learningRate"] for t in mid.status["trials"]) == lrs, "every point once"
    children = {f"g-trial-{i}": trial(i, mid.status) for i in range(3)}
    done = plan_sweep("g", spec, mid.status, 1, children, now=NOW)
    assert done.status["phase"] == "Succeeded" and done.status["rule"] == "best-trial"
    assert 1e-5 < done.status["recommendedLearningRate"] < 1e-3, "the parabola through the best bracket"
    assert [t["evalLoss"] for t in done.status["trials"]] == [
        loss[t["learningRate"]] for t in mid.status["trials"]
    ]


def test_a_grid_whose_trials_all_fail_on_config_reports_the_trainers_message_not_the_window():
    from finetune_operator.children import ChildState

    spec = {**SPEC, "method": "grid", "trials": {"learningRates": [1e-5, 1e-4], "parallelism": 2}}
    error = "optimization: Seed must be between 0 and 2**32 - 1; fix the optimization field the error names"

    def failed(i, reason, message):
        return ChildState(naming.trial_job("g", i), "Failed", reason=reason, message=message, exit_code=2)

    children = {f"g-trial-{i}": failed(i, "InvalidConfig", error) for i in range(2)}
    plan = plan_sweep("g", spec, None, 1, children, now=NOW)
    assert plan.status["phase"] == "Failed" and not plan.create
    assert "learning-rate window" not in plan.status["message"]
    assert error in plan.status["message"]
    assert "fix the spec field named in the message" in plan.status["message"]
    first_only = plan_sweep("g", spec, None, 1, {"g-trial-0": children["g-trial-0"]}, now=NOW)
    assert first_only.status["phase"] == "Failed" and not first_only.create, "no more trials start"
    assert error in first_only.status["message"]
    diverged = {
        f"g-trial-{i}": ChildState(
            naming.trial_job("g", i),
            "Failed",
            reason="Diverged",
            result={"kind": "trial", "learningRate": 1e-4, "diverged": True},
        )
        for i in range(2)
    }
    plan = plan_sweep("g", spec, None, 1, diverged, now=NOW)
    assert "lower the learning-rate window" in plan.status["message"]


def test_invalid_spec_fails_with_the_field_named():
    plan = plan_sweep("s", {**SPEC, "rangeTest": {"steps": 1}}, None, 1, {}, now=NOW)
    assert plan.status["phase"] == "Failed" and "rangeTest.steps" in plan.status["message"]
    window = {**SPEC, "rangeTest": {"minLearningRate": 1e-2, "maxLearningRate": 1e-3}}
    plan = plan_sweep("s", window, None, 1, {}, now=NOW)
    assert plan.status["message"] == "rangeTest.minLearningRate must be below rangeTest.maxLearningRate", (
        "a cross-field rule names its fields once, without pydantic's 'Value error, '"
    )


FTJ = {**SPEC, "optimization": {"batchSize": 32}}


def test_finetune_with_a_value_creates_the_training_job():
    plan = plan_finetune("f", {**FTJ, "learningRate": {"value": 2e-5}}, None, 1, {}, None, now=NOW)
    assert plan.status["learningRate"] == 2e-5 and plan.status["learningRateSource"] == "value"
    assert plan.create[0].config.learning_rate == 2e-5 and plan.create[0].args == ["train"]


def test_finetune_waits_for_a_missing_sweep_then_scales_its_result():
    spec = {**FTJ, "learningRate": {"fromSweep": {"name": "s", "scale": "sqrt"}}}
    waiting = plan_finetune("f", spec, None, 1, {}, None, now=NOW)
    assert waiting.status["phase"] == "WaitingForSweep" and not waiting.create
    assert "LRSweep s not found" in waiting.status["message"]
    sweep = {"status": {"phase": "Succeeded", "recommendedLearningRate": 1e-4, "effectiveBatchSize": 8}}
    go = plan_finetune("f", spec, waiting.status, 1, {}, sweep, now=NOW)
    assert go.status["learningRate"] == pytest.approx(2e-4) and go.status["learningRateSource"] == "sweep/s"
    conds = {c["type"]: c["status"] for c in go.status["conditions"]}
    assert conds["WaitingForSweep"] == "False"
    failed = plan_finetune(
        "f", spec, None, 1, {}, {"status": {"phase": "Failed", "message": "boom"}}, now=NOW
    )
    assert failed.status["phase"] == "Failed" and "boom" in failed.status["message"]


def test_auto_finetune_creates_its_sweep_first():
    plan = plan_finetune("f", {**FTJ, "learningRate": {"auto": {}}}, None, 1, {}, None, now=NOW)
    assert plan.status["phase"] == "Sweeping" and plan.create_sweep is not None and not plan.create
    assert plan.create_sweep["optimization"]["batchSize"] == 32
    [sweep] = [m for m in plan.desired.children if m["kind"] == "LRSweep"]
    assert sweep["metadata"]["name"] == "f-lr" and sweep["metadata"]["namespace"] == "ns"
    assert sweep["metadata"]["ownerReferences"][0]["uid"] == "uid-finetunejob"


def test_finished_training_reports_losses():
    from finetune_operator.children import ChildState

    result = {
        "kind": "train",
        "learningRate": 2e-5,
        "steps": 50,
        "totalSteps": 50,
        "evalLoss": 1.5,
        "bestEvalLoss": 1.4,
        "trainLoss": 1.6,
    }
    plan = plan_finetune(
        "f",
        {**FTJ, "learningRate": {"value": 2e-5}},
        {"learningRate": 2e-5},
        1,
        {"f-train": ChildState("f-train", "Succeeded", result=result)},
        None,
        now=NOW,
    )
    s = plan.status
    assert (s["phase"], s["evalLoss"], s["bestEvalLoss"], s["progress"]["percent"]) == (
        "Succeeded",
        1.5,
        1.4,
        100,
    )


def test_a_retried_trainer_is_counted_and_its_resume_step_told_in_status_and_events():
    from finetune_operator.children import ChildState

    spec = {**FTJ, "learningRate": {"value": 2e-5}}
    running = {"learningRate": 2e-5, "learningRateSource": "value", "phase": "Running"}
    first = plan_finetune(
        "f", spec, running, 1, {"f-train": ChildState("f-train", "Running", failed_pods=1)}, None, now=NOW
    )
    assert first.status["restarts"] == 1
    [restarted] = [e for e in first.events if e.reason == "TrainerRestarted"]
    assert restarted.type == "Warning" and "attempt 1 of training Job f-train failed" in restarted.message
    again = plan_finetune(
        "f",
        spec,
        first.status,
        1,
        {"f-train": ChildState("f-train", "Running", failed_pods=1)},
        None,
        now=NOW,
    )
    assert not [e for e in again.events if e.reason == "TrainerRestarted"], "one event per failed attempt"
    result = {"kind": "train", "learningRate": 2e-5, "steps": 60, "totalSteps": 60, "resumedFromStep": 40}
    done = plan_finetune(
        "f",
        spec,
        again.status,
        1,
        {"f-train": ChildState("f-train", "Succeeded", result=result, failed_pods=1)},
        None,
        now=NOW,
    )
    assert (done.status["phase"], done.status["restarts"], done.status["resumedFromStep"]) == (
        "Succeeded",
        1,
        40,
    )
    [resumed] = [e for e in done.events if e.reason == "ResumedFromCheckpoint"]
    assert resumed.message == "Resumed from checkpoint at step 40 after attempt 1 failed"
    assert done.status["message"].endswith("; resumed from checkpoint at step 40 after attempt 1 failed")
    # a Job that failed for good: its last failure was not retried
    failed = plan_finetune(
        "f",
        spec,
        running,
        1,
        {"f-train": ChildState("f-train", "Failed", reason="Killed", failed_pods=3)},
        None,
        now=NOW,
    )
    assert failed.status["restarts"] == 2 and not [e for e in failed.events if e.reason == "TrainerRestarted"]
    fresh = plan_finetune("f", spec, running, 1, {"f-train": ChildState("f-train", "Running")}, None, now=NOW)
    assert "restarts" not in fresh.status and "resumedFromStep" not in fresh.status


def test_status_reports_the_learning_rate_the_trainer_trained_at():
    from finetune_operator.children import ChildState

    spec = {**FTJ, "learningRate": {"fromSweep": {"name": "s", "scale": "sqrt"}}}
    resolved = {"learningRate": 2e-4, "learningRateSource": "sweep/s"}
    result = {"kind": "train", "learningRate": 1.9e-4, "steps": 50, "totalSteps": 50, "evalLoss": 1.5}
    children = {"f-train": ChildState("f-train", "Succeeded", result=result)}
    plan = plan_finetune("f", spec, resolved, 1, children, None, now=NOW)
    assert plan.status["phase"] == "Succeeded"
    assert plan.status["learningRate"] == result["learningRate"], "status LR is the trained LR"
    assert "at learning rate 0.00019" in plan.status["message"]
    # an older trainer's result rounded floats to 4 significant digits: agreeing to that keeps the exact LR
    rounded = {**result, "learningRate": 2.0e-4}
    exact = {**resolved, "learningRate": 2.0000123e-4}
    children = {"f-train": ChildState("f-train", "Succeeded", result=rounded)}
    plan = plan_finetune("f", spec, exact, 1, children, None, now=NOW)
    assert plan.status["learningRate"] == 2.0000123e-4


def test_a_swept_learning_rate_at_or_under_the_schedule_floor_fails_naming_the_field():
    spec = {**FTJ, "learningRate": {"fromSweep": {"name": "s", "scale": "none"}}}
    spec["schedule"] = {"minLearningRate": 1e-4}
    sweep = {"status": {"phase": "Succeeded", "recommendedLearningRate": 1e-4, "effectiveBatchSize": 32}}
    plan = plan_finetune("f", spec, None, 1, {}, sweep, now=NOW)
    assert plan.status["phase"] == "Failed" and not plan.create
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "MinLearningRateTooHigh"
    assert (
        "schedule.minLearningRate 0.0001 is not below the learning rate 0.0001 from sweep/s"
        in (failed["message"])
    )
    ok = plan_finetune("f", {**spec, "schedule": {"minLearningRate": 1e-5}}, None, 1, {}, sweep, now=NOW)
    assert ok.status["phase"] == "Pending" and ok.create


def test_progress_and_trainer_metrics_parsing():
    text = (
        "# TYPE finetune_trainer_step gauge\nfinetune_trainer_step 10.0\nfinetune_trainer_total_steps 40.0\n"
        "finetune_trainer_loss 2.5\nfinetune_trainer_learning_rate 0.0001\nother_metric 1\n"
    )
    sample = parse_trainer_metrics(text)
    assert sample == {"step": 10.0, "total_steps": 40.0, "loss": 2.5, "learning_rate": 1e-4}
    p = progress_from_sample(sample, "2026-01-01T00:00:00Z", NOW)
    assert (p.percent, p.eta_seconds) == (25, 30)
    assert progress_from_sample({}, None, NOW) is None


def test_events_go_out_on_phase_or_reason_changes_only():
    from finetune_operator.children import ChildState

    pending = ChildState("s-range-test", "Pending", reason="Unschedulable", message="Unschedulable: no GPU")
    first = plan_sweep("s", SPEC, {"phase": "Pending"}, 1, {"s-range-test": pending}, now=NOW)
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "Unschedulable")]
    again = plan_sweep("s", SPEC, first.status, 1, {"s-range-test": pending}, now=NOW)
    assert again.events == []


def test_observe_reports_why_a_pod_cannot_be_scheduled():
    pod = {
        "metadata": {},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes: nvidia.com/gpu",
                }
            ],
        },
    }
    state = observe(_jobobj(active=1), [pod])
    assert (state.phase, state.reason, state.message) == (
        "Pending",
        "Unschedulable",
        "Unschedulable: 0/1 nodes: nvidia.com/gpu",
    )


def test_metrics_server_starts_once_per_address():
    import urllib.request

    from finetune_localcluster.processes import free_port
    from finetune_operator.api import LRSweepStatus
    from finetune_operator.metrics import OperatorMetrics

    m, port = OperatorMetrics(), free_port()
    m.serve(port, "127.0.0.1")
    m.serve(port, "127.0.0.1")  # an in-process restart: no "address already in use"
    m.watch(lambda: [("LRSweep", "ns", "s", LRSweepStatus(phase="Running"))])
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'finetune_resource_phase{kind="LRSweep",name="s",namespace="ns",phase="Running"} 1.0' in body


def test_each_kind_reports_only_the_phases_it_takes():
    """An LRSweep's status, its CRD and its phase series name four phases; a FineTuneJob adds the two in
    which it waits for its sweep."""
    from pydantic import ValidationError

    from finetune_operator.api import FineTuneJobStatus, LRSweepStatus, ResourceStatus, phases
    from finetune_operator.metrics import series

    assert phases(LRSweepStatus) == ("Pending", "Running", "Succeeded", "Failed")
    assert set(phases(FineTuneJobStatus)) == {*phases(LRSweepStatus), "WaitingForSweep", "Sweeping"}
    with pytest.raises(ValidationError):
        LRSweepStatus(phase="Sweeping")

    def phase_series(kind: str, status: ResourceStatus) -> dict[str, float]:
        samples = series(kind, "ns", "x", status)
        return {s.labels[-1]: s.value for s in samples if s.name == "finetune_resource_phase"}

    assert list(phase_series("LRSweep", LRSweepStatus())) == list(phases(LRSweepStatus))
    tuned = phase_series("FineTuneJob", FineTuneJobStatus(phase="Sweeping"))
    assert tuned["Sweeping"] == 1.0 and set(tuned) == set(phases(FineTuneJobStatus))


def test_a_fresh_job_keeps_its_jobcreated_condition_until_its_pod_has_news():
    from finetune_operator.children import ChildState

    created = plan_sweep("s", SPEC, {}, 1, {}, now=NOW).status
    quiet = plan_sweep(
        "s", SPEC, created, 1, {"s-range-test": ChildState("s-range-test", "Pending")}, now=NOW
    )
    assert quiet.status == created and not quiet.events  # nothing to write
    stuck = ChildState("s-range-test", "Pending", reason="Unschedulable", message="0/1 nodes: no GPU")
    told = plan_sweep("s", SPEC, created, 1, {"s-range-test": stuck}, now=NOW)
    assert next(c for c in told.status["conditions"] if c["type"] == "Ready")["reason"] == "Unschedulable"
    assert told.events
    # once the pod had news, a quiet Pending again reads as waiting for the pod
    again = plan_sweep(
        "s", SPEC, told.status, 1, {"s-range-test": ChildState("s-range-test", "Pending")}, now=NOW
    )
    assert next(c for c in again.status["conditions"] if c["type"] == "Ready")["reason"] == "PodPending"


# ------------------------------------------------------------------ run identity


def test_each_trainer_job_of_a_resource_writes_to_its_own_folder_under_the_resources_uid():
    grid = {
        **SPEC,
        "method": "grid",
        "trials": {"learningRates": [1e-4, 1e-3]},
        "output": {"persistentVolumeClaim": "out"},
    }

    def sub_paths(plan) -> list[str]:
        mounts = [
            c.manifest["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] for c in plan.create
        ]
        return [m["subPath"] for ms in mounts for m in ms if m["name"] == "output"]

    assert sub_paths(plan_sweep("g", grid, None, 1, {})) == [
        "lrsweep/g/uid-lrsweep/trial-0",
        "lrsweep/g/uid-lrsweep/trial-1",
    ]
    shared = {**grid, "output": {"persistentVolumeClaim": "out", "subPath": "team/exp"}}
    assert sub_paths(plan_sweep("g", shared, None, 1, {})) == ["team/exp/trial-0", "team/exp/trial-1"]
    ftj = {**SPEC, "learningRate": {"value": 1e-4}, "output": {"persistentVolumeClaim": "out"}}
    assert sub_paths(plan_finetune("f", ftj, None, 1, {}, None)) == ["finetunejob/f/uid-finetunejob/train"]


def test_auto_never_adopts_an_lrsweep_it_did_not_create():
    spec = {**SPEC, "learningRate": {"auto": {}}}
    theirs = {
        "status": {"phase": "Succeeded", "recommendedLearningRate": 1e-3},
        "owner": "uid-of-someone-else",
    }
    plan = plan_finetune("f", spec, None, 1, {}, theirs)
    assert "learningRate" not in plan.status and not plan.create and plan.create_sweep is None
    conditions = {c["type"]: c for c in plan.status["conditions"]}
    assert conditions["Stalled"]["status"] == "True" and conditions["Ready"]["reason"] == "SweepNameTaken"
    assert "delete LRSweep f-lr or re-create this FineTuneJob under another name" in plan.status["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "SweepNameTaken")]
    unowned = {**theirs, "owner": None}
    assert "learningRate" not in plan_finetune("f", spec, None, 1, {}, unowned).status
    ours = {**theirs, "owner": "uid-finetunejob"}
    assert plan_finetune("f", spec, None, 1, {}, ours).status["learningRate"] == 1e-3
    named = {**SPEC, "learningRate": {"fromSweep": {"name": "shared", "scale": "none"}}}
    assert plan_finetune("f", named, None, 1, {}, theirs).status["learningRate"] == 1e-3, "fromSweep: any"


# ------------------------------------------------------------------ what Ready means


def conditions(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_ready_is_true_once_the_result_can_be_used_and_kstatus_conditions_follow_the_phase():
    from finetune_operator.children import ChildState

    pending = plan_sweep("s", RT_SPEC, None, 1, {}).status
    assert conditions(pending) == {"Ready": "False", "Reconciling": "True"}
    running = plan_sweep("s", RT_SPEC, pending, 1, {"s-range-test": _child("Running")}).status
    assert conditions(running) == {"Ready": "False", "Reconciling": "True"}
    done = plan_sweep("s", RT_SPEC, running, 1, {"s-range-test": _child("Succeeded", RESULT)}).status
    assert {k: v for k, v in conditions(done).items() if k != "Diverged"} == {
        "Ready": "True",
        "Reconciling": "False",
        "Succeeded": "True",
        "Failed": "False",
    }
    failed = plan_sweep(
        "s", RT_SPEC, running, 1, {"s-range-test": _child("Failed", reason="OutOfMemory")}
    ).status
    assert conditions(failed) == {
        "Ready": "False",
        "Reconciling": "False",
        "Succeeded": "False",
        "Failed": "True",
        "Stalled": "True",
    }
    ftj = plan_finetune("f", {**SPEC, "learningRate": {"value": 1e-4}}, None, 1, {}, None).status
    trained = {"kind": "train", "learningRate": 1e-4, "steps": 5}
    ok = plan_finetune(
        "f",
        {**SPEC, "learningRate": {"value": 1e-4}},
        ftj,
        1,
        {"f-train": ChildState("f-train", "Succeeded", result=trained)},
        None,
    ).status
    assert (ok["phase"], conditions(ok)["Ready"]) == ("Succeeded", "True")


def test_conditions_keep_their_place_so_an_unchanged_status_is_not_rewritten():
    c = set_condition([], "Ready", False, "A", "", 1, "t1")
    c = set_condition(c, "Diverged", True, "B", "", 1, "t1")
    c = set_condition(c, "Ready", False, "A", "", 1, "t2")
    assert [x.type for x in c] == ["Ready", "Diverged"] and c[0].last_transition_time == "t1"


# ------------------------------------------------------------------ pods that cannot start


def _waiting_pod(reason: str, message: str, started: str = "2026-01-01T00:00:00Z") -> dict:
    waiting = {"waiting": {"reason": reason, "message": message}}
    return {
        "metadata": {"creationTimestamp": "2025-12-31T23:00:00Z"},  # an hour queued for a GPU first
        "status": {
            "phase": "Pending",
            "startTime": started,
            "containerStatuses": [{"name": "trainer", "state": waiting}],
        },
    }


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("CreateContainerConfigError", 'secret "hub" not found'),
        ("ImagePullBackOff", 'Back-off pulling image "nope:1"'),
        ("ErrImagePull", "pull access denied"),
    ],
)
def test_observe_names_the_container_that_cannot_start(reason, message):
    state = observe(_jobobj(active=1), [_waiting_pod(reason, message)])
    assert (state.phase, state.reason) == ("Pending", reason)
    assert state.message == f"{reason}: container trainer: {message}"
    assert state.stuck_since == "2026-01-01T00:00:00Z"


def test_a_missing_claim_is_stuck_but_missing_gpus_are_only_waiting():
    def unscheduled(message: str) -> dict:
        cond = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        return {"metadata": {"creationTimestamp": "2025-12-31T23:00:00Z"}, "status": {"conditions": [cond]}}

    claim = observe(
        _jobobj(active=1), [unscheduled('0/1 nodes are available: persistentvolumeclaim "x" not found.')]
    )
    assert (claim.reason, claim.stuck_since) == ("Unschedulable", "2026-01-01T00:00:00Z")
    gpus = observe(
        _jobobj(active=1), [unscheduled("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")]
    )
    assert (gpus.reason, gpus.stuck_since) == ("Unschedulable", None)  # more capacity may come: no deadline


def test_a_pod_that_cannot_start_is_a_warning_then_fails_the_resource_after_the_deadline():
    from finetune_operator.children import until_start_deadline

    settings = Settings(pod_start_deadline=60)
    stuck = {
        "s-range-test": observe(_jobobj(active=1), [_waiting_pod("CreateContainerConfigError", "no hub")])
    }
    created = plan_sweep("s", RT_SPEC, {}, 1, {}, now=NOW).status
    early = plan_sweep("s", RT_SPEC, created, 1, stuck, now="2026-01-01T00:00:30Z", settings=settings)
    ready = next(c for c in early.status["conditions"] if c["type"] == "Ready")
    assert early.status["phase"] == "Pending"
    assert (ready["reason"], ready["message"]) == (
        "CreateContainerConfigError",
        stuck["s-range-test"].message,
    )
    assert [(e.type, e.reason) for e in early.events] == [("Warning", "CreateContainerConfigError")]
    assert until_start_deadline(stuck, "2026-01-01T00:00:30Z", 60) == 30
    late = plan_sweep("s", RT_SPEC, early.status, 1, stuck, now="2026-01-01T00:01:01Z", settings=settings)
    failed = next(c for c in late.status["conditions"] if c["type"] == "Failed")
    assert late.status["phase"] == "Failed" and failed["reason"] == "CreateContainerConfigError"
    assert (
        "its pod did not start within 60s: CreateContainerConfigError: container trainer: no hub"
        in failed["message"]
    )
    assert "create the Secret or ConfigMap" in failed["message"]
    # ... and its Job is suspended, so a pod that starts later does not train for a failed resource.
    assert (early.desired.suspend, late.desired.suspend) == ([], ["s-range-test"])


def test_a_grid_trial_that_cannot_start_is_reported_then_fails_the_sweep_not_the_learning_rate():
    grid = {**SPEC, "method": "grid", "trials": {"learningRates": [1e-4, 1e-3], "parallelism": 2}}
    jobs = [naming.trial_job("s", i) for i in range(2)]
    pod = _waiting_pod("ImagePullBackOff", 'Back-off pulling image "private/trainer:1"')
    stuck = {job: replace(observe(_jobobj(active=1), [pod]), name=job) for job in jobs}
    settings = Settings(pod_start_deadline=60)
    created = plan_sweep("s", grid, {}, 1, {}, now=NOW).status
    early = plan_sweep("s", grid, created, 1, stuck, now="2026-01-01T00:00:30Z", settings=settings)
    assert early.status["phase"] == "Pending"
    assert early.status["message"].startswith(f"trial Job {jobs[0]}: ImagePullBackOff: container trainer")
    late = plan_sweep("s", grid, early.status, 1, stuck, now="2026-01-01T00:02:00Z", settings=settings)
    failed = next(c for c in late.status["conditions"] if c["type"] == "Failed")
    assert late.status["phase"] == "Failed" and failed["reason"] == "ImagePullBackOff"
    assert "check spec.image" in failed["message"]
    assert late.desired.suspend == sorted(jobs)
