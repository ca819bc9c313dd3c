"""Grafana dashboards for the operator, as code: plain Python dicts written as JSON into the chart.

`python -m finetune_tooling.dashboards` writes `charts/finetune-operator/dashboards/*.json`, which the
chart ships as ConfigMaps for Grafana's dashboard sidecar; `--check` fails when a file differs from this
module. Three dashboards:

- **Overview**: every LRSweep/FineTuneJob by phase, running trainers, failures, trainer Jobs created /
  failed / retried, reconcile latency p50/p95 and reconcile errors, operator scrape health.
- **Fine-tune**: one FineTuneJob (variables `namespace`, `job`): resolved peak LR, the LR schedule as it
  runs, training and eval loss, throughput, step rate, progress and ETA.
- **LR sweep**: one LRSweep (variables `namespace`, `sweep`): the range test's loss vs learning rate as an
  XY chart (the `learning_rate` label of `finetune_range_test_loss` turned into a numeric field), every
  rule's suggestion and the recommendation, per-trial eval loss, state and intermediate loss, and the
  objective against each searched parameter (one XY chart per value of the `param` variable).

Queries use only the series `metrics.OperatorMetrics` exports (plus `up`); a unit test enforces it, and an
integration test evaluates every query against a real Prometheus scraping the operator's metrics code.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO_ROOT / "charts" / "finetune-operator" / "dashboards"

DS = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["finetune-operator"]
OPERATOR_JOB = 'job="finetune-operator"'  # the ServiceMonitor's jobLabel makes this the chart name


# ---------------------------------------------------------------------------------------------------------
# Small builders


@dataclass
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False

    def target(self, ref: str) -> dict[str, Any]:
        t: dict[str, Any] = {"datasource": DS, "refId": ref, "expr": self.expr}
        if self.legend:
            t["legendFormat"] = self.legend
        if self.instant:
            t["instant"] = True
            t["range"] = False
        if self.table:
            t["format"] = "table"
        return t


@dataclass
class Panel:
    title: str
    kind: str  # Grafana panel type
    queries: list[Query]
    w: int = 12
    h: int = 8
    description: str = ""
    unit: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    transformations: list[dict[str, Any]] = field(default_factory=list)
    repeat: str | None = None  # a variable: one copy of the panel per value

    def render(self, pid: int, x: int, y: int) -> dict[str, Any]:
        defaults = dict(self.defaults)
        if self.unit:
            defaults["unit"] = self.unit
        p: dict[str, Any] = {
            "id": pid,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DS,
            "gridPos": {"h": self.h, "w": self.w, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": self.overrides},
            "options": self.options,
            "targets": [q.target(chr(ord("A") + i)) for i, q in enumerate(self.queries)],
        }
        if self.transformations:
            p["transformations"] = self.transformations
        if self.repeat:
            p["repeat"], p["repeatDirection"] = self.repeat, "h"
        return p


def _row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def _layout(items: list[Panel | dict[str, Any]]) -> list[dict[str, Any]]:
    """Place panels left to right, wrapping at Grafana's 24 columns; rows take a full line."""
    out: list[dict[str, Any]] = []
    x = y = line_h = 0
    for pid, item in enumerate(items, start=1):
        if isinstance(item, dict):  # a row
            y += line_h
            x = line_h = 0
            out.append({**item, "id": pid, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
            y += 1
            continue
        if x + item.w > 24:
            y += line_h
            x = line_h = 0
        out.append(item.render(pid, x, y))
        x += item.w
        line_h = max(line_h, item.h)
    return out


def _datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
    }


def _query_var(name: str, label: str, query: str, multi: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,  # on time-range change: new resources appear without a reload
        "includeAll": multi,
        "multi": multi,
        "allValue": ".*",
        "current": {},
        "sort": 1,
        "hide": 0,
    }


def _dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Panel | dict[str, Any]],
    variables: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": [_datasource_var(), *variables]},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": TAGS, "asDropdown": True, "title": "finetune-operator"}],
        "panels": _layout(panels),
    }


