"""The alert rules and every dashboard query, checked by a real Prometheus (Debian's package).

- `promtool check rules` on the generated rule file, `promtool test rules` on tests/promtool/;
- a real Prometheus scrapes a tiny HTTP server serving the operator's metrics for a fleet of resources in
  every situation (tests/fleet.py: statuses made by the operator's planner, series by its collector,
  counters by its accounting; a thread keeps a fine-tune stepping and reconciles happening), every
  second, and loads the rule file; then every PromQL expression of the dashboards and alert rules is
  evaluated through the HTTP API: each parses, and each the data covers returns series.
"""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fleet import CURVE, NS, Fleet
from prometheus_client import generate_latest

from finetune_localcluster.prometheus import Prometheus, prometheus_binaries, running_prometheus
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


@contextlib.contextmanager
def metrics_target() -> Iterator[str]:
    fleet = Fleet()
    metrics = fleet.metrics
    stop = threading.Event()

    def ticker() -> None:
        n = 0
        while not stop.wait(0.1):
            fleet.tick(n)
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


# Each dashboard evaluated with its variables set to resources of the fleet.
VARIABLES = {
    "overview.json": {},
    "finetune.json": {"namespace": NS, "job": "ft-run"},
    "lrsweep.json": {"namespace": NS, "sweep": "lr-find|grid|tpe"},
}
DASHBOARD_QUERIES = [
    (f"{f} / {title}", dashboards.as_promql(expr, VARIABLES[f]))
    for f, title, expr in dashboards.iter_queries()
]
# Alert conditions that the fleet makes true (ft-bad failed, too-high diverged, ft-stuck stuck for an hour,
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
