"""monitoring/ only names metrics (and labels) that streams/metrics.py defines, and promtool accepts it.

Every ``marginwatch_*`` name in an alert rule, in a promtool test series or in a
Grafana panel must be a sample name the code exposes (``_total``, ``_bucket`` …
forms as Prometheus sees them); a renamed metric makes this test fail instead of
silently blinding an alert. promtool is required (``make test`` installs it): a
missing promtool fails, it does not skip.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streams.metrics import metric_labels, metric_names

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
ALERTS = MON / "alerts.yml"
ALERTS_TEST = MON / "alerts_test.yml"
DASHBOARD = MON / "grafana" / "marginwatch.json"
DATASOURCES = MON / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = MON / "grafana" / "provisioning" / "dashboards" / "marginwatch.yml"
PROM_CONFIGS = [MON / "prometheus.yml", MON / "prometheus.docker.yml"]

NAME_RE = re.compile(r"(?<![A-Za-z0-9_:])marginwatch_[A-Za-z0-9_:]*")
# a selector directly after a metric name: marginwatch_x{a="b", c=~"d"}
SELECTOR_RE = re.compile(r"(?<![A-Za-z0-9_:])(marginwatch_[A-Za-z0-9_:]*)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
# labels Prometheus attaches at scrape time
TARGET_LABELS = {"job", "instance"}


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _alert_rules() -> list[dict]:
    return [rule for group in _load(ALERTS)["groups"] for rule in group["rules"]]


def _alert_texts() -> list[tuple[str, str]]:
    out = []
    for rule in _alert_rules():
        name = rule.get("alert") or rule.get("record")
        out.append((f"alerts.yml {name} expr", rule["expr"]))
        for key, text in (rule.get("annotations") or {}).items():
            out.append((f"alerts.yml {name} annotation {key}", text))
    return out


def _alert_test_texts() -> list[tuple[str, str]]:
    out = []
    for i, test in enumerate(_load(ALERTS_TEST)["tests"]):
        for series in test.get("input_series", []):
            out.append((f"alerts_test.yml test {i} series", series["series"]))
        for case in test.get("promql_expr_test", []):
            out.append((f"alerts_test.yml test {i} promql_expr_test", case["expr"]))
    return out


def _dashboard_texts() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk_panels(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    out.append((f"dashboard panel {panel.get('title')!r}", target["expr"]))
            walk_panels(panel.get("panels", []))

    walk_panels(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if query:
            out.append((f"dashboard variable {var['name']}", query))
    for ann in dash.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            out.append((f"dashboard annotation {ann['name']}", ann["expr"]))
    return out


SOURCES = {
    "alerts": _alert_texts,
    "alerts_test": _alert_test_texts,
    "dashboard": _dashboard_texts,
}


def _undefined_names(texts: list[tuple[str, str]]) -> list[str]:
    defined = metric_names()
    return [f"{where}: {name}" for where, text in texts for name in NAME_RE.findall(text) if name not in defined]


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_referenced_metric_is_defined(source):
    texts = SOURCES[source]()
    assert any(NAME_RE.search(text) for _, text in texts), f"{source}: no marginwatch_* metric referenced at all"
    assert _undefined_names(texts) == []


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_selector_label_exists_on_its_metric(source):
    labels = metric_labels()
    problems = []
    for where, text in SOURCES[source]():
        for name, body in SELECTOR_RE.findall(text):
            allowed = labels.get(name, frozenset()) | TARGET_LABELS
            for label in MATCHER_RE.findall(body):
                if label not in allowed:
                    problems.append(f"{where}: {name} has no label {label!r}")
    assert problems == []


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_grouping_label_is_known(source):
    known = set().union(*metric_labels().values()) | TARGET_LABELS
    problems = []
    for where, text in SOURCES[source]():
        for group in GROUPING_RE.findall(text):
            for label in filter(None, (g.strip() for g in group.split(","))):
                if label not in known:
                    problems.append(f"{where}: unknown label {label!r} in grouping")
    assert problems == []


def test_the_check_catches_an_unknown_name():
    bad = [("x", 'rate(marginwatch_fills_total[5m]) + marginwatch_decision_latency_seconds')]
    assert _undefined_names(bad) == ["x: marginwatch_fills_total", "x: marginwatch_decision_latency_seconds"]
    assert _undefined_names([("y", 'sum(rate(marginwatch_input_messages_total{job="marginwatch"}[1m]))')]) == []


# --------------------------------------------------------------- rule hygiene
def test_every_alert_has_severity_and_annotations():
    rules = _alert_rules()
    assert len(rules) >= 10
    for rule in rules:
        assert "alert" in rule, f"recording rules belong elsewhere: {rule}"
        assert rule["alert"].startswith("Marginwatch"), rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"page", "ticket"}, rule["alert"]
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert ann.get(key, "").strip(), f"{rule['alert']} lacks annotation {key}"
        assert "\n" not in ann["runbook"].strip(), f"{rule['alert']}: runbook is one line"


def test_required_alerts_exist():
    exprs = {rule["alert"]: rule["expr"] for rule in _alert_rules()}
    assert 'up{job="marginwatch"} == 0' in exprs["MarginwatchWorkerDown"]
    required = {
        "marginwatch_consumer_lag_messages",
        "marginwatch_consumer_lag_seconds",
        "marginwatch_mark_price_age_seconds",
        "marginwatch_liquidation_episodes_total",
        "marginwatch_dead_letters_total",
        "marginwatch_rebalances_total",
        "marginwatch_recovering",
        "marginwatch_evaluation_duration_seconds_bucket",
        "marginwatch_decision_latency_seconds_bucket",
        "marginwatch_worker_last_progress_timestamp_seconds",
    }
    used = {name for expr in exprs.values() for name in NAME_RE.findall(expr)}
    assert required <= used, required - used


def test_every_alert_is_unit_tested_firing():
    tested_firing: set[str] = set()
    for test in _load(ALERTS_TEST)["tests"]:
        for case in test.get("alert_rule_test", []):
            if case.get("exp_alerts"):
                tested_firing.add(case["alertname"])
    alerts = {rule["alert"] for rule in _alert_rules()}
    assert alerts - tested_firing == set(), "alerts without a firing test case"
    assert tested_firing - alerts == set(), "test cases for alerts that do not exist"
    assert _load(ALERTS_TEST)["rule_files"] == ["alerts.yml"]


# ---------------------------------------------------------------- configs
def test_prometheus_configs_scrape_marginwatch_and_load_the_rules():
    for path in PROM_CONFIGS:
        cfg = _load(path)
        assert cfg["rule_files"] == ["alerts.yml"], path
        jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
        assert "marginwatch" in jobs, path
        assert jobs["marginwatch"].get("metrics_path", "/metrics") == "/metrics"


def test_dashboard_and_provisioning_agree():
    dash = json.loads(DASHBOARD.read_text())
    ds_uid = _load(DATASOURCES)["datasources"][0]["uid"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == ds_uid, panel["title"]
        assert panel["targets"] and all(t.get("expr") for t in panel["targets"]), panel["title"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    providers = _load(DASHBOARD_PROVIDERS)["providers"]
    assert providers and providers[0]["type"] == "file"
    used = {name for _, text in _dashboard_texts() for name in NAME_RE.findall(text)}
    for required in (
        "marginwatch_accounts",
        "marginwatch_input_messages_total",
        "marginwatch_decision_latency_seconds_bucket",
        "marginwatch_evaluation_duration_seconds_bucket",
        "marginwatch_consumer_lag_messages",
        "marginwatch_consumer_lag_seconds",
        "marginwatch_mark_price_age_seconds",
        "marginwatch_margin_calls_total",
        "marginwatch_liquidations_total",
        "marginwatch_dead_letters_total",
        "marginwatch_positions",
        "marginwatch_accounts_held",
        "marginwatch_recovering",
        "marginwatch_table_recovery_duration_seconds",
    ):
        assert required in used, required


# ---------------------------------------------------------------- promtool
def _promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install -y prometheus; `make test` does it)")
    return subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("config", PROM_CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(config):
    proc = _promtool("check", "config", str(config.relative_to(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_rules():
    proc = _promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules():
    proc = _promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