def _timeseries(
    title: str,
    queries: list[Query],
    *,
    unit: str | None = None,
    w: int = 12,
    description: str = "",
    log_y: bool = False,
    stack: bool = False,
) -> Panel:
    custom: dict[str, Any] = {"lineWidth": 1, "fillOpacity": 10 if stack else 0, "showPoints": "never"}
    if log_y:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return Panel(
        title,
        "timeseries",
        queries,
        w=w,
        unit=unit,
        description=description,
        defaults={"custom": custom},
        options={
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def _stat(
    title: str,
    queries: list[Query],
    *,
    unit: str | None = None,
    w: int = 6,
    h: int = 4,
    description: str = "",
    text_mode: str = "value_and_name",
    decimals: int | None = None,
    thresholds: list[dict[str, Any]] | None = None,
) -> Panel:
    defaults: dict[str, Any] = {}
    if decimals is not None:
        defaults["decimals"] = decimals
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
        defaults["color"] = {"mode": "thresholds"}
    return Panel(
        title,
        "stat",
        queries,
        w=w,
        h=h,
        unit=unit,
        description=description,
        defaults=defaults,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": text_mode,
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    )


def _table(
    title: str,
    queries: list[Query],
    *,
    w: int = 12,
    h: int = 8,
    description: str = "",
    hide: tuple[str, ...] = ("Time",),
    rename: dict[str, str] | None = None,
) -> Panel:
    return Panel(
        title,
        "table",
        queries,
        w=w,
        h=h,
        description=description,
        options={"showHeader": True, "cellHeight": "sm"},
        transformations=[
            {
                "id": "organize",
                "options": {"excludeByName": dict.fromkeys(hide, True), "renameByName": rename or {}},
            }
        ],
    )


def _xy(
    title: str,
    query: Query,
    *,
    x: str,
    y: str,
    description: str,
    w: int = 12,
    h: int = 10,
    x_unit: str = "none",
    y_unit: str = "none",
) -> Panel:
    """An XY chart of an instant table query whose label `x` holds a number.

    A Prometheus label is a string, so the panel first converts it into a numeric field, sorts by it and
    drops the other columns; the x axis is logarithmic (learning rates span decades).
    """
    return Panel(
        title,
        "xychart",
        [query],
        w=w,
        h=h,
        description=description,
        defaults={
            "custom": {
                "show": "points+lines",
                "pointSize": {"fixed": 5},
                "lineWidth": 1,
                "axisPlacement": "auto",
            }
        },
        overrides=[
            {
                "matcher": {"id": "byName", "options": x},
                "properties": [
                    {"id": "custom.scaleDistribution", "value": {"type": "log", "log": 10}},
                    {"id": "unit", "value": x_unit},
                    {"id": "displayName", "value": "learning rate"},
                ],
            },
            {"matcher": {"id": "byName", "options": y}, "properties": [{"id": "unit", "value": y_unit}]},
        ],
        options=_xy_options(x, y),
        transformations=[
            {
                "id": "convertFieldType",
                "options": {"conversions": [{"targetField": x, "destinationType": "number"}]},
            },
            {"id": "sortBy", "options": {"sort": [{"field": x, "desc": False}]}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True}},
            },
        ],
    )


def _xy_options(x: str, y: str) -> dict[str, Any]:
    """An XY chart's options: one series, field `x` against field `y` of the first frame."""
    return {
        "mapping": "manual",
        "series": [
            {
                "frame": {"matcher": {"id": "byIndex", "options": 0}},
                "x": {"matcher": {"id": "byName", "options": x}},
                "y": {"matcher": {"id": "byName", "options": y}},
            }
        ],
        # Grafana < 11.3 reads the series mapping from `seriesMapping`/`dims`.
        "seriesMapping": "manual",
        "dims": {"x": x},
        "legend": {"showLegend": False},
        "tooltip": {"mode": "single"},
    }


def _objective_vs_param(sel: str) -> Panel:
    """One XY chart per searched parameter (the `param` variable, repeated): each trial's final eval loss
    against its value of that parameter. The two instant table queries are joined on the `trial` label."""
    x, y = "Value #A", "Value #B"
    return Panel(
        "Trials: eval loss vs $param",
        "xychart",
        [
            Query(f'finetune_trial_param{{{sel}, param=~"$param"}}', instant=True, table=True),
            Query(f"finetune_trial_eval_loss{{{sel}}}", instant=True, table=True),
        ],
        w=8,
        h=9,
        description="The objective (final validation loss) of each finished trial against the value it "
        "tried of one searched parameter; one chart per parameter. Pruned trials have no final loss.",
        repeat="param",
        defaults={"custom": {"show": "points", "pointSize": {"fixed": 7}, "axisPlacement": "auto"}},
        overrides=[
            {
                "matcher": {"id": "byName", "options": x},
                "properties": [{"id": "displayName", "value": "$param"}],
            },
            {
                "matcher": {"id": "byName", "options": y},
                "properties": [{"id": "displayName", "value": "eval loss"}],
            },
        ],
        options=_xy_options(x, y),
        transformations=[
            {"id": "joinByField", "options": {"byField": "trial", "mode": "inner"}},
            {"id": "sortBy", "options": {"sort": [{"field": x, "desc": False}]}},
        ],
    )


