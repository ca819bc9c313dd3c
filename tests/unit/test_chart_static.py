"""The Helm chart, dashboards and alert rules agree with the code they describe (no cluster, no binaries).

- the chart's CRDs are the generated ones, byte for byte; its versions are the package's;
- every series a dashboard or alert queries has a producer: the operator, reconciling a fleet of resources
  in every situation (tests/fleet.py), exports it, with every label a legend names (or it is `up`);
- the generated dashboards and rule file are up to date; values.yaml obeys the strict schema and
  documents every value.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from collections import defaultdict
from pathlib import Path

import jsonschema
import pytest
import yaml
from fleet import Fleet

from finetune_operator import settings
from finetune_tooling import alerts, dashboards
from finetune_trainer.config import TRAINER_METRICS_PORT

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finetune-operator"


def _load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------------------
# One source of truth


def test_chart_crds_are_the_generated_crds_byte_for_byte():
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    shipped = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert generated, "crds/ is empty: run python -m finetune_tooling.crdgen"
    assert shipped == generated
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), name


def test_chart_version_and_app_version_are_the_package_version():
    package = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = _load_yaml(CHART / "Chart.yaml")
    assert chart["version"] == package
    assert str(chart["appVersion"]) == package


def test_default_images_are_the_operator_image_at_app_version_and_the_settings_trainer_image():
    values = _load_yaml(CHART / "values.yaml")
    assert values["image"]["repository"] == "ghcr.io/finetune-dev/finetune-operator"
    assert values["image"]["tag"] == ""  # empty -> appVersion (see _helpers.tpl "finetune-operator.image")
    assert values["trainer"]["image"] == settings.DEFAULT_TRAINER_IMAGE


def test_the_trainer_metrics_port_is_the_contracts():
    values = _load_yaml(CHART / "values.yaml")
    assert (
        values["trainer"]["metricsPort"] == TRAINER_METRICS_PORT == settings.Settings().trainer_metrics_port
    )


def test_chart_passes_every_setting_the_operator_reads_from_the_environment():
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    read = set(
        re.findall(r'_env\("([A-Z_]+)"', (REPO / "operator/finetune_operator/settings.py").read_text())
    )
    read.add("NAMESPACES")
    passed = set(re.findall(r"name: FINETUNE_([A-Z_]+)", deployment))
    assert read - passed == set(), f"settings the chart never sets: {sorted(read - passed)}"


@pytest.mark.parametrize("module", [dashboards, alerts], ids=["dashboards", "alerts"])
def test_generated_files_are_up_to_date(module, capsys):
    assert module.main(["--check"]) == 0, capsys.readouterr().out


def test_rule_file_is_what_the_alerts_module_says():
    assert _load_yaml(alerts.RULES_FILE) == alerts.rule_file()


# ---------------------------------------------------------------------------------------------------------
# Every queried series has a producer


@functools.cache
def produced() -> dict[str, list[dict[str, str]]]:
    """Every series the operator exports for the fleet, by name (with prometheus-client's suffixes), and
    the label sets it exports them with."""
    fleet = Fleet()
    fleet.tick(0)
    series: dict[str, list[dict[str, str]]] = defaultdict(list)
    for family in fleet.metrics.registry.collect():
        for sample in family.samples:
            series[sample.name].append(dict(sample.labels))
    return dict(series)


def exported_series() -> set[str]:
    return set(produced())


_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers that are not functions, keywords or labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end() :].lstrip()
        if word.lower() in _KEYWORDS or rest.startswith("("):
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # e.g. the "e" of 1e-3, the unit of 5m
        names.add(word)
    return names


def all_queries() -> list[tuple[str, str]]:
    out = [(f"{f} / {title}", dashboards.as_promql(e)) for f, title, e in dashboards.iter_queries()]
    out += [(f"alert {name}", expr) for name, expr in alerts.expressions().items()]
    return out


def legends() -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) of every dashboard target whose legend names labels."""
    out = []
    for fname, dash in dashboards.dashboards().items():
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                if "{{" in target.get("legendFormat", ""):
                    where = f"{fname} / {panel['title']}"
                    out.append((where, dashboards.as_promql(target["expr"]), target["legendFormat"]))
    return out


def equality_matchers(expr: str) -> dict[str, str]:
    """The `label="value"` matchers of a query (regex matchers hold dashboard variables: ignored)."""
    return dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', re.sub(r'\w+\s*=~\s*"[^"]*"', "", expr)))


