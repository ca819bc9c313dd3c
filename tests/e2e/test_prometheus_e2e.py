"""A real Prometheus scrapes the real operator while it runs a range test and a fine-tune; the dashboards'
queries are then evaluated over the whole run (a panel shows what its query returned at any time: live
progress while trainers run, results after), the alerts' at its end."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from kubernetes import client

from finetune_localcluster.processes import free_port
from finetune_localcluster.prometheus import prometheus_binaries, running_prometheus
from finetune_operator import handlers
from finetune_operator.settings import Settings
from finetune_tooling import alerts, dashboards

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GROUP, VERSION = "finetune.dev", "v1alpha1"
# Queries whose data needs situations this run does not create (a failure, a stall, trials, an outage).
NEEDS_OTHER_SITUATIONS = (
    "Failed",
    "finetune_trial_",
    "diverged_at_min",
    "jobs_failed",
    "jobs_retried",
    "reconcile_errors",
    "absent(",
)


def test_prometheus_scrapes_the_operator_during_a_run(
    kube_api, namespace, crds_installed, run_operator, tmp_path
):
    bins = prometheus_binaries()
    if bins is None:
        pytest.skip("no prometheus: scripts/install-prometheus could not install it")
    subprocess.run([sys.executable, "-m", "finetune_trainer.tiny_model", str(tmp_path / "model")], check=True)
    subprocess.run(
        [sys.executable, "-m", "finetune_trainer.tiny_model", "--data", str(tmp_path / "toy.jsonl")],
        check=True,
    )
    base = {
        "model": {"name": str(tmp_path / "model")},
        "dataset": {"files": [str(tmp_path / "toy.jsonl")]},
        "optimization": {"batchSize": 16, "maxSeqLength": 32, "maxSteps": 30},
        "evaluation": {"everySteps": 10},
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
    }
    port = free_port()
    handlers.configure(
        Settings(metrics_port=port, bind_address="127.0.0.1", health_port=0, poll_interval=1.0)
    )
    custom = client.CustomObjectsApi(kube_api)
    with (
        running_prometheus(bins[0], tmp_path / "prom", [f"127.0.0.1:{port}"], [alerts.RULES_FILE]) as prom,
        run_operator("finetune_operator.handlers", namespace=namespace, timeout=300) as runner,
    ):
        for kind, plural, name, extra in (
            (
                "LRSweep",
                "lrsweeps",
                "sweep",
                # method rangeTest: the adaptive default would add trials this test is not about
                {
                    "method": "rangeTest",
                    "rangeTest": {"minLearningRate": 1e-6, "maxLearningRate": 1.0, "steps": 30},
                },
            ),
            # long enough (about 15 s of steps here, several 1 s polls) for the operator to see it run
            (
                "FineTuneJob",
                "finetunejobs",
                "tune",
                {"learningRate": {"value": 1e-3}, "optimization": {**base["optimization"], "maxSteps": 800}},
            ),
        ):
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": kind,
                "metadata": {"name": name},
                "spec": {**base, **extra},
            }
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        start = time.time()
        # first the fine-tune's live progress, throughput included, polled from its trainer while it runs:
        # the series goes stale when the run ends, so waiting for the sweep first (as this test once did)
        # could miss it on a loaded machine where the sweep's recommendation came near the fine-tune's end
        prom.wait_for(f'finetune_samples_per_second{{namespace="{namespace}",name="tune"}}', timeout=240)
        prom.wait_for(f'finetune_recommended_learning_rate{{namespace="{namespace}"}}', timeout=240)
        prom.wait_for(
            f'finetune_resource_phase{{namespace="{namespace}",name="tune",phase="Succeeded"}} == 1',
            timeout=240,
        )
        time.sleep(3)  # a few more scrapes for rate() windows
        variables = {
            "overview.json": {},
            "finetune.json": {"namespace": namespace, "job": "tune"},
            "lrsweep.json": {"namespace": namespace, "sweep": "sweep"},
        }
        span = {"start": f"{start:.3f}", "end": f"{time.time():.3f}", "step": "1"}
        answers = [
            (
                f"{f} / {title}",
                expr,
                prom.get("/api/v1/query_range", query=dashboards.as_promql(expr, variables[f]), **span),
            )
            for f, title, expr in dashboards.iter_queries()
        ]
        alert_answers = {name: prom.query(expr) for name, expr in alerts.expressions().items()}
    handlers.configure(Settings(metrics_port=0, health_port=0))  # later in-process operators serve nothing
    assert runner.exception is None, runner.output
    for where, _, answer in answers:
        assert answer["status"] == "success", f"{where}: {answer.get('error')}"
    unexplained = [
        f"{where}: {expr}"
        for where, expr, answer in answers
        if not answer["data"]["result"] and not any(s in expr for s in NEEDS_OTHER_SITUATIONS)
    ]
    assert not unexplained, "queries without data from a real run:\n" + "\n".join(unexplained)
    assert sum(bool(a["data"]["result"]) for _, _, a in answers) >= 15, (
        "most panels show data from a real run"
    )
    for name, answer in alert_answers.items():
        assert answer["status"] == "success", f"{name}: {answer.get('error')}"
        assert not answer["data"]["result"], f"{name} fired during a healthy run"