# ---------------------------------------------------------------------------------------------------------
# The dashboards


def overview() -> dict[str, Any]:
    rate = "[$__rate_interval]"
    buckets = f"sum by (le, kind) (rate(finetune_reconcile_duration_seconds_bucket{rate}))"
    panels: list[Panel | dict[str, Any]] = [
        _row("Resources"),
        _stat(
            "LRSweeps by phase",
            [Query('sum by (phase) (finetune_resource_phase{kind="LRSweep"})', "{{phase}}")],
            w=12,
            description="How many LRSweeps are in each phase right now.",
        ),
        _stat(
            "FineTuneJobs by phase",
            [Query('sum by (phase) (finetune_resource_phase{kind="FineTuneJob"})', "{{phase}}")],
            w=12,
            description="How many FineTuneJobs are in each phase right now.",
        ),
        _stat(
            "Running trainers",
            [Query('sum(finetune_resource_phase{phase="Running"})', "trainers")],
            w=6,
            description=(
                "Resources whose trainer pods are running (phase Running; a FineTuneJob that is Sweeping "
                "waits for its LRSweep, whose trainers count there)."
            ),
        ),
        _stat(
            "Failed resources",
            [Query('sum(finetune_resource_phase{phase="Failed"})', "failed")],
            w=6,
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
            description="LRSweeps and FineTuneJobs in phase Failed (they stay until deleted).",
        ),
        _stat(
            "Sweeps diverged at min LR",
            [Query("sum(finetune_sweep_diverged_at_min_learning_rate)", "sweeps")],
            w=6,
            thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}],
            description="Range tests whose window started too high (see the LRSweepDivergedAtMinimum"
            "LearningRate alert).",
        ),
        _stat(
            "Operator up",
            [Query(f"sum(up{{{OPERATOR_JOB}}})", "up")],
            w=6,
            thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
            description="Scrape targets of the operator that are up (the chart runs one replica).",
        ),
        _timeseries(
            "Resources by phase over time",
            [Query("sum by (kind, phase) (finetune_resource_phase)", "{{kind}} {{phase}}")],
            w=12,
            stack=True,
        ),
        _table(
            "Failed resources",
            [Query('finetune_resource_phase{phase="Failed"} == 1', instant=True, table=True)],
            w=12,
            hide=(
                "Time",
                "Value",
                "__name__",
                "phase",
                "job",
                "instance",
                "pod",
                "service",
                "endpoint",
                "container",
            ),
            description="Which resources failed; `kubectl describe` them for the reason.",
        ),
        _row("Trainer Jobs"),
        _timeseries(
            "Trainer Jobs created",
            [Query(f"sum by (kind) (increase(finetune_jobs_created_total{rate}))", "{{kind}}")],
            w=8,
            unit="short",
        ),
        _timeseries(
            "Trainer Jobs failed",
            [
                Query(
                    f"sum by (kind, reason) (increase(finetune_jobs_failed_total{rate}))",
                    "{{kind}}: {{reason}}",
                )
            ],
            w=8,
            unit="short",
        ),
        _timeseries(
            "Trainer pod retries",
            [Query(f"sum by (kind) (increase(finetune_jobs_retried_total{rate}))", "{{kind}}")],
            w=8,
            unit="short",
        ),
        _row("Operator"),
        _timeseries(
            "Reconcile latency",
            [
                Query(f"histogram_quantile(0.5, {buckets})", "p50 {{kind}}"),
                Query(f"histogram_quantile(0.95, {buckets})", "p95 {{kind}}"),
            ],
            unit="s",
            w=8,
        ),
        _timeseries(
            "Reconciles per second",
            [Query(f"sum by (kind) (rate(finetune_reconcile_duration_seconds_count{rate}))", "{{kind}}")],
            unit="ops",
            w=8,
        ),
        _timeseries(
            "Reconcile errors per second",
            [Query(f"sum by (kind) (rate(finetune_reconcile_errors_total{rate}))", "{{kind}}")],
            unit="ops",
            w=8,
        ),
    ]
    return _dashboard(
        "finetune-overview",
        "finetune-operator / Overview",
        "Every LRSweep and FineTuneJob by phase, trainer Jobs, and the operator's reconcile health.",
        panels,
        [],
    )