def test_metric_name_extraction_finds_names_and_ignores_functions_labels_and_keywords():
    expr = (
        "histogram_quantile(0.95, sum by (le, kind) (rate(finetune_reconcile_duration_seconds_bucket[5m])))"
        ' / on (kind) group_left sum(up{job="x"}) > 1e-3 and absent(foo_bar)'
    )
    assert metric_names(expr) == {"finetune_reconcile_duration_seconds_bucket", "up", "foo_bar"}


def test_a_query_naming_a_series_nobody_produces_is_caught():
    known = exported_series() | {"up"}
    assert metric_names("rate(finetune_reconciles_total[5m])") - known == {"finetune_reconciles_total"}
    assert metric_names("finetune_jobs_created") - known == {
        "finetune_jobs_created"
    }  # counter without _total


def test_produced_series_include_prometheus_client_suffixes():
    names = exported_series()
    assert {
        "finetune_jobs_created_total",
        "finetune_reconcile_duration_seconds_bucket",
        "finetune_reconcile_duration_seconds_count",
        "finetune_range_test_loss",
    } <= names
    assert "finetune_jobs_created" not in names


@pytest.mark.parametrize(("where", "expr"), all_queries(), ids=[w for w, _ in all_queries()])
def test_every_query_reads_only_series_the_operator_produces(where, expr):
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - exported_series() - {"up"}
    assert not unknown, f"{where} queries {sorted(unknown)}, which the operator never exports"


@pytest.mark.parametrize(("where", "expr", "legend"), legends(), ids=[w for w, _, _ in legends()])
def test_every_label_a_legend_names_is_set_on_the_series_it_shows(where, expr, legend):
    wanted = equality_matchers(expr)
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if label in ("le",) or re.search(rf"\bby\s*\([^)]*\b{label}\b", expr):
            continue  # made by the query itself
        shown = [
            labels
            for name in metric_names(expr) - {"up"}
            for labels in produced().get(name, [])
            if all(labels.get(k) == v for k, v in wanted.items() if k in labels)
        ]
        assert any(labels.get(label) for labels in shown), (
            f"{where}: legend {legend!r} names `{label}`, which no series of {expr!r} carries"
        )


# ---------------------------------------------------------------------------------------------------------
# Alerts


