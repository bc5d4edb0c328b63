"""Grafana dashboards (deploy/grafana): valid provisioning JSON, and every panel's query answers with
data from a REAL Prometheus.

Grafana itself is not packaged for Debian 12 and cannot be downloaded here, so the dashboards are
checked the way Grafana would fail on them: the JSON structure Grafana's provisioning needs (uid,
schemaVersion, unique panel ids, a non-overlapping grid, the provisioned datasource uid everywhere), and
— the part that breaks silently in production — every query run against a real Prometheus that loads
the shipped rules and scrapes a real ``bentoml serve`` of a tiny model (fed clean and stain-shifted
patches, /predict and /explain) and a real Pushgateway seeded through ``flows.metrics.push_metrics``.
A query that is invalid, names a metric or label the code does not export, or reads a recording
rule that does not exist returns an error or nothing, and fails here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.stack import (
    DEPLOY,
    PUSHGATEWAY_JOB,
    RULES_DIR,
    SERVICE_JOB,
    Proc,
    Prom,
    Tools,
    host_port,
    live_prometheus,
    load_yaml,
    seed_pushgateway,
    send_and_settle,
    trickle,
)

GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
# what Grafana substitutes before a query reaches Prometheus (the "All" value of $instance is .*)
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}


def datasource_uid() -> str:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    return source["uid"]


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries() -> list[tuple[str, str]]:
    """(test id, PromQL with Grafana's variables substituted) for every panel target."""
    out = []
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                out.append((f"{path.stem}:{panel['title']}:{target['refId']}", expr))
    return out


QUERIES = queries()


# ------------------------------------------------------------------------------------------------
# structure (no processes)
# ------------------------------------------------------------------------------------------------
@pytest.mark.unit
def test_there_is_a_dashboard_for_each_concern() -> None:
    uids = {load(p)["uid"] for p in DASHBOARDS}
    assert {"robustdx-service", "robustdx-model", "robustdx-drift", "robustdx-robustness", "robustdx-retraining"} <= uids
    assert len(uids) == len(DASHBOARDS), "dashboard uids must be unique"
    assert len(QUERIES) >= 30


@pytest.mark.unit
def test_datasource_provisioning() -> None:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    # $__rate_interval must be at least 4 scrape intervals: Grafana learns the interval from timeInterval
    scrape = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape


@pytest.mark.unit
@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_json_is_valid_grafana(path: Path) -> None:
    board, uid = load(path), "${datasource}"  # dashboards drop into any Grafana: the data source is a variable
    assert path.stem == board["uid"] and len(board["uid"]) <= 40 and re.fullmatch(r"[a-z0-9-]+", board["uid"])
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"].startswith("robustdx") and "robustdx" in board["tags"]
    source, *others = board["templating"]["list"]
    assert (source["name"], source["type"], source["query"]) == ("datasource", "datasource", "prometheus")
    assert source["current"]["value"] == datasource_uid(), "defaults to the provisioned Prometheus"
    assert "robustdx-prometheus" not in json.dumps(others) + json.dumps(board["panels"]), "a hard-coded data source uid"
    for var in others:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == uid, var["name"]
    all_panels = list(panels(board))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    occupied: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and all(isinstance(grid[k], int) for k in "hwxy"), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for dx in range(grid["w"]):
            for dy in range(grid["h"]):
                cell = (grid["x"] + dx, grid["y"] + dy)
                assert cell not in occupied, f"{panel['title']!r} overlaps {occupied[cell]!r} in {path.name}"
                occupied[cell] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel.get("description"), f"{panel['title']!r} needs a description (what it shows and why)"
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == uid and target["expr"].strip(), (panel["title"], target)
            leftover = re.findall(r"\$\w+", target["expr"])
            assert set(leftover) <= set(GRAFANA_VARIABLES), (panel["title"], leftover)


def _rule_thresholds() -> dict[str, float]:
    """metric -> the constant the shipped rules compare it with (``metric{...} < bool 0.01`` etc.)."""
    text = "\n".join(p.read_text() for p in RULES_DIR.glob("*.yml"))
    found = re.findall(r"(robustdx[a-z_:0-9]+)(?:\{[^}]*\})?\)?\s*[<>]\s*(?:bool\s+)?([0-9.]+)", text)
    return {metric: float(value) for metric, value in found}


@pytest.mark.unit
def test_threshold_lines_are_the_alert_thresholds() -> None:
    """A panel that draws a threshold line over an alerted metric draws the alert's threshold."""
    rules, checked = _rule_thresholds(), 0
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            defaults = panel.get("fieldConfig", {}).get("defaults", {})
            if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off") == "off":
                continue
            lines = {s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None}
            for target in panel["targets"]:
                metric = re.match(r"\s*([a-z_:0-9]+)\{", target["expr"])
                if metric and metric.group(1) in rules:
                    assert rules[metric.group(1)] in lines, (path.name, panel["title"], lines, rules[metric.group(1)])
                    checked += 1
    assert checked >= 6  # MMD p-value, PSI, KS p-value, flip rate, 5xx ratio, /predict p99


# ------------------------------------------------------------------------------------------------
# every query against a real Prometheus
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prom(monitoring_tools: Tools, service: Proc, pushgateway: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    """Prometheus with the shipped rules, scraping the service and the seeded Pushgateway, while the
    service answers clean and stain-shifted patches and a trickle of /predict and /explain."""
    seed_pushgateway(pushgateway.url)
    rules = [RULES_DIR / "recording.yml", RULES_DIR / "alerts.yml"]
    targets = {SERVICE_JOB: host_port(service), PUSHGATEWAY_JOB: host_port(pushgateway)}
    with live_prometheus(monitoring_tools, tmp_path_factory.mktemp("prometheus"), targets, rules) as p:
        send_and_settle(service.url, 32, shifted=False, start=0)
        send_and_settle(service.url, 32, shifted=True, start=5000)
        with trickle(service.url):
            p.wait_for('robustdx:drift_detected{job="robustdx-service"}', timeout=30)
            yield p


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("expr", [q for _, q in QUERIES], ids=[i for i, _ in QUERIES])
def test_panel_query_returns_data(prom: Prom, expr: str) -> None:
    values = prom.wait_for(expr, lambda v: any(math.isfinite(x) for x in v), timeout=30)
    assert values


@pytest.mark.integration
@pytest.mark.slow
def test_shipped_rules_evaluate_without_errors(prom: Prom) -> None:
    import httpx

    groups = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for f in RULES_DIR.glob("*.yml") for g in load_yaml(f)["groups"])
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, broken


@pytest.mark.integration
@pytest.mark.slow
def test_annotation_and_variable_queries_are_valid(prom: Prom) -> None:
    """Annotations (firing alerts) may be empty but must parse; the $instance variable must list the service."""
    for path in DASHBOARDS:
        board = load(path)
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                prom.query(annotation["expr"])  # raises PromQueryError on invalid PromQL
        for var in board["templating"]["list"]:
            if var["type"] == "datasource":  # lists data sources, not series
                continue
            selector = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
            assert selector, var["definition"]
            series = prom.query(selector.group(1))
            assert series and all(selector.group(2) in s["metric"] for s in series), (path.name, var["name"])
