"""The operator's Prometheus metrics: one place that names every series, and forgets deleted resources.

Per-resource series carry `kind`, `namespace` and `name` labels. `forget()` removes every series of a
resource when it is deleted, so dashboards never show ghosts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "WaitingForSweep", "Sweeping", "Running", "Succeeded", "Failed")
RESOURCE_LABELS = ("kind", "namespace", "name")


class OperatorMetrics:
    """Every series the operator exports, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._serving: set[tuple[str, int]] = set()
        r = self.registry
        res = RESOURCE_LABELS
        self.phase = Gauge(
            "finetune_resource_phase",
            "1 for the resource's current phase, 0 for the others",
            [*res, "phase"],
            registry=r,
        )
        self.learning_rate = Gauge(
            "finetune_learning_rate",
            "Current learning rate of the resource's running trainer",
            [*res, "trial"],
            registry=r,
        )
        self.training_loss = Gauge(
            "finetune_training_loss",
            "Latest training loss of the running trainer",
            [*res, "trial"],
            registry=r,
        )
        self.eval_loss = Gauge(
            "finetune_eval_loss", "Latest validation loss (final once finished)", [*res, "trial"], registry=r
        )
        self.step = Gauge("finetune_training_step", "Optimiser steps done", [*res, "trial"], registry=r)
        self.progress = Gauge(
            "finetune_progress_ratio", "Fraction of planned steps done (0-1)", res, registry=r
        )
        self.throughput = Gauge(
            "finetune_samples_per_second", "Training throughput of the running trainer", res, registry=r
        )
        self.eta = Gauge(
            "finetune_eta_seconds", "Estimated seconds until the trainer finishes", res, registry=r
        )
        self.last_progress = Gauge(
            "finetune_last_progress_timestamp_seconds",
            "Unix time the running trainer's step count last increased",
            res,
            registry=r,
        )
        self.recommended_lr = Gauge(
            "finetune_recommended_learning_rate",
            "The LRSweep's recommended learning rate",
            ["namespace", "name", "rule"],
            registry=r,
        )
        self.suggestion = Gauge(
            "finetune_rule_suggestion_learning_rate",
            "Each range-test rule's suggested learning rate",
            ["namespace", "name", "rule"],
            registry=r,
        )
        self.curve_loss = Gauge(
            "finetune_range_test_loss",
            "Smoothed range-test loss at each learning rate of the (downsampled) curve",
            ["namespace", "name", "learning_rate"],
            registry=r,
        )
        self.trial_eval_loss = Gauge(
            "finetune_trial_eval_loss",
            "Final validation loss of each trial (adaptive trials labelled <stage>-<index>)",
            ["namespace", "name", "trial", "learning_rate"],
            registry=r,
        )
        self.resolved_lr = Gauge(
            "finetune_finetunejob_learning_rate",
            "The FineTuneJob's resolved peak learning rate",
            ["namespace", "name", "source"],
            registry=r,
        )
        self.diverged_at_min = Gauge(
            "finetune_sweep_diverged_at_min_learning_rate",
            "1 when a range test diverged within its first decade: the window starts too high",
            ["namespace", "name"],
            registry=r,
        )
        self.jobs_created = Counter("finetune_jobs_created", "Trainer Jobs created", ["kind"], registry=r)
        self.jobs_failed = Counter(
            "finetune_jobs_failed", "Trainer Jobs that failed", ["kind", "reason"], registry=r
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
            "finetune_reconcile_errors", "Reconciles that raised an error", ["kind"], registry=r
        )
        self._per_resource = (
            self.phase,
            self.learning_rate,
            self.training_loss,
            self.eval_loss,
            self.step,
            self.progress,
            self.throughput,
            self.eta,
            self.last_progress,
        )
        self._per_sweep = (
            self.recommended_lr,
            self.suggestion,
            self.curve_loss,
            self.trial_eval_loss,
            self.diverged_at_min,
        )
        self._per_job = (self.resolved_lr,)

    # -- writers ------------------------------------------------------------------------------------------

    def set_phase(self, kind: str, namespace: str, name: str, phase: str) -> None:
        for p in PHASES:
            self.phase.labels(kind, namespace, name, p).set(1.0 if p == phase else 0.0)

    def set_progress(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        trial: str = "",
        step: int | None = None,
        total_steps: int | None = None,
        learning_rate: float | None = None,
        loss: float | None = None,
        eval_loss: float | None = None,
        samples_per_second: float | None = None,
        eta_seconds: float | None = None,
    ) -> None:
        key = (kind, namespace, name)
        if step is not None:
            previous = _value(self.step, (*key, trial))
            if previous is None or step > previous:
                self.last_progress.labels(*key).set(time.time())
            self.step.labels(*key, trial).set(step)
            if total_steps:
                self.progress.labels(*key).set(min(1.0, step / total_steps))
        for gauge, value in (
            (self.learning_rate, learning_rate),
            (self.training_loss, loss),
            (self.eval_loss, eval_loss),
        ):
            if value is not None:
                gauge.labels(*key, trial).set(value)
        if samples_per_second is not None:
            self.throughput.labels(*key).set(samples_per_second)
        if eta_seconds is not None:
            self.eta.labels(*key).set(eta_seconds)

    def set_sweep_result(
        self,
        namespace: str,
        name: str,
        *,
        recommended: float | None,
        rule: str | None,
        suggestions: dict[str, float | None] | None = None,
        curve: Iterable[tuple[float, float]] = (),
        diverged_at_min: bool = False,
    ) -> None:
        _remove_matching(self.recommended_lr, {"namespace": namespace, "name": name})
        if recommended is not None:
            self.recommended_lr.labels(namespace, name, rule or "").set(recommended)
        for rule_name, value in (suggestions or {}).items():
            if value is not None:
                self.suggestion.labels(namespace, name, rule_name).set(value)
        for lr, loss in curve:
            self.curve_loss.labels(namespace, name, f"{lr:.3e}").set(loss)
        self.diverged_at_min.labels(namespace, name).set(1.0 if diverged_at_min else 0.0)

    def set_trial(
        self, namespace: str, name: str, trial: int | str, learning_rate: float, eval_loss: float
    ) -> None:
        self.trial_eval_loss.labels(namespace, name, str(trial), f"{learning_rate:.3e}").set(eval_loss)

    def set_resolved_lr(self, namespace: str, name: str, source: str, value: float) -> None:
        _remove_matching(self.resolved_lr, {"namespace": namespace, "name": name})
        self.resolved_lr.labels(namespace, name, source).set(value)

    def forget(self, kind: str, namespace: str, name: str) -> int:
        """Remove every series of one resource; returns how many were removed."""
        removed = sum(
            _remove_matching(m, {"kind": kind, "namespace": namespace, "name": name})
            for m in self._per_resource
        )
        kind_only = self._per_sweep if kind == "LRSweep" else self._per_job
        removed += sum(_remove_matching(m, {"namespace": namespace, "name": name}) for m in kind_only)
        return removed

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics; a second call for the same address and port is a no-op (operator restarts
        in one process, as in tests, must not fail on their own server)."""
        if (address, port) in self._serving:
            return
        start_http_server(port, addr=address, registry=self.registry)
        self._serving.add((address, port))


def _label_names(metric: Gauge | Counter | Histogram) -> tuple[str, ...]:
    return tuple(metric._labelnames)


def _value(gauge: Gauge, labels: tuple[str, ...]) -> float | None:
    with gauge._lock:
        child = gauge._metrics.get(labels)
    return None if child is None else child._value.get()


def _remove_matching(metric: Gauge | Counter | Histogram, match: dict[str, str]) -> int:
    names = _label_names(metric)
    idx = {names.index(k): v for k, v in match.items()}
    with metric._lock:
        doomed = [key for key in metric._metrics if all(key[i] == v for i, v in idx.items())]
    for key in doomed:
        metric.remove(*key)
    return len(doomed)
