"""The alert rules and every dashboard query, checked by a real Prometheus (Debian's package).

- `promtool check rules` on the generated rule file, `promtool test rules` on tests/promtool/;
- a real Prometheus scrapes a tiny HTTP server serving the operator's real metrics code
  (`OperatorMetrics`, filled through its writer methods with a realistic set of resources and kept
  ticking by a thread), every second, and loads the rule file; then every PromQL expression of the
  dashboards and alert rules is evaluated through the HTTP API: each parses, and each the data covers
  returns series.
"""

from __future__ import annotations

import contextlib
import http.server
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from finetune_localcluster.prometheus import Prometheus, prometheus_binaries, running_prometheus
from finetune_operator.metrics import OperatorMetrics
from finetune_tooling import alerts, dashboards

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------
# Binaries


@pytest.fixture(scope="session")
def prometheus_bins() -> tuple[str, str]:
    bins = prometheus_binaries()
    if bins is None:
        pytest.skip(
            "no prometheus/promtool: not on PATH and scripts/install-prometheus could not install them"
        )
    return bins


def test_promtool_check_rules_accepts_the_generated_rule_file(prometheus_bins):
    out = subprocess.run(
        [prometheus_bins[1], "check", "rules", str(alerts.RULES_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts.alerts())} rules found" in out.stdout


def test_promtool_unit_tests_of_the_alert_rules_pass(prometheus_bins):
    out = subprocess.run(
        [prometheus_bins[1], "test", "rules", "alerts_test.yaml"],
        cwd=REPO / "tests" / "promtool",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_cover_every_alert():
    spec = yaml.safe_load((REPO / "tests" / "promtool" / "alerts_test.yaml").read_text())
    fired = {
        t["alertname"] for case in spec["tests"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]
    }
    assert fired == {a.name for a in alerts.alerts()}


# ---------------------------------------------------------------------------------------------------------
# A scrape target serving the operator's metrics code


NS = "ml"
CURVE = [
    (1e-7 * 10 ** (i / 6), 2.5 - 1.2 * math.exp(-(((i - 20) / 8) ** 2)) + (0.3 if i > 28 else 0))
    for i in range(32)
]


def populate(m: OperatorMetrics) -> None:
    """A cluster's worth of resources, written the way the operator writes them."""
    # A finished range test with every rule's suggestion and its curve.
    m.set_phase("LRSweep", NS, "lr-find", "Succeeded")
    m.set_progress(
        "LRSweep", NS, "lr-find", trial="0", step=100, total_steps=100, learning_rate=1e-3, loss=2.9
    )
    m.set_sweep_result(
        NS,
        "lr-find",
        recommended=3.16e-4,
        rule="valley",
        curve=CURVE,
        suggestions={"steepest": 1e-4, "valley": 3.16e-4, "minimum-over-10": 1e-4, "max-over-3": 5e-4},
    )
    # A range test whose window started too high.
    m.set_phase("LRSweep", NS, "too-high", "Succeeded")
    m.set_sweep_result(NS, "too-high", recommended=1e-5, rule="valley", curve=CURVE[:3], diverged_at_min=True)
    # A grid sweep still running, with finished trials.
    m.set_phase("LRSweep", NS, "grid", "Sweeping")
    for trial, (lr, loss) in enumerate([(1e-5, 1.9), (3e-5, 1.7), (1e-4, 1.6), (3e-4, 2.4)]):
        m.set_trial(NS, "grid", trial, lr, loss)
    m.set_progress("LRSweep", NS, "grid", trial="4", step=10, total_steps=50, learning_rate=1e-3, loss=2.1)
    # A fine-tune running on the sweep's recommendation, one that failed, one stuck for an hour.
    m.set_phase("FineTuneJob", NS, "ft-run", "Running")
    m.set_resolved_lr(NS, "ft-run", "sweep/lr-find", 4.47e-4)
    m.set_progress(
        "FineTuneJob",
        NS,
        "ft-run",
        step=1,
        total_steps=1000,
        learning_rate=1e-5,
        loss=2.3,
        eval_loss=2.4,
        samples_per_second=31.5,
        eta_seconds=3600,
    )
    m.set_phase("FineTuneJob", NS, "ft-bad", "Failed")
    m.set_resolved_lr(NS, "ft-bad", "value", 0.5)
    m.set_phase("FineTuneJob", NS, "ft-stuck", "Running")
    m.set_progress("FineTuneJob", NS, "ft-stuck", step=40, total_steps=1000, learning_rate=2e-4, loss=1.8)
    m.last_progress.labels("FineTuneJob", NS, "ft-stuck").set(time.time() - 3600)  # its last step: 1 h ago
    # Operator-wide counters.
    m.jobs_created.labels("LRSweep").inc(6)
    m.jobs_created.labels("FineTuneJob").inc(3)
    m.jobs_failed.labels("FineTuneJob", "TrainerFailed").inc()
    m.jobs_retried.labels("FineTuneJob").inc()


def tick(m: OperatorMetrics, n: int) -> None:
    """What keeps happening: reconciles (a fifth of LRSweep's fail), the running fine-tune steps."""
    for kind in ("LRSweep", "FineTuneJob"):
        m.reconcile_seconds.labels(kind).observe(0.004 * (1 + n % 7))
    if n % 5 == 0:
        m.reconcile_errors.labels("LRSweep").inc()
    m.jobs_created.labels("LRSweep").inc(0)
    step = 1 + n
    m.set_progress(
        "FineTuneJob",
        NS,
        "ft-run",
        step=step,
        total_steps=1000,
        learning_rate=4.47e-4 * min(1.0, step / 30),
        loss=2.3 - step * 1e-3,
        eval_loss=2.4 - step * 1e-3,
        samples_per_second=31.5,
        eta_seconds=(1000 - step) * 0.5,
    )


@contextlib.contextmanager
def metrics_target() -> Iterator[str]:
    metrics = OperatorMetrics()
    populate(metrics)
    stop = threading.Event()

    def ticker() -> None:
        n = 0
        while not stop.wait(0.1):
            tick(metrics, n)
            n += 1

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(metrics.registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threads = [
        threading.Thread(target=server.serve_forever, daemon=True),
        threading.Thread(target=ticker, daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def prometheus(prometheus_bins, tmp_path_factory) -> Iterator[Prometheus]:
    work = tmp_path_factory.mktemp("prometheus")
    with (
        metrics_target() as target,
        running_prometheus(prometheus_bins[0], work, [target], rule_files=[alerts.RULES_FILE]) as prom,
    ):
        try:
            # Enough samples for rate() over [1m] and a couple of rule evaluations.
            prom.wait_for('count_over_time(up{job="finetune-operator"}[1m]) >= 4', timeout=60)
        except TimeoutError:
            pytest.fail(
                f"Prometheus did not scrape the target; its log:\n{(work / 'prometheus.log').read_text()}"
            )
        yield prom


# ---------------------------------------------------------------------------------------------------------
# Every expression, evaluated


# Each dashboard evaluated with its variables set to resources the populated data has.
VARIABLES = {
    "overview.json": {},
    "finetune.json": {"namespace": NS, "job": "ft-run"},
    "lrsweep.json": {"namespace": NS, "sweep": "lr-find|grid"},
}
DASHBOARD_QUERIES = [
    (f"{f} / {title}", dashboards.as_promql(expr, VARIABLES[f]))
    for f, title, expr in dashboards.iter_queries()
]
# Alert conditions that the data makes true (ft-bad failed, too-high diverged, ft-stuck stuck for an hour,
# a fifth of LRSweep reconciles fail); the operator's target is up, so FinetuneOperatorDown must be empty.
ALERTS_EMPTY = {"FinetuneOperatorDown"}


def test_the_target_is_scraped_as_the_operator_job(prometheus):
    result = prometheus.query('up{job="finetune-operator"}')["data"]["result"]
    assert [r["value"][1] for r in result] == ["1"]


@pytest.mark.parametrize(("where", "expr"), DASHBOARD_QUERIES, ids=[w for w, _ in DASHBOARD_QUERIES])
def test_every_dashboard_query_parses_and_returns_data(prometheus, where, expr):
    answer = prometheus.query(expr)
    assert answer["status"] == "success", f"{where}: {answer.get('error')} in {expr}"
    assert answer["data"]["result"], f"{where}: no data for {expr}"


@pytest.mark.parametrize("name", list(alerts.expressions()))
def test_every_alert_expression_parses_and_fires_on_matching_data(prometheus, name):
    expr = alerts.expressions()[name]
    answer = prometheus.query(expr)
    assert answer["status"] == "success", f"{name}: {answer.get('error')}"
    if name in ALERTS_EMPTY:
        assert answer["data"]["result"] == [], f"{name} matches although the operator is up"
    else:
        assert answer["data"]["result"], f"{name}: no series for {expr}"


def test_alert_conditions_pick_the_right_resources(prometheus):
    def names(expr: str) -> set[str]:
        return {
            r["metric"].get("name") or r["metric"].get("kind")
            for r in prometheus.query(expr)["data"]["result"]
        }

    exprs = alerts.expressions()
    assert names(exprs["FineTuneJobFailed"]) == {"ft-bad"}
    assert names(exprs["LRSweepDivergedAtMinimumLearningRate"]) == {"too-high"}
    assert names(exprs["FineTuneNoProgress"]) == {"ft-stuck"}
    assert names(exprs["FinetuneReconcileErrorsRising"]) == {"LRSweep"}


def test_a_bad_query_is_reported_as_an_error(prometheus):
    assert prometheus.query("sum by (kind) (rate(finetune_reconcile_errors_total))")["status"] == "error"


def test_rules_load_and_evaluate_in_prometheus(prometheus):
    prometheus.wait_for('ALERTS{alertname="FineTuneJobFailed", alertstate="firing"}')
    groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {a.name for a in alerts.alerts()}
    bad = {name: r.get("lastError") for name, r in rules.items() if r["health"] != "ok"}
    assert not bad


def test_range_test_curve_is_one_series_per_numeric_learning_rate(prometheus):
    result = prometheus.query(
        dashboards.as_promql(
            'finetune_range_test_loss{namespace=~"$namespace", name=~"$sweep"}',
            {"namespace": NS, "sweep": "lr-find"},
        )
    )
    points = sorted(
        (float(r["metric"]["learning_rate"]), float(r["value"][1])) for r in result["data"]["result"]
    )
    assert len(points) == len(CURVE)
    for (lr, loss), (want_lr, want_loss) in zip(points, sorted(CURVE), strict=True):
        assert lr == pytest.approx(want_lr, rel=1e-3)
        assert loss == pytest.approx(want_loss)


def test_reconcile_latency_quantiles_are_in_the_observed_range(prometheus):
    exprs = [e for f, title, e in dashboards.iter_queries() if title == "Reconcile latency"]
    assert len(exprs) == 2  # p50 and p95
    for expr in exprs:
        result = prometheus.query(dashboards.as_promql(expr))["data"]["result"]
        assert {r["metric"]["kind"] for r in result} == {"LRSweep", "FineTuneJob"}
        for series in result:  # observations are 4-28 ms
            assert 0.004 <= float(series["value"][1]) <= 0.05
