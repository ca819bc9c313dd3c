"""End to end: the operator on a real API server, trainer pods really running (local pod runner, CPU).

A tiny random-weight GPT-2 on a toy dataset keeps each trainer run to seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client import generate_latest

from finetune_localcluster import podspec
from finetune_operator import handlers, rendering
from finetune_operator.api import LRSweepSpec
from finetune_operator.settings import Settings
from finetune_trainer.config import TrainerConfig, TrainingSections, parse_result

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GROUP, VERSION = "finetune.dev", "v1alpha1"
OPERATOR = "finetune_operator.handlers"
PLURALS = {"LRSweep": "lrsweeps", "FineTuneJob": "finetunejobs"}


@pytest.fixture(autouse=True)
def operator_settings():
    handlers.configure(Settings(metrics_port=0, health_port=0, poll_interval=1.0))


def apply(api, namespace: str, kind: str, name: str, spec: dict) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], body
    )


def status_of(api, namespace: str, kind: str, name: str) -> dict:
    """The resource's status; empty while it does not exist yet."""
    try:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURALS[kind], name
        )
    except client.ApiException as e:
        if e.status == 404:
            return {}
        raise
    return obj.get("status") or {}


def wait_phase(api, namespace, kind, name, phases=("Succeeded", "Failed"), timeout=300) -> dict:
    """Poll the status (KopfRunner.exception blocks until the operator stops: check it after the run)."""
    deadline, status = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        status = status_of(api, namespace, kind, name)
        if status.get("phase") in phases:
            return status
        time.sleep(0.5)
    raise AssertionError(f"{kind} {name} not in {phases} after {timeout}s: {status}")


def wait_status(api, namespace, kind, name, what: str, predicate, timeout=300) -> dict:
    deadline, status = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        status = status_of(api, namespace, kind, name)
        if predicate(status):
            return status
        time.sleep(0.5)
    raise AssertionError(f"{kind} {name}: no {what} after {timeout}s: {status}")


def job_names(api, namespace: str) -> list[str]:
    return sorted(j.metadata.name for j in client.BatchV1Api(api).list_namespaced_job(namespace).items)


def test_range_test_sweep_recommends_a_learning_rate(kube_api, namespace, crds_installed, run_operator, tiny):
    spec = {
        **tiny,
        "method": "rangeTest",
        "rangeTest": {"minLearningRate": 1e-6, "maxLearningRate": 1.0, "steps": 40},
    }
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        apply(kube_api, namespace, "LRSweep", "rt", spec)
        status = wait_phase(kube_api, namespace, "LRSweep", "rt")
        text = generate_latest(handlers.State.metrics.registry).decode()
    assert runner.exception is None, runner.output
    assert status["phase"] == "Succeeded", status.get("message")
    assert 1e-6 <= status["recommendedLearningRate"] <= 1.0
    assert set(status["suggestions"]) >= {"steepest", "valley", "minimum-over-10", "max-over-3"}
    assert 5 <= len(status["curve"]) <= 200
    assert status["effectiveBatchSize"] == 16
    assert f'finetune_recommended_learning_rate{{name="rt",namespace="{namespace}"' in text


def test_an_auto_finetune_whose_range_test_trained_nothing_fails_without_training(
    kube_api, namespace, crds_installed, run_operator, tiny
):
    """A `rangeTest` window far too low (1e-9..1e-8, not extended): the trainer pod's loss never falls, so
    the sweep fails `NothingTrained` naming the bound to raise and writes no learning rate, and the `auto`
    FineTuneJob fails `SweepFailed` without creating a training Job (it used to succeed on a rule's noise)."""
    window = {"minLearningRate": 1e-9, "maxLearningRate": 1e-8, "extend": False, "steps": 20}
    spec = {**tiny, "learningRate": {"auto": {"method": "rangeTest", "rangeTest": window}}}
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        apply(kube_api, namespace, "FineTuneJob", "flat", spec)
        status = wait_phase(kube_api, namespace, "FineTuneJob", "flat")
    assert runner.exception is None, runner.output
    sweep = status_of(kube_api, namespace, "LRSweep", "flat-lr")
    failed = next(c for c in sweep["conditions"] if c["type"] == "Failed")
    assert sweep["phase"] == "Failed" and failed["reason"] == "NothingTrained", sweep.get("message")
    assert "raise rangeTest.maxLearningRate" in sweep["message"]
    assert "recommendedLearningRate" not in sweep and sweep["curve"]
    assert any("never fell" in w for w in sweep["warnings"])
    assert status["phase"] == "Failed"
    assert next(c for c in status["conditions"] if c["type"] == "Failed")["reason"] == "SweepFailed"
    assert job_names(kube_api, namespace) == ["flat-lr-range-test"], "no training Job"