def test_alerts_are_the_documented_set_with_severity_summary_description_and_runbook():
    runbooks = (REPO / "docs" / "runbooks.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", runbooks, re.M)
    }
    rules = alerts.rule_file()["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == [
        "FineTuneJobFailed",
        "LRSweepDivergedAtMinimumLearningRate",
        "FineTuneNoProgress",
        "FinetuneOperatorDown",
        "FinetuneReconcileErrorsRising",
    ]
    for rule in rules:
        assert re.fullmatch(r"(?:[A-Z][a-z0-9]*|LR)+", rule["alert"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(alerts.RUNBOOK_BASE_URL + "#")
        assert url.split("#", 1)[1] in anchors, f"docs/runbooks.md has no section for {rule['alert']}"


def test_no_progress_threshold_comes_from_the_config():
    expr = dict(alerts.expressions())["FineTuneNoProgress"]
    assert f"> {alerts.CONFIG['no_progress_minutes'] * 60}" in expr
    assert "> 300" in alerts.alerts({"no_progress_minutes": 5})[2].expr


# ---------------------------------------------------------------------------------------------------------
# Dashboards


def test_dashboards_are_well_formed():
    uids = set()
    for fname, dash in dashboards.dashboards().items():
        assert dash["uid"] not in uids
        uids.add(dash["uid"])
        assert len(dash["uid"]) <= 40
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), fname
        for panel in dash["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (fname, panel["title"])
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert panel["targets"], (fname, panel["title"])


def test_dashboards_have_the_panels_the_issue_asks_for():
    titles = {f: {p["title"] for p in d["panels"]} for f, d in dashboards.dashboards().items()}
    assert {
        "LRSweeps by phase",
        "FineTuneJobs by phase",
        "Running trainers",
        "Failed resources",
        "Reconcile latency",
        "Reconcile errors per second",
    } <= titles["overview.json"]
    assert {"Learning rate schedule", "Loss", "Throughput", "Progress", "ETA"} <= titles["finetune.json"]
    assert {
        "Range test: loss vs learning rate",
        "Suggestions by rule",
        "Recommended learning rate",
        "Trials: eval loss vs learning rate",
        "Trial states",
        "Trials: intermediate eval loss",
        "Trials: eval loss vs $param",
    } <= titles["lrsweep.json"]
    variables = {f: [v["name"] for v in d["templating"]["list"]] for f, d in dashboards.dashboards().items()}
    assert variables["finetune.json"] == ["datasource", "namespace", "job"]
    assert variables["lrsweep.json"] == ["datasource", "namespace", "sweep", "param"]


def test_the_objective_is_charted_against_each_searched_parameter():
    """One XY chart per searched parameter (repeated over `param`): a trial's value of it (query A) joined on
    the trial label with its final eval loss (query B)."""
    panel = next(p for p in dashboards.lr_sweep()["panels"] if p["title"] == "Trials: eval loss vs $param")
    assert (panel["type"], panel["repeat"]) == ("xychart", "param")
    a, b = (t["expr"] for t in panel["targets"])
    assert a.startswith("finetune_trial_param{") and 'param=~"$param"' in a
    assert b.startswith("finetune_trial_eval_loss{")
    assert all(t["format"] == "table" and t["instant"] for t in panel["targets"])
    assert panel["transformations"][0] == {
        "id": "joinByField",
        "options": {"byField": "trial", "mode": "inner"},
    }
    series = panel["options"]["series"][0]
    assert (series["x"]["matcher"]["options"], series["y"]["matcher"]["options"]) == ("Value #A", "Value #B")


def test_range_test_panel_is_an_xy_chart_of_loss_over_the_numeric_learning_rate_label():
    panel = next(p for p in dashboards.lr_sweep()["panels"] if p["title"].startswith("Range test"))
    assert panel["type"] == "xychart"
    assert panel["targets"][0]["expr"].startswith("finetune_range_test_loss{")
    assert panel["targets"][0]["format"] == "table" and panel["targets"][0]["instant"]
    conversion = panel["transformations"][0]
    assert conversion["id"] == "convertFieldType"
    assert conversion["options"]["conversions"] == [
        {"targetField": "learning_rate", "destinationType": "number"}
    ]
    assert panel["options"]["series"][0]["x"]["matcher"]["options"] == "learning_rate"


def test_grafana_variables_become_plain_promql():
    assert (
        dashboards.as_promql('rate(x{name=~"$job"}[$__rate_interval])', {"job": "a"})
        == 'rate(x{name=~"a"}[1m])'
    )
    assert dashboards.as_promql('label_values(x{kind="A"}, namespace)') == 'x{kind="A"}'


# ---------------------------------------------------------------------------------------------------------
# values.yaml and its schema


def _schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def _walk(node: dict, path: str = ""):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


def test_schema_is_strict_everywhere():
    loose = [
        p or "<root>"
        for p, n in _walk(_schema())
        if "properties" in n and n.get("additionalProperties") is not False
    ]
    assert not loose, f"objects without additionalProperties: false: {loose}"


@pytest.mark.parametrize(
    "values_file",
    [*sorted((CHART / "ci").glob("*-values.yaml")), CHART / "values.yaml"],
    ids=lambda p: p.name,
)
def test_values_files_obey_the_schema(values_file):
    defaults = _load_yaml(CHART / "values.yaml")
    merged = _deep_merge(defaults, _load_yaml(values_file) or {})
    jsonschema.validate(merged, _schema())


def test_ci_values_cover_default_namespaced_and_monitoring():
    assert {p.name for p in (CHART / "ci").glob("*-values.yaml")} >= {
        "default-values.yaml",
        "namespaced-values.yaml",
        "monitoring-values.yaml",
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"watchNamespaces": ["Not_A_Namespace"]}, "does not match"),
        ({"operator": {"pollIntervall": 5}}, "Additional properties"),
        ({"image": {"pullPolicy": "Sometimes"}}, "is not one of"),
    ],
)
def test_schema_rejects_bad_values(override, message):
    merged = _deep_merge(_load_yaml(CHART / "values.yaml"), override)
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(merged, _schema())


def test_every_value_in_values_yaml_has_a_comment():
    schema = _schema()
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        node = schema
        for part in path:  # only keys the schema declares; free-form objects (resources, ...) are Kubernetes'
            node = node.get("properties", {}).get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if node is None:
            continue
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not previous.startswith("#"):
            undocumented.append(".".join(path))
        assert node.get("description") or node.get("properties"), f"schema has no description for {path}"
    assert not undocumented, f"values without a comment: {undocumented}"


def _deep_merge(base: dict, override: dict) -> dict:
    """Helm's value merge: maps merge, everything else replaces, null deletes the key."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
            continue
        out[key] = (
            _deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out
