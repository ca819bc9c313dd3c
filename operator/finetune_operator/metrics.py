"""The operator's Prometheus metrics: per-resource series collected from the typed statuses at scrape time,
and the operator's own counters.

Per-resource series are not kept in gauges: on each scrape `StatusCollector` reads the latest status of
every resource the controller holds and turns it into series (`series()` says which), the way kuberay's
metrics managers read their informer cache. A deleted resource is simply no longer held, so its series
go with it; a series exists exactly when the status says something. Counters and the reconcile histogram
are ordinary prometheus-client metrics, labelled by kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from finetune_operator.api import (
    FINETUNEJOB,
    FineTuneJobStatus,
    LRSweepStatus,
    Progress,
    ResourceStatus,
    TrialStatus,
    phases,
)
from finetune_operator.children import TallyDelta

TRIAL_PHASES: tuple[str, ...] = phases(TrialStatus)
TERMINAL = ("Succeeded", "Failed")
RES = ("kind", "namespace", "name")
SWEEP = ("namespace", "name")

GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "finetune_resource_phase": ("1 for the resource's current phase, 0 for the others", (*RES, "phase")),
    "finetune_learning_rate": ("Current learning rate of the resource's running trainer", (*RES, "trial")),
    "finetune_training_loss": ("Latest training loss of the running trainer", (*RES, "trial")),
    "finetune_eval_loss": ("Latest validation loss (final once finished)", (*RES, "trial")),
    "finetune_training_step": (
        "Optimiser steps done (a trial sweep reports each running trial's)",
        (*RES, "trial"),
    ),
    "finetune_progress_ratio": ("Fraction of planned steps (trial sweeps: trials) done (0-1)", RES),
    "finetune_samples_per_second": ("Training throughput of the running trainer", RES),
    "finetune_eta_seconds": ("Estimated seconds until the trainer finishes", RES),
    "finetune_last_progress_timestamp_seconds": (
        "Unix time the running trainer's step count last increased",
        RES,
    ),
    "finetune_recommended_learning_rate": ("The LRSweep's recommended learning rate", (*SWEEP, "rule")),
    "finetune_rule_suggestion_learning_rate": (
        "Each range-test rule's suggested learning rate",
        (*SWEEP, "rule"),
    ),
    "finetune_range_test_loss": (
        "Smoothed range-test loss at each learning rate of the (downsampled) curve",
        (*SWEEP, "learning_rate"),
    ),
    "finetune_trial_eval_loss": (
        "Final validation loss of each trial, the objective (adaptive trials labelled <stage>-<index>)",
        (*SWEEP, "trial", "learning_rate"),
    ),
    "finetune_trial_state": ("1 for the trial's current phase, 0 for the others", (*SWEEP, "trial", "phase")),
    "finetune_trial_intermediate_eval_loss": (
        "A trial's latest intermediate validation loss (what the pruner judges)",
        (*SWEEP, "trial"),
    ),
    "finetune_trial_param": (
        "Each searched parameter's value in a trial (grid, random, bayesian)",
        (*SWEEP, "trial", "param"),
    ),
    "finetune_finetunejob_learning_rate": (
        "The FineTuneJob's resolved peak learning rate",
        (*SWEEP, "source"),
    ),
    "finetune_sweep_diverged_at_min_learning_rate": (
        "1 when a range test diverged within its first decade: the window starts too high",
        SWEEP,
    ),
}
"""Every per-resource series: name -> (help, label names)."""


class Sample(NamedTuple):
    name: str
    labels: tuple[str, ...]
    value: float


Held = tuple[str, str, str, ResourceStatus]
"""(kind, namespace, name, status) of one resource."""


def trial_label(trial: TrialStatus) -> str:
    """`<index>`, or `<stage>-<index>` for adaptive trials (stage-1 and stage-2 trials share indices)."""
    return f"{trial.stage}-{trial.index}" if trial.stage else str(trial.index)


def series(kind: str, namespace: str, name: str, status: ResourceStatus) -> Iterator[Sample]:
    """The series one resource's status stands for."""
    res = (kind, namespace, name)
    for phase in phases(type(status)):
        yield Sample("finetune_resource_phase", (*res, phase), 1.0 if status.phase == phase else 0.0)
    trials = status.trials if isinstance(status, LRSweepStatus) else None
    if status.progress is not None:
        yield from _progress(res, "", status.progress, steps=kind == FINETUNEJOB.kind or not trials)
    for trial in trials or []:
        if trial.progress is not None and trial.phase == "Running":
            yield from _progress(res, trial_label(trial), trial.progress, steps=True, per_resource=False)
    if isinstance(status, FineTuneJobStatus):
        if status.eval_loss is not None and (status.progress is None or status.progress.eval_loss is None):
            yield Sample("finetune_eval_loss", (*res, ""), status.eval_loss)
        if status.learning_rate is not None:
            source = status.learning_rate_source or ""
            yield Sample(
                "finetune_finetunejob_learning_rate", (namespace, name, source), status.learning_rate
            )
        return
    assert isinstance(status, LRSweepStatus)
    for trial in trials or []:
        yield from _trial(namespace, name, trial)
    if status.phase not in TERMINAL:
        return
    if status.recommended_learning_rate is not None:
        rule = status.rule or ""
        yield Sample(
            "finetune_recommended_learning_rate", (namespace, name, rule), status.recommended_learning_rate
        )
    for rule, value in (status.suggestions or {}).items():
        if value is not None:
            yield Sample("finetune_rule_suggestion_learning_rate", (namespace, name, rule), value)
    for point in status.curve or []:
        yield Sample("finetune_range_test_loss", (namespace, name, f"{point.lr:.3e}"), point.loss)
    failed = next((c for c in status.conditions if c.type == "Failed" and c.status == "True"), None)
    diverged = failed is not None and failed.reason == "DivergedAtMinimumLearningRate"
    yield Sample("finetune_sweep_diverged_at_min_learning_rate", (namespace, name), 1.0 if diverged else 0.0)