def most_at_once(jobs: list) -> int:
    """The most trial Jobs that ran at the same time, from their start and completion times."""
    spans = [(j.status.start_time, j.status.completion_time) for j in jobs]
    assert all(start and end for start, end in spans), spans
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


def test_grid_sweep_runs_trials_two_at_a_time(kube_api, namespace, crds_installed, run_operator, tiny):
    spec = {
        **tiny,
        "method": "grid",
        "trials": {"learningRates": [1e-4, 1e-3, 1e-2], "steps": 10, "parallelism": 2},
    }
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        apply(kube_api, namespace, "LRSweep", "grid", spec)
        status = wait_phase(kube_api, namespace, "LRSweep", "grid")
    assert runner.exception is None, runner.output
    trials = client.BatchV1Api(kube_api).list_namespaced_job(
        namespace, label_selector="finetune.dev/role=trial"
    )
    assert most_at_once(trials.items) == 2, "two at a time: never three, and not one after another"
    assert status["phase"] == "Succeeded", status.get("message")
    assert [t["phase"] for t in status["trials"]] == ["Succeeded"] * 3
    assert all(t["evalLoss"] is not None for t in status["trials"])
    assert status["rule"] == "best-trial"
    assert job_names(kube_api, namespace) == ["grid-trial-0", "grid-trial-1", "grid-trial-2"]


def test_auto_finetune_runs_an_adaptive_sweep_then_trains_and_survives_an_operator_restart(
    kube_api, namespace, crds_installed, run_operator, tiny, tmp_path
):
    """`auto` runs the adaptive default: a range test, then trial pods (two at a time) below its ceiling, a
    recommendation with an interval; the operator is restarted while trials run and creates nothing twice."""
    spec = {
        **tiny,
        "learningRate": {
            "auto": {
                "rangeTest": {"minLearningRate": 1e-6, "maxLearningRate": 1.0, "steps": 60},
                # a 40-step fine-tune with a 60-step ramp: room for both stages, which this test is about
                "adaptive": {"candidates": 3, "trialSteps": 12, "parallelism": 2, "maxFineTunes": 8},
            }
        },
        "optimization": {**tiny["optimization"], "maxSteps": 40},
        "schedule": {"type": "cosine", "warmupRatio": 0.1},
        "evaluation": {"everySteps": 20},
        "checkpoints": {"everySteps": 20},
    }
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        apply(kube_api, namespace, "FineTuneJob", "auto", spec)
        wait_status(kube_api, namespace, "LRSweep", "auto-lr", "trial Jobs", lambda s: s.get("trials"))
    assert runner.exception is None, runner.output
    # the operator was stopped with trial pods running; a new one picks up where it left off
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        status = wait_phase(kube_api, namespace, "FineTuneJob", "auto", timeout=600)
        text = generate_latest(handlers.State.metrics.registry).decode()
    assert runner.exception is None, runner.output
    sweep = status_of(kube_api, namespace, "LRSweep", "auto-lr")
    assert sweep["phase"] == "Succeeded", sweep.get("message")
    recommended, interval = sweep["recommendedLearningRate"], sweep["interval"]
    assert (sweep["rule"], sweep["evidence"]) == ("adaptive", "Fitted"), sweep["message"]
    assert interval["low"] <= recommended <= interval["high"] < sweep["rangeTest"]["edgeLearningRate"]
    trials = sweep["trials"]
    assert len([t for t in trials if t["stage"] == 1]) >= 3 and any(t["stage"] == 2 for t in trials)
    assert all(t["phase"] == "Succeeded" and t["evalLoss"] is not None for t in trials), trials
    assert sweep["stepsSpent"] == sweep["rangeTest"]["steps"] + sum(t["steps"] for t in trials)
    assert f'finetune_trial_eval_loss{{learning_rate="{trials[0]["learningRate"]:.3e}",name="auto-lr"' in text

    assert status["phase"] == "Succeeded", status.get("message")
    assert status["learningRate"] == pytest.approx(recommended)
    assert status["learningRateSource"] == "auto/auto-lr"
    assert status["evalLoss"] is not None and status["progress"]["percent"] == 100
    expected = ["auto-lr-range-test", *(t["jobName"] for t in trials), "auto-train"]
    assert job_names(kube_api, namespace) == sorted(expected), "no duplicate or stray Jobs"
    assert_recommend_reproduces(kube_api, namespace, "auto-lr", sweep, tmp_path)


