"""A cluster's worth of LRSweeps and FineTuneJobs in every situation the dashboards and alerts show, made by
the operator's own code: each status comes from the planner fed with trainer results and live samples, the
series from the controller's statuses through the operator's collector, and the counters from the
accounting the controller does (child tallies, applied manifests, reconcile timings). No API server: what
the planner asks to create counts as created.

Used by tests/unit/test_chart_static.py (every series a dashboard or alert queries has a producer) and
tests/integration/test_prometheus.py (every query, evaluated by a real Prometheus).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from finetune_operator import naming
from finetune_operator.children import ChildState, ChildTally
from finetune_operator.controller import Controller
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.planning import DesiredState, Resource, SweepRef, plan
from finetune_operator.settings import Settings

NS = "ml"
CURVE = [
    (1e-7 * 10 ** (i / 6), 2.5 - 1.2 * math.exp(-(((i - 20) / 8) ** 2)) + (0.3 if i > 28 else 0))
    for i in range(32)
]
BASE = {
    "model": {"name": "/models/tiny"},
    "dataset": {"files": ["/data/train.jsonl"]},
    "optimization": {"batchSize": 8, "maxSteps": 1000},
}
RANGE_TEST = {
    "kind": "rangeTest",
    "recommendedLearningRate": 3.16e-4,
    "rule": "valley",
    "suggestions": {"steepest": 1e-4, "valley": 3.16e-4, "minimum-over-10": 1e-4, "max-over-3": 5e-4},
    "curve": [{"lr": lr, "loss": loss} for lr, loss in CURVE],
    "stopReason": "diverged",
    "steps": 100,
    "bestLoss": 1.3,
    "effectiveBatchSize": 8,
    "minLearningRate": 1e-7,
    "maxLearningRate": CURVE[-1][0],
    "divergenceLearningRate": CURVE[-1][0],
}


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def sample(step: int, lr: float, loss: float, **more: float) -> dict[str, float]:
    return {"step": step, "total_steps": 1000, "learning_rate": lr, "loss": loss, **more}


class Fleet:
    """The resources, each reconciled by the planner through its situation's steps."""

    def __init__(self, now: datetime | None = None) -> None:
        self.metrics = OperatorMetrics(CollectorRegistry())
        self.controller = Controller(Settings(), self.metrics, api=lambda: None)
        self.now = now or datetime.now(UTC)
        started = iso(self.now - timedelta(hours=2))
        self.started = started
        self.tallies: dict[tuple[str, str], ChildTally] = {}

        # A finished range test with every rule's suggestion and its curve.
        self.run("LRSweep", "lr-find", {**BASE, "method": "rangeTest"}, {})
        rt = naming.range_test_job("lr-find")
        self.run(
            "LRSweep",
            "lr-find",
            {**BASE, "method": "rangeTest"},
            {rt: self.running(rt)},
            {rt: sample(40, 1e-4, 2.0)},
        )
        self.run(
            "LRSweep",
            "lr-find",
            {**BASE, "method": "rangeTest"},
            {rt: ChildState(rt, "Succeeded", result=RANGE_TEST)},
        )
        # A range test whose window started too high.
        early = {**RANGE_TEST, "curve": RANGE_TEST["curve"][:3]}
        rt = naming.range_test_job("too-high")
        self.run(
            "LRSweep",
            "too-high",
            {**BASE, "method": "rangeTest"},
            {rt: ChildState(rt, "Succeeded", result=early)},
        )
        # A grid sweep with three finished trials and one running (labelled by its index).
        grid = {
            **BASE,
            "method": "grid",
            "trials": {"learningRates": [1e-5, 3e-5, 1e-4, 3e-4], "parallelism": 4},
        }
        jobs = [naming.trial_job("grid", i) for i in range(4)]
        self.run("LRSweep", "grid", grid, {})
        done = {
            job: ChildState(job, "Succeeded", result={"kind": "trial", "learningRate": lr, "evalLoss": loss})
            for job, (lr, loss) in zip(jobs, [(1e-5, 1.9), (3e-5, 1.7), (1e-4, 1.6)], strict=False)
        }
        self.run(
            "LRSweep",
            "grid",
            grid,
            {**done, jobs[3]: self.running(jobs[3], retries=1)},
            {jobs[3]: sample(10, 3e-4, 2.1)},
        )
        # A bayesian sweep over learning rate and warmup ratio: two trials done, one pruned, one running.
        tpe = {
            **BASE,
            "method": "bayesian",
            "trials": {
                "searchSpace": {
                    "learningRate": {"min": 1e-5, "max": 1e-2},
                    "warmupRatio": {"min": 0.0, "max": 0.3},
                },
                "maxTrials": 6,
                "steps": 40,
                "pruner": {"type": "median", "startupTrials": 2, "evalEverySteps": 10},
            },
        }
        jobs = [naming.trial_job("tpe", i) for i in range(4)]
        self.run("LRSweep", "tpe", tpe, {})
        curves = [[2.0, 1.8, 1.7, 1.6], [2.2, 2.0, 1.9, 1.8]]
        done = {
            job: ChildState(
                job,
                "Succeeded",
                result={
                    "kind": "trial",
                    "learningRate": t["learningRate"],
                    "evalLoss": curve[-1],
                    "evals": [{"step": 10 * (k + 1), "evalLoss": v} for k, v in enumerate(curve)],
                },
            )
            for job, t, curve in zip(jobs, self.status("LRSweep", "tpe")["trials"], curves, strict=False)
        }
        self.run("LRSweep", "tpe", tpe, done)
        live = {jobs[2]: sample(10, 1e-3, 3.0, eval_step=10, eval_loss=3.1), jobs[3]: sample(10, 1e-3, 1.9)}
        self.run("LRSweep", "tpe", tpe, {**done, **{j: self.running(j) for j in jobs[2:]}}, live)
        # An adaptive sweep in stage 1, two trials running (labelled <stage>-<index>).
        adaptive = {**BASE, "adaptive": {"candidates": 3, "trialSteps": 20, "parallelism": 2}}
        rt = naming.range_test_job("adapt")
        self.run("LRSweep", "adapt", adaptive, {rt: ChildState(rt, "Succeeded", result=RANGE_TEST)})
        trials = [naming.adaptive_trial_job("adapt", 1, i) for i in range(2)]
        live = {job: sample(5 + i, 1e-5 * (i + 1), 2.4 - i / 10) for i, job in enumerate(trials)}
        self.run(
            "LRSweep",
            "adapt",
            adaptive,
            {rt: ChildState(rt, "Succeeded", result=RANGE_TEST), **{j: self.running(j) for j in trials}},
            live,
        )

        # Fine-tunes: one training on the sweep's result, one failed, one stuck for an hour, one done.
        self.from_sweep = {**BASE, "learningRate": {"fromSweep": {"name": "lr-find"}}}
        sweep = SweepRef("lr-find", self.status("LRSweep", "lr-find"), None)
        self.run("FineTuneJob", "ft-run", self.from_sweep, {}, sweep=sweep)
        self.train("ft-run", 1)
        self.run("FineTuneJob", "ft-bad", {**BASE, "learningRate": {"value": 0.5}}, {})
        job = naming.train_job("ft-bad")
        self.run("FineTuneJob", "ft-bad", {**BASE, "learningRate": {"value": 0.5}}, {job: self.running(job)})
        failed = ChildState(job, "Failed", reason="OutOfMemory", message="CUDA out of memory", failed_pods=3)
        self.run("FineTuneJob", "ft-bad", {**BASE, "learningRate": {"value": 0.5}}, {job: failed})
        stuck = {**BASE, "learningRate": {"value": 2e-4}}
        self.run("FineTuneJob", "ft-stuck", stuck, {})
        job = naming.train_job("ft-stuck")
        hour_ago = iso(self.now - timedelta(hours=1))
        for at in (hour_ago, iso(self.now)):  # polled an hour ago and now: the same step
            self.run(
                "FineTuneJob",
                "ft-stuck",
                stuck,
                {job: self.running(job)},
                {job: sample(40, 2e-4, 1.8)},
                now=at,
            )
        done = {**BASE, "learningRate": {"value": 1e-4}}
        job = naming.train_job("ft-done")
        self.run("FineTuneJob", "ft-done", done, {})
        result = {
            "kind": "train",
            "learningRate": 1e-4,
            "steps": 1000,
            "totalSteps": 1000,
            "evalLoss": 1.2,
            "trainLoss": 1.1,
        }
        self.run("FineTuneJob", "ft-done", done, {job: ChildState(job, "Succeeded", result=result)})
        for kind in ("LRSweep", "FineTuneJob"):
            self.metrics.observe_reconcile(kind, 0.004, failed=False)

    def running(self, job: str, retries: int = 0) -> ChildState:
        return ChildState(job, "Running", pod_ip="10.0.0.1", start_time=self.started, failed_pods=retries)

    def status(self, kind: str, name: str) -> dict:
        held = self.controller.statuses.get((kind, NS, name))
        return held.to_wire() if held is not None else {}

    def run(
        self,
        kind: str,
        name: str,
        spec: dict,
        children: dict[str, ChildState],
        samples: dict | None = None,
        *,
        sweep: SweepRef | None = None,
        now: str | None = None,
    ) -> DesiredState:
        """One reconcile of a resource, as the controller does it, minus the API server."""
        resource = Resource(kind, NS, name, f"uid-{name}", 1, spec, self.status(kind, name))
        desired = plan(resource, children, samples=samples, sweep=sweep, now=now or iso(self.now))
        tally = self.tallies.setdefault((kind, name), ChildTally(started=True))
        self.metrics.record_children(kind, tally.update(children))
        self.metrics.record_applied(kind, desired.children)
        self.controller.statuses[(kind, NS, name)] = desired.status
        return desired

    def train(self, name: str, step: int, now: datetime | None = None) -> None:
        """The running fine-tune, polled at `step` (warmup over 30 steps to its peak LR)."""
        job = naming.train_job(name)
        peak = self.status("FineTuneJob", name).get("learningRate") or 4.47e-4
        live = sample(
            step,
            peak * min(1.0, step / 30),
            2.3 - step * 1e-3,
            eval_loss=2.4 - step * 1e-3,
            samples_per_second=31.5,
        )
        sweep = SweepRef("lr-find", self.status("LRSweep", "lr-find"), None)
        self.run(
            "FineTuneJob",
            name,
            self.from_sweep,
            {job: self.running(job)},
            {job: live},
            sweep=sweep,
            now=iso(now or datetime.now(UTC)),
        )

    def tick(self, n: int) -> None:
        """What keeps happening: reconciles (a fifth of LRSweep's fail), the running fine-tune steps."""
        for kind in ("LRSweep", "FineTuneJob"):
            self.metrics.observe_reconcile(kind, 0.004 * (1 + n % 7), failed=kind == "LRSweep" and n % 5 == 0)
        self.train("ft-run", 1 + n)