def finetune() -> dict[str, Any]:
    sel = 'kind="FineTuneJob", namespace=~"$namespace", name=~"$job"'
    job_sel = 'namespace=~"$namespace", name=~"$job"'
    panels: list[Panel | dict[str, Any]] = [
        _stat(
            "Phase",
            [Query(f"finetune_resource_phase{{{sel}}} == 1", "{{name}}: {{phase}}")],
            w=6,
            text_mode="name",
            description="Current phase of each selected FineTuneJob.",
        ),
        _stat(
            "Peak learning rate",
            [Query(f"finetune_finetunejob_learning_rate{{{job_sel}}}", "{{name}} ({{source}})")],
            w=6,
            decimals=8,
            description="The resolved peak LR and where it came from (value, fromSweep or auto).",
        ),
        Panel(
            "Progress",
            "gauge",
            [Query(f"finetune_progress_ratio{{{sel}}}", "{{name}}")],
            w=6,
            h=4,
            unit="percentunit",
            defaults={"min": 0, "max": 1},
            options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
            description="Fraction of the planned optimiser steps done.",
        ),
        _stat(
            "ETA",
            [Query(f"finetune_eta_seconds{{{sel}}}", "{{name}}")],
            w=6,
            unit="s",
            description="Estimated time until the trainer finishes.",
        ),
        _timeseries(
            "Learning rate schedule",
            [
                Query(f"finetune_learning_rate{{{sel}}}", "{{name}}"),
                Query(f"finetune_finetunejob_learning_rate{{{job_sel}}}", "{{name}} peak ({{source}})"),
            ],
            w=12,
            unit="sci",
            description="The trainer's current LR (warmup, decay, restarts) against its peak.",
        ),
        _timeseries(
            "Loss",
            [
                Query(f"finetune_training_loss{{{sel}}}", "{{name}} train"),
                Query(f"finetune_eval_loss{{{sel}}}", "{{name}} eval"),
            ],
            w=12,
            description="Latest training loss and validation loss.",
        ),
        _timeseries(
            "Throughput", [Query(f"finetune_samples_per_second{{{sel}}}", "{{name}}")], w=8, unit="samples/s"
        ),
        _timeseries("Steps", [Query(f"finetune_training_step{{{sel}}}", "{{name}}")], w=8, unit="short"),
        _timeseries(
            "Seconds since last step",
            [Query(f"time() - finetune_last_progress_timestamp_seconds{{{sel}}}", "{{name}}")],
            w=8,
            unit="s",
            description="Grows while the trainer is stuck; FineTuneNoProgress fires past its threshold.",
        ),
    ]
    variables = [
        _query_var(
            "namespace", "Namespace", 'label_values(finetune_resource_phase{kind="FineTuneJob"}, namespace)'
        ),
        _query_var(
            "job",
            "FineTuneJob",
            'label_values(finetune_resource_phase{kind="FineTuneJob", namespace=~"$namespace"}, name)',
        ),
    ]
    return _dashboard(
        "finetune-finetunejob",
        "finetune-operator / Fine-tune",
        "One FineTuneJob: its learning rate and schedule, losses, throughput, progress and ETA.",
        panels,
        variables,
    )