def assert_recommend_reproduces(api, namespace: str, name: str, sweep: dict, tmp_path: Path) -> None:
    """`finetune-trainer recommend` on a laptop, given the sweep's recipe, runs the same range test and the
    same trials (the pure stages are shared) and writes the recommendation the LRSweep's status shows."""
    objects = client.CustomObjectsApi(api)
    obj = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, "lrsweeps", name)
    spec = LRSweepSpec.model_validate(obj["spec"])
    cfg = TrainerConfig(
        **{f: getattr(spec, f) for f in TrainingSections.model_fields},
        range_test=spec.range_test,
        adaptive=spec.adaptive,
        output_dir=str(tmp_path / "laptop"),
    )
    config, result_file = tmp_path / "recommend.json", tmp_path / "recommend-result.json"
    config.write_text(json.dumps(cfg.to_wire()))
    cmd = [sys.executable, "-m", "finetune_trainer", "recommend", "--config", str(config)]
    done = subprocess.run(
        [*cmd, "--result-file", str(result_file), "--metrics-port", "0"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    laptop = parse_result(json.loads(result_file.read_text()))
    assert laptop.kind == "recommend", laptop
    # the trainer trains single-threaded on a CPU, so the pods and this process measure the same losses, and
    # the operator decides on them exactly as `recommend` does: the same LR to the last bit
    assert laptop.recommended_learning_rate == sweep["recommendedLearningRate"]
    assert (laptop.decided_by, laptop.evidence) == (sweep["decidedBy"], sweep["evidence"])
    assert laptop.steps_spent == sweep["stepsSpent"]
    ran = [(t.stage, t.index, t.steps) for t in laptop.trials]
    assert ran == [(t["stage"], t["index"], t["steps"]) for t in sweep["trials"]]
    for mine, theirs in zip(laptop.trials, sweep["trials"], strict=True):
        assert mine.learning_rate == pytest.approx(theirs["learningRate"], rel=1e-3)
        assert mine.eval_loss == pytest.approx(theirs["evalLoss"], rel=2e-3)  # the result's table: 4 digits


def test_bad_model_path_fails_with_the_trainers_message(
    kube_api, namespace, crds_installed, run_operator, tiny
):
    spec = {**tiny, "model": {"name": str(Path(tiny["model"]["name"]).parent / "missing")}}
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        apply(kube_api, namespace, "LRSweep", "bad", spec)
        status = wait_phase(kube_api, namespace, "LRSweep", "bad")
    assert runner.exception is None, runner.output
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidConfig", status
    assert "model.name" in status["message"]


def test_a_grid_whose_first_trial_fails_on_config_stops_with_the_trainers_message(
    kube_api, namespace, crds_installed, run_operator, tiny
):
    """Not 'lower the learning-rate window': every trial shares the config, so the first says it all."""
    spec = {
        **tiny,
        "model": {"name": str(Path(tiny["model"]["name"]).parent / "missing")},
        "method": "grid",
        "trials": {"learningRates": [1e-4, 1e-3], "steps": 5, "parallelism": 1},
    }
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        apply(kube_api, namespace, "LRSweep", "badgrid", spec)
        status = wait_phase(kube_api, namespace, "LRSweep", "badgrid")
    assert runner.exception is None, runner.output
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidConfig", status
    assert "model.name" in status["message"] and "learning-rate window" not in status["message"]
    assert job_names(kube_api, namespace) == ["badgrid-trial-0"], "no trial after a config error"


def test_a_finetune_reports_the_learning_rate_its_trainer_trained_at(
    kube_api, namespace, crds_installed, run_operator, tiny
):
    """status.learningRate is the trainer's own word (its result in the termination message), not a guess."""
    spec = {
        **tiny,
        "learningRate": {"value": 3e-3},
        "optimization": {**tiny["optimization"], "maxSteps": 6},
        "schedule": {"type": "cosine", "warmupSteps": 1, "minLearningRate": 1e-5},
        "evaluation": {"everySteps": 6},
        "checkpoints": {"everySteps": 6},
    }
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        apply(kube_api, namespace, "FineTuneJob", "lr", spec)
        status = wait_phase(kube_api, namespace, "FineTuneJob", "lr")
    assert runner.exception is None, runner.output
    assert status["phase"] == "Succeeded", status.get("message")
    [pod] = (
        client.CoreV1Api(kube_api).list_namespaced_pod(namespace, label_selector="job-name=lr-train").items
    )
    result = json.loads(pod.status.container_statuses[0].state.terminated.message)
    assert result["kind"] == "train"
    assert status["learningRate"] == result["learningRate"] == 3e-3


def test_a_killed_trainer_resumes_from_its_checkpoint_and_status_and_events_say_so(
    kube_api, namespace, crds_installed, run_operator, tiny, local_runner_config
):
    """The trainer process is killed (SIGKILL, exit 137) once it saved a checkpoint; the Job retries it, the
    new pod resumes from that checkpoint; status.resumedFromStep, status.restarts and the events tell it."""
    spec = {
        **tiny,
        "learningRate": {"value": 1e-3},
        "optimization": {**tiny["optimization"], "maxSteps": 400},
        "checkpoints": {"everySteps": 10},
        "output": {"persistentVolumeClaim": "out"},
        "backoffLimit": 2,
    }
    core = client.CoreV1Api(kube_api)
    claim = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    core.create_namespaced_persistent_volume_claim(namespace, {"metadata": {"name": "out"}, "spec": claim})
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        created = apply(kube_api, namespace, "FineTuneJob", "resume", spec)
        out = podspec.pvc_folder(local_runner_config.root, namespace, "out")
        train = out / "finetunejob" / "resume" / created["metadata"]["uid"] / "train"

        def saved() -> bool:
            return any((c / "trainer_state.json").is_file() for c in train.glob("checkpoint-*"))

        deadline = time.monotonic() + 240
        while not saved() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert saved(), f"no checkpoint under {train}"
        [pod] = core.list_namespaced_pod(namespace, label_selector="job-name=resume-train").items
        pid = int(pod.status.container_statuses[0].container_id.rsplit("/", 1)[1])
        os.kill(pid, signal.SIGKILL)
        status = wait_phase(kube_api, namespace, "FineTuneJob", "resume", timeout=400)
    assert runner.exception is None, runner.output
    assert status["phase"] == "Succeeded", status.get("message")
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=resume-train").items
    killed = [p for p in pods if p.status.phase == "Failed"]
    assert len(pods) == 2 and len(killed) == 1, [(p.metadata.name, p.status.phase) for p in pods]
    assert killed[0].status.container_statuses[0].state.terminated.exit_code == 137
    [done] = [p for p in pods if p.status.phase == "Succeeded"]
    result = json.loads(done.status.container_statuses[0].state.terminated.message)
    step = result["resumedFromStep"]
    assert step >= 10 and step % 10 == 0 and result["steps"] == 400
    assert (status["resumedFromStep"], status["restarts"]) == (step, 1)
    assert status["message"].endswith(f"resumed from checkpoint at step {step} after attempt 1 failed")
    events = core.list_namespaced_event(
        namespace, field_selector="involvedObject.kind=FineTuneJob,involvedObject.name=resume"
    ).items
    told = {e.reason: e.message for e in events}
    assert told["ResumedFromCheckpoint"] == f"Resumed from checkpoint at step {step} after attempt 1 failed"
    assert "attempt 1 of training Job resume-train failed" in told["TrainerRestarted"]


def test_grid_trials_whose_finished_jobs_are_deleted_run_once_and_the_sweep_completes(
    kube_api, namespace, crds_installed, run_operator, tiny
):
    """Results outlive their Jobs: each finished trial Job is deleted by hand as soon as the status has its
    result (what `ttlSecondsAfterFinished` does); no trial Job is ever created twice."""
    spec = {
        **tiny,
        "method": "grid",
        "trials": {"learningRates": [1e-4, 1e-3, 1e-2], "steps": 6, "parallelism": 1},
    }
    batch = client.BatchV1Api(kube_api)
    uids: dict[str, set[str]] = {}
    deleted: set[str] = set()
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        apply(kube_api, namespace, "LRSweep", "ttl", spec)
        deadline, status = time.monotonic() + 300, {}
        while time.monotonic() < deadline and status.get("phase") not in ("Succeeded", "Failed"):
            for job in batch.list_namespaced_job(namespace, label_selector="finetune.dev/role=trial").items:
                uids.setdefault(job.metadata.name, set()).add(job.metadata.uid)
            status = status_of(kube_api, namespace, "LRSweep", "ttl")
            for t in status.get("trials") or []:
                if t["phase"] == "Succeeded" and t["jobName"] not in deleted:
                    batch.delete_namespaced_job(t["jobName"], namespace, propagation_policy="Background")
                    deleted.add(t["jobName"])
            time.sleep(0.3)
        time.sleep(3)  # reconciles after the last deletion create nothing either
        for job in batch.list_namespaced_job(namespace, label_selector="finetune.dev/role=trial").items:
            uids.setdefault(job.metadata.name, set()).add(job.metadata.uid)
    assert runner.exception is None, runner.output
    assert status["phase"] == "Succeeded", status.get("message")
    assert {n: len(u) for n, u in uids.items()} == {f"ttl-trial-{i}": 1 for i in range(3)}
    assert [t["phase"] for t in status["trials"]] == ["Succeeded"] * 3
    assert all(t["evalLoss"] is not None for t in status["trials"])
    assert deleted == {f"ttl-trial-{i}" for i in range(3)}


def test_a_grid_sweep_with_a_five_second_ttl_completes_and_creates_each_trial_job_once(
    kube_api, namespace, crds_installed, run_operator, tiny
):
    """`ttlSecondsAfterFinished: 5`: the operator sets it on each trial Job once the status holds the
    trial's result, and Kubernetes' TTL controller deletes the Job; the sweep completes with every trial's
    result, and no trial Job is re-created. (A TTL set at creation lost results on a loaded machine: the
    Job and its pod went before the operator read the termination message.)"""
    spec = {
        **tiny,
        "method": "grid",
        "trials": {"learningRates": [1e-4, 1e-3, 1e-2, 3e-2], "steps": 6, "parallelism": 2},
        "ttlSecondsAfterFinished": 5,
    }
    batch = client.BatchV1Api(kube_api)
    uids: dict[str, set[str]] = {}

    def record() -> None:
        for job in batch.list_namespaced_job(namespace, label_selector="finetune.dev/role=trial").items:
            uids.setdefault(job.metadata.name, set()).add(job.metadata.uid)

    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        apply(kube_api, namespace, "LRSweep", "ttl5", spec)
        deadline, status = time.monotonic() + 300, {}
        while time.monotonic() < deadline and status.get("phase") not in ("Succeeded", "Failed"):
            record()
            status = status_of(kube_api, namespace, "LRSweep", "ttl5")
            time.sleep(0.3)
        deadline = time.monotonic() + 60  # the TTL controller deletes the last Jobs; nothing comes back
        while time.monotonic() < deadline and job_names(kube_api, namespace):
            record()
            time.sleep(0.5)
        time.sleep(3)
        record()
    assert runner.exception is None, runner.output
    assert status["phase"] == "Succeeded", status.get("message")
    assert [t["phase"] for t in status["trials"]] == ["Succeeded"] * 4
    assert all(t.get("evalLoss") is not None for t in status["trials"]), status["trials"]
    assert {n: len(u) for n, u in uids.items()} == {f"ttl5-trial-{i}": 1 for i in range(4)}
    assert job_names(kube_api, namespace) == [], "the TTL controller deleted every finished trial Job"


TPE_TRIAL_STEPS = 400


def test_bayesian_sweep_prunes_survives_a_killed_operator_then_a_finetune_uses_all_its_best_params(
    kube_cluster, kube_api, namespace, crds_installed, run_operator, tiny, tmp_path
):
    """Optuna's TPE draws learning rate and warmup ratio, 6 trials two at a time, and the median pruner stops
    the poor ones (Pruned, at which step and why, Job deleted, an event). The operator is killed (SIGKILL,
    a separate process) mid-study and a new one finishes it from the status alone: every trial Job is
    created once (Job uids watched) and no trial is lost. A FineTuneJob with `fromSweep.use: all` then trains
    at the best trial's warmup ratio."""
    sweep_spec = {
        **tiny,
        "method": "bayesian",
        "trials": {
            "searchSpace": {
                "learningRate": {"min": 1e-5, "max": 1e-1},
                "warmupRatio": {"min": 0.0, "max": 0.5},
            },
            "maxTrials": 6,
            # the operator judges a trial on the intermediate losses it polls (every second) while the
            # trial runs: 400 steps (~8 s here) let it see several; at 40 (~1 s) a run could see none
            # of a poor trial's before it ended, and nothing was pruned
            "steps": TPE_TRIAL_STEPS,
            "parallelism": 2,
            "pruner": {"type": "median", "startupTrials": 2, "evalEverySteps": TPE_TRIAL_STEPS // 10},
        },
    }
    job_spec = {
        **tiny,
        "optimization": {**tiny["optimization"], "maxSteps": 8},
        "learningRate": {"fromSweep": {"name": "tpe", "use": "all"}},
    }
    batch = client.BatchV1Api(kube_api)
    uids: dict[str, set[str]] = {}

    def watch_jobs() -> None:
        for job in batch.list_namespaced_job(namespace, label_selector="finetune.dev/role=trial").items:
            uids.setdefault(job.metadata.name, set()).add(job.metadata.uid)

    def poll_until(done, timeout: float) -> dict:
        deadline, status = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            watch_jobs()
            status = status_of(kube_api, namespace, "LRSweep", "tpe")
            if done(status):
                return status
            time.sleep(0.3)
        raise AssertionError(f"LRSweep tpe: not done after {timeout}s: {status}")

    argv = [sys.executable, "-m", "finetune_operator", "run", "--namespace", namespace]
    argv += ["--metrics-port", "0", "--health-port", "0", "--poll-interval", "1"]
    env = {**os.environ, "KUBECONFIG": str(kube_cluster.kubeconfig)}
    with (tmp_path / "operator.log").open("w") as log:
        first = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            apply(kube_api, namespace, "LRSweep", "tpe", sweep_spec)
            # mid-study: finished trials in the status (the study TPE learns from), others running
            mid = poll_until(
                lambda s: (
                    len(s.get("trials") or []) >= 3 and any(t["phase"] == "Running" for t in s["trials"])
                ),
                timeout=400,
            )
        finally:
            first.kill()  # no graceful shutdown: whatever it was doing is cut off
            first.wait(30)
    assert len(mid["trials"]) < 6, "killed mid-study"
    with run_operator(OPERATOR, namespace=namespace, timeout=300) as runner:
        sweep = poll_until(lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=500)
        apply(kube_api, namespace, "FineTuneJob", "ft", job_spec)
        status = wait_phase(kube_api, namespace, "FineTuneJob", "ft", timeout=300)
        time.sleep(3)  # reconciles after the end create nothing either
        watch_jobs()
        registry = handlers.State.metrics.registry
        sel = {"namespace": namespace, "name": "tpe"}
        exported = {
            (t["index"], what): registry.get_sample_value(metric, {**sel, "trial": str(t["index"]), **more})
            for t in sweep["trials"]
            for what, metric, more in (
                ("state", "finetune_trial_state", {"phase": t["phase"]}),
                ("intermediate", "finetune_trial_intermediate_eval_loss", {}),
                ("warmupRatio", "finetune_trial_param", {"param": "warmupRatio"}),
            )
        }
        jobs = set(job_names(kube_api, namespace))  # before the sweep's deletion takes its Jobs along
        client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "lrsweeps", "tpe"
        )
        deadline = time.monotonic() + 60
        while 'name="tpe"' in generate_latest(registry).decode() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [line for line in generate_latest(registry).decode().splitlines() if 'name="tpe"' in line]
    assert runner.exception is None, runner.output
    assert not left, "every series of the deleted sweep is gone"
    assert sweep["phase"] == "Succeeded", sweep.get("message")
    trials = sweep["trials"]
    assert [t["index"] for t in trials] == list(range(6)), "no trial lost or added"
    assert all(set(t["params"]) == {"learningRate", "warmupRatio"} for t in trials)
    assert {n: len(u) for n, u in uids.items()} == {t["jobName"]: 1 for t in trials}, "each Job created once"
    # a trainer pod may fail on a busy machine (a metrics port taken by another local cluster): the
    # sweep still decides on the trials that finished
    assert {t["phase"] for t in trials} <= {"Succeeded", "Pruned", "Failed"}
    pruned = [t for t in trials if t["phase"] == "Pruned"]
    assert pruned, f"no trial pruned: {[(t['params'], t.get('evals')) for t in trials]}"
    for t in pruned:
        assert t["index"] >= 2, "none before the pruner's two startup trials finished"
        assert t["reason"] == "Pruned" and t["prunedAtStep"] == t["evals"][-1]["step"] < TPE_TRIAL_STEPS
        assert (
            f"median pruner: eval loss {t['evals'][-1]['evalLoss']:.4g} at step {t['prunedAtStep']}"
            in (t["message"])
        )
    assert not jobs & {t["jobName"] for t in pruned}, "pruned trials' Jobs deleted"
    assert {t["jobName"] for t in trials if t["phase"] == "Succeeded"} <= jobs, "only pruned ones deleted"
    notes = client.CoreV1Api(kube_api).list_namespaced_event(
        namespace, field_selector="involvedObject.name=tpe,reason=TrialPruned"
    )
    assert {n for t in pruned for n in [t["jobName"]] if any(n in e.message for e in notes.items)} == {
        t["jobName"] for t in pruned
    }, "an event per pruned trial"
    for t in trials:  # per-trial series on the operator's /metrics
        assert exported[(t["index"], "state")] == 1.0
        assert exported[(t["index"], "warmupRatio")] == pytest.approx(t["params"]["warmupRatio"])
        assert exported[(t["index"], "intermediate")] == pytest.approx(t["evals"][-1]["evalLoss"])
    best = min((t for t in trials if t["phase"] == "Succeeded"), key=lambda t: t["evalLoss"])
    assert sweep["bestParams"] == best["params"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["params"] == {"warmupRatio": pytest.approx(best["params"]["warmupRatio"])}
    assert status["learningRate"] == pytest.approx(sweep["recommendedLearningRate"])
    template = batch.read_namespaced_job("ft-train", namespace).spec.template
    train = json.loads(template.metadata.annotations[rendering.CONFIG_ANNOTATION])
    assert train["schedule"]["warmupRatio"] == pytest.approx(best["params"]["warmupRatio"])