def _trial(namespace: str, name: str, trial: TrialStatus) -> Iterator[Sample]:
    """One trial's series: its phase, objective, latest intermediate loss and searched parameters."""
    t = (namespace, name, trial_label(trial))
    for phase in TRIAL_PHASES:
        yield Sample("finetune_trial_state", (*t, phase), 1.0 if trial.phase == phase else 0.0)
    if trial.eval_loss is not None:
        yield Sample("finetune_trial_eval_loss", (*t, f"{trial.learning_rate:.3e}"), trial.eval_loss)
    if trial.evals:
        yield Sample("finetune_trial_intermediate_eval_loss", t, trial.evals[-1].eval_loss)
    for param, value in (trial.params or {}).items():
        yield Sample("finetune_trial_param", (*t, param), value)


def _progress(
    res: tuple[str, str, str], trial: str, p: Progress, *, steps: bool, per_resource: bool = True
) -> Iterator[Sample]:
    for metric, value in (
        ("finetune_learning_rate", p.learning_rate),
        ("finetune_training_loss", p.loss),
        ("finetune_eval_loss", p.eval_loss),
        ("finetune_training_step", float(p.step) if steps else None),
    ):
        if value is not None:
            yield Sample(metric, (*res, trial), value)
    if not per_resource:
        return
    if p.total_steps:
        yield Sample("finetune_progress_ratio", res, min(1.0, p.step / p.total_steps))
    if p.samples_per_second is not None:
        yield Sample("finetune_samples_per_second", res, p.samples_per_second)
    if p.eta_seconds is not None:
        yield Sample("finetune_eta_seconds", res, float(p.eta_seconds))
    if p.last_step_time:
        at = datetime.fromisoformat(p.last_step_time.replace("Z", "+00:00")).timestamp()
        yield Sample("finetune_last_progress_timestamp_seconds", res, at)


class StatusCollector(Collector):
    """Turns the statuses `source` returns into gauge families on every scrape."""

    def __init__(self, source: Callable[[], Iterable[Held]] = tuple) -> None:
        self.source = source

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(n, h, labels=labels) for n, (h, labels) in GAUGES.items()]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {n: GaugeMetricFamily(n, h, labels=labels) for n, (h, labels) in GAUGES.items()}
        for kind, namespace, name, status in self.source():
            for s in series(kind, namespace, name, status):
                families[s.name].add_metric(s.labels, s.value)
        return list(families.values())


class OperatorMetrics:
    """Every series the operator exports, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._serving: set[tuple[str, int]] = set()
        r = self.registry
        self.statuses = StatusCollector()
        r.register(self.statuses)
        self.jobs_created = Counter("finetune_jobs_created", "Trainer Jobs created", ["kind"], registry=r)
        self.jobs_failed = Counter(
            "finetune_jobs_failed",
            "Trainer Jobs that failed, by the Job's reason",
            ["kind", "reason"],
            registry=r,
        )
        self.jobs_retried = Counter(
            "finetune_jobs_retried",
            "Trainer pod retries observed (pod failures within backoffLimit)",
            ["kind"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "finetune_reconcile_duration_seconds",
            "Time spent in one reconcile of a resource",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.reconcile_errors = Counter(
            "finetune_reconcile_errors",
            "Reconciles that raised an error or whose children the API server refused",
            ["kind"],
            registry=r,
        )

    def watch(self, source: Callable[[], Iterable[Held]]) -> None:
        """Collect per-resource series from `source` (the controller's statuses) on every scrape."""
        self.statuses.source = source

    def record_children(self, kind: str, delta: TallyDelta) -> None:
        """Pod retries and failed trainer Jobs since the last look (`children.ChildTally`)."""
        if delta.retries:
            self.jobs_retried.labels(kind).inc(delta.retries)
        for reason in delta.failures:
            self.jobs_failed.labels(kind, reason).inc()

    def record_applied(self, kind: str, manifests: Iterable[Mapping[str, Any]]) -> None:
        """Children the API server accepted: trainer Jobs count as created."""
        jobs = sum(1 for m in manifests if m.get("kind") == "Job")
        if jobs:
            self.jobs_created.labels(kind).inc(jobs)

    def observe_reconcile(self, kind: str, seconds: float, failed: bool) -> None:
        self.reconcile_seconds.labels(kind).observe(seconds)
        if failed:
            self.reconcile_errors.labels(kind).inc()

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics; a second call for the same address and port is a no-op (operator restarts
        in one process, as in tests, must not fail on their own server)."""
        if (address, port) in self._serving:
            return
        start_http_server(port, addr=address, registry=self.registry)
        self._serving.add((address, port))