def lr_sweep() -> dict[str, Any]:
    sel = 'namespace=~"$namespace", name=~"$sweep"'
    ksel = f'kind="LRSweep", {sel}'
    panels: list[Panel | dict[str, Any]] = [
        _stat(
            "Phase",
            [Query(f"finetune_resource_phase{{{ksel}}} == 1", "{{name}}: {{phase}}")],
            w=6,
            text_mode="name",
        ),
        _stat(
            "Recommended learning rate",
            [Query(f"finetune_recommended_learning_rate{{{sel}}}", "{{name}} ({{rule}})")],
            w=6,
            decimals=8,
            description="The recommendation and the rule that made it.",
        ),
        _stat(
            "Diverged at minimum LR",
            [Query(f"finetune_sweep_diverged_at_min_learning_rate{{{sel}}}", "{{name}}")],
            w=6,
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
            description="1: the range test diverged in its first decade, so the window starts too high.",
        ),
        _stat("Progress", [Query(f"finetune_progress_ratio{{{ksel}}}", "{{name}}")], w=6, unit="percentunit"),
        _xy(
            "Range test: loss vs learning rate",
            Query(f"finetune_range_test_loss{{{sel}}}", instant=True, table=True),
            x="learning_rate",
            y="Value",
            w=16,
            h=10,
            description="The smoothed range-test loss at each learning rate of the (downsampled) curve. "
            "The learning_rate label becomes the x field.",
        ),
        _table(
            "Suggestions by rule",
            [
                Query(f"finetune_rule_suggestion_learning_rate{{{sel}}}", instant=True, table=True),
            ],
            w=8,
            h=10,
            hide=("Time", "__name__", "job", "instance", "pod", "service", "endpoint", "container"),
            rename={"Value": "suggested learning rate"},
            description="Every suggestion rule's learning rate; the recommended rule is in the stat above.",
        ),
        _timeseries(
            "Live range test",
            [
                Query(f"finetune_training_loss{{{ksel}}}", "{{name}} loss {{trial}}"),
            ],
            w=12,
            description="Training loss of the running trial(s) while the sweep runs.",
        ),
        _timeseries(
            "Live learning rate",
            [Query(f"finetune_learning_rate{{{ksel}}}", "{{name}} {{trial}}")],
            w=12,
            unit="sci",
            log_y=True,
            description="The LR ramp (range test) or each trial's LR.",
        ),
        _xy(
            "Trials: eval loss vs learning rate",
            Query(f"finetune_trial_eval_loss{{{sel}}}", instant=True, table=True),
            x="learning_rate",
            y="Value",
            w=12,
            h=10,
            description="Final validation loss of each grid/random trial.",
        ),
        _table(
            "Trials",
            [Query(f"finetune_trial_eval_loss{{{sel}}}", instant=True, table=True)],
            w=12,
            h=10,
            hide=("Time", "__name__", "job", "instance", "pod", "service", "endpoint", "container"),
            rename={"Value": "eval loss"},
        ),
        _table(
            "Trial states",
            [Query(f"finetune_trial_state{{{sel}}} == 1", instant=True, table=True)],
            w=8,
            h=10,
            hide=("Time", "__name__", "job", "instance", "pod", "service", "endpoint", "container", "Value"),
            description="Each trial's phase: Pruned trials were stopped early on their intermediate loss.",
        ),
        _timeseries(
            "Trials: intermediate eval loss",
            [Query(f"finetune_trial_intermediate_eval_loss{{{sel}}}", "{{name}} trial {{trial}}")],
            w=16,
            description="Each trial's latest intermediate validation loss, what the pruner compares.",
        ),
        _objective_vs_param(sel),
    ]
    variables = [
        _query_var(
            "namespace", "Namespace", 'label_values(finetune_resource_phase{kind="LRSweep"}, namespace)'
        ),
        _query_var(
            "sweep",
            "LRSweep",
            'label_values(finetune_resource_phase{kind="LRSweep", namespace=~"$namespace"}, name)',
        ),
        _query_var(
            "param",
            "Searched parameter",
            'label_values(finetune_trial_param{namespace=~"$namespace", name=~"$sweep"}, param)',
        ),
    ]
    return _dashboard(
        "finetune-lrsweep",
        "finetune-operator / LR sweep",
        "One LRSweep: the range-test curve, every rule's suggestion, the recommendation, trials.",
        panels,
        variables,
    )


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard."""
    return {"overview.json": overview(), "finetune.json": finetune(), "lrsweep.json": lr_sweep()}


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Introspection for tests


def iter_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel or variable title, PromQL) for every query, variables included."""
    for fname, dash in dashboards().items():
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                yield fname, panel["title"], target["expr"]
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                yield fname, f"variable {var['name']}", var["definition"]


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\)$")


def as_promql(expr: str, variables: dict[str, str] | None = None) -> str:
    """A dashboard query as plain PromQL: Grafana variables substituted, `label_values(sel, l)` -> `sel`."""
    values = {
        "__rate_interval": "1m",
        "__interval": "15s",
        "namespace": ".*",
        "job": ".*",
        "sweep": ".*",
        "param": ".*",
        **(variables or {}),
    }
    match = _LABEL_VALUES.match(expr)
    if match:
        expr = match.group("selector")
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    return expr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_tooling.dashboards", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="fail if a dashboard file is out of date")
    args = parser.parse_args(argv)
    wanted = {DASHBOARD_DIR / name: render(d) for name, d in dashboards().items()}
    if args.check:
        stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
        extra = sorted(set(DASHBOARD_DIR.glob("*.json")) - set(wanted))
        for path in [*stale, *extra]:
            print(f"out of date: {path.relative_to(REPO_ROOT)} (run python -m finetune_tooling.dashboards)")
        return 1 if stale or extra else 0
    DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in wanted.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
