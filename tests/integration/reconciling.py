"""The operator at work on a real API server, with the trainers' outcomes chosen by the test.

`Reconciler.reconcile` is the operator's own one reconcile (`Controller.reconcile`: plan, server-side apply
of the trainer Jobs, events, status patch through the status subresource). Only the trainer Jobs' states
come from the test: `ChildState`s (the operator's own type) built from each real Job's trainer config,
so a sweep can be walked to any phase without running a trainer. Jobs are created suspended (spec
`suspend: true`), so no pod runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from kubernetes import client

from finetune_operator import naming, rendering
from finetune_operator.api import API_GROUP, FINETUNEJOB, LRSWEEP, VERSION, KindInfo
from finetune_operator.children import ChildState
from finetune_operator.controller import Controller, Snapshot, controller_uid, sweep_waited_for
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.planning import SweepRef
from finetune_operator.settings import Settings
from finetune_trainer.config import TrainerConfig

Loss = Callable[[float], float | None]
"""A trial's final validation loss at a learning rate; None: it diverged."""

BASE = {
    "model": {"name": "/models/tiny-gpt2"},
    "dataset": {"files": ["/data/train.jsonl"]},
    "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
    "suspend": True,
}
RANGE_TEST = {
    "kind": "rangeTest",
    "rule": "minimum-over-10",
    "recommendedLearningRate": 2e-3,
    "suggestions": {"steepest": 8e-4, "valley": 1.5e-3, "minimum-over-10": 2e-3, "max-over-3": 5e-3},
    "curve": [
        {"lr": 10 ** (-6 + 5 * i / 24), "loss": 3.0 - 1.0 / (1 + math.exp(-3 * (-6 + 5 * i / 24 + 3.5)))}
        for i in range(20)
    ]
    + [{"lr": 0.05, "loss": 2.6}, {"lr": 0.1, "loss": 4.0}],
    "stopReason": "diverged",
    "steps": 60,
    "bestLoss": 2.0,
    "effectiveBatchSize": 8,
    "minLearningRate": 1e-6,
    "maxLearningRate": 0.1,
    "divergenceLearningRate": 0.1,
    "priorLearningRate": 1e-3,
}


def parabola(lr: float) -> float:
    """A validation loss with its minimum at 2e-3."""
    return 2.0 + 0.3 * (math.log10(lr) + 2.7) ** 2


class Reconciler:
    """Creates resources and runs the operator's reconcile on them, with the trainers' outcomes given."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.controller = Controller(Settings(), OperatorMetrics(), lambda: api)
        self.children: dict[tuple[str, str], dict[str, ChildState]] = {}

    def create(self, kind: KindInfo, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{API_GROUP}/{VERSION}", "kind": kind.kind, "metadata": {"name": name}}
        body["spec"] = {**BASE, **spec}
        return self.custom.create_namespaced_custom_object(
            API_GROUP, VERSION, self.namespace, kind.plural, body
        )

    def get(self, kind: KindInfo, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(API_GROUP, VERSION, self.namespace, kind.plural, name)

    def jobs(self, kind: KindInfo, name: str) -> list[dict[str, Any]]:
        """The resource's Jobs as the API holds them (wire JSON)."""
        selector = f"{naming.KIND_LABELS[kind.kind]}={name}"
        response = self.batch.list_namespaced_job(
            self.namespace, label_selector=selector, _preload_content=False
        )
        return json.loads(response.data)["items"]

    def reconcile(self, kind: KindInfo, name: str) -> dict[str, Any]:
        """One reconcile by the operator's controller; the status it wrote. New Jobs start Running."""
        body = self.get(kind, name)
        children = self.children.setdefault((kind.kind, name), {})
        sweep = None
        if kind is FINETUNEJOB:
            sweep_name = sweep_waited_for(body["spec"], name)
            if sweep_name:
                try:
                    found = self.get(LRSWEEP, sweep_name)
                    sweep = SweepRef(sweep_name, found.get("status") or {}, controller_uid(found))
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise
        snapshot = Snapshot((kind.kind, self.namespace, name), body, dict(children), sweep)
        self.controller.reconcile(snapshot)
        for job in self.jobs(kind, name):
            children.setdefault(job["metadata"]["name"], ChildState(job["metadata"]["name"], "Running"))
        return self.get(kind, name).get("status") or {}

    def finish(self, kind: KindInfo, name: str, job: str, result: dict[str, Any] | None) -> None:
        """The trainer of `job` ended: with `result` (its termination message), or diverged (None)."""
        children = self.children[(kind.kind, name)]
        if result is None:
            children[job] = ChildState(job, "Failed", reason="Diverged", message="loss diverged at step 3")
        else:
            children[job] = ChildState(job, "Succeeded", result=result)

    def config(self, kind: KindInfo, name: str, job: str) -> TrainerConfig:
        """The trainer config the operator rendered into `job`."""
        found = next(j for j in self.jobs(kind, name) if j["metadata"]["name"] == job)
        annotations = found["spec"]["template"]["metadata"]["annotations"]
        return TrainerConfig.model_validate(json.loads(annotations[rendering.CONFIG_ANNOTATION]))

    def run_sweep(self, name: str, loss: Loss = parabola, until: int | None = None) -> dict[str, Any]:
        """Reconcile a sweep, finishing its range test (if it has one) and then its trials one at a time,
        until it is Succeeded or Failed (or `until` trials have been finished, e.g. to leave it Running)."""
        status = self.reconcile(LRSWEEP, name)
        if naming.range_test_job(name) in self.children[("LRSweep", name)]:  # adaptive, rangeTest
            self.finish(LRSWEEP, name, naming.range_test_job(name), RANGE_TEST)
        for finished in range(100):
            status = self.reconcile(LRSWEEP, name)
            if status.get("phase") in ("Succeeded", "Failed") or (until is not None and finished >= until):
                return status
            running = [j for j, c in self.children[("LRSweep", name)].items() if c.phase == "Running"]
            assert running, f"nothing running and {name} not finished: {status.get('message')}"
            config = self.config(LRSWEEP, name, running[0])
            value = loss(config.learning_rate)
            result = None
            if value is not None:
                steps = config.optimization.max_steps
                result = {
                    "kind": "trial",
                    "learningRate": config.learning_rate,
                    "evalLoss": value,
                    "steps": steps,
                }
            self.finish(LRSWEEP, name, running[0], result)
        raise AssertionError(f"{name} never finished")

    def run_finetune(self, name: str, eval_loss: float = 2.05) -> dict[str, Any]:
        """Reconcile a FineTuneJob until its training Job exists, finish that, reconcile once more."""
        status = self.reconcile(FINETUNEJOB, name)
        job = naming.train_job(name)
        if job not in self.children[("FineTuneJob", name)]:
            return status  # still waiting (for its sweep)
        lr = self.config(FINETUNEJOB, name, job).learning_rate
        result = {
            "kind": "train",
            "learningRate": lr,
            "steps": 120,
            "totalSteps": 120,
            "trainLoss": eval_loss + 0.1,
            "evalLoss": eval_loss,
            "bestEvalLoss": eval_loss - 0.02,
        }
        self.finish(FINETUNEJOB, name, job, result)
        return self.reconcile(FINETUNEJOB, name)
