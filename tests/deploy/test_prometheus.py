"""Prometheus and Alertmanager configuration, checked with the real tools.

``promtool check config`` / ``check rules`` / ``test rules`` on the shipped files, ``amtool`` on the
Alertmanager config and its routing (a retrain alert reaches the webhook receiver, nothing else does),
plus the contracts between the files that no tool checks: every alert has promtool tests that show
it firing *and* not firing, every recording rule is tested, severities and runbook links are valid,
the drift alert is the one that asks for a retrain.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from robustdx.core import contracts
from robustdx.flows.alerts import DEFAULT_PORT, RETRAIN_LABEL
from tests.deploy.stack import (
    ALERTMANAGER_YML,
    DEPLOY,
    PROMETHEUS_DIR,
    RULES_DIR,
    SERVICE_JOB,
    Proc,
    Tools,
    host_port,
    live_prometheus,
    load_yaml,
)

pytestmark = pytest.mark.unit

RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
SEVERITIES = {"critical", "warning", "info"}


def rules(kind: str) -> Iterator[dict[str, Any]]:
    """Every ``alert`` or ``record`` rule of the shipped rule files."""
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            yield from (r for r in group["rules"] if kind in r)


ALERTS = {r["alert"]: r for r in rules("alert")}
RECORDS = {r["record"]: r for r in rules("record")}


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


# ------------------------------------------------------------------------------------------------
# the real tools
# ------------------------------------------------------------------------------------------------
def test_promtool_check_config(monitoring_tools: Tools) -> None:
    out = run(monitoring_tools.promtool, "check", "config", PROMETHEUS_DIR / "prometheus.yml").stdout
    assert f"{len(RULE_FILES)} rule files found" in out  # the rules/*.yml glob resolves next to the config


def test_promtool_check_rules(monitoring_tools: Tools) -> None:
    run(monitoring_tools.promtool, "check", "rules", *RULE_FILES)


def test_promtool_unit_tests(monitoring_tools: Tools) -> None:
    out = run(monitoring_tools.promtool, "test", "rules", *TEST_FILES).stdout
    assert out.count("SUCCESS") == len(TEST_FILES), out


def test_promtool_unit_tests_can_fail(monitoring_tools: Tools, tmp_path: Path) -> None:
    """The unit tests pin the thresholds: loosen the drift rule and they must fail."""
    (tmp_path / "rules").mkdir()
    for path in RULE_FILES:
        (tmp_path / "rules" / path.name).write_text(path.read_text().replace("< bool 0.01", "< bool 0.001"))
    (tmp_path / "tests").mkdir()
    for path in TEST_FILES:
        (tmp_path / "tests" / path.name).write_text(path.read_text())
    done = subprocess.run(
        [str(monitoring_tools.promtool), "test", "rules", *(tmp_path / "tests" / p.name for p in TEST_FILES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0 and "RobustdxDriftHigh" in done.stdout + done.stderr


def test_amtool_check_config(monitoring_tools: Tools) -> None:
    if monitoring_tools.amtool is None:
        pytest.fail("amtool is missing although the prometheus-alertmanager package ships it")
    run(monitoring_tools.amtool, "check-config", ALERTMANAGER_YML)


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            {"alertname": "RobustdxDriftHigh", "severity": "warning", RETRAIN_LABEL: "true", "instance": "service:3000"},
            "robustdx-retrain",
        ),
        ({"alertname": "RobustdxAdversarialFlipRateHigh", "severity": "warning"}, "default"),
        ({"alertname": "RobustdxTargetDown", "severity": "critical"}, "default"),
        ({"alertname": "RobustdxDriftHigh", RETRAIN_LABEL: "false"}, "default"),
    ],
)
def test_alertmanager_routes_only_retrain_alerts_to_the_receiver(
    monitoring_tools: Tools, labels: dict[str, str], receiver: str
) -> None:
    assert monitoring_tools.amtool is not None
    args = [f"{k}={v}" for k, v in labels.items()]
    run(
        monitoring_tools.amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_YML}",
        f"--verify.receivers={receiver}",
        *args,
    )


# ------------------------------------------------------------------------------------------------
# contracts between the files
# ------------------------------------------------------------------------------------------------
def _promtool_cases() -> tuple[dict[str, set[bool]], set[str]]:
    """alertname -> {True if some eval expects it firing, False if some eval expects it silent};
    and the recording rules some promql_expr_test evaluates."""
    alerts: dict[str, set[bool]] = {}
    exprs: set[str] = set()
    for path in TEST_FILES:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                alerts.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
            for check in case.get("promql_expr_test", []):
                exprs |= set(re.findall(r"robustdx:[a-z0-9_:]+", check["expr"]))
    return alerts, exprs


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tested, _ = _promtool_cases()
    missing = {name: sorted(tested.get(name, set())) for name in ALERTS if tested.get(name) != {True, False}}
    assert not missing, f"alerts without both a firing and a silent promtool case: {missing}"
    assert set(tested) <= set(ALERTS), f"tests for unknown alerts: {set(tested) - set(ALERTS)}"


def test_every_recording_rule_is_tested() -> None:
    _, tested = _promtool_cases()
    assert set(RECORDS) <= tested, f"untested recording rules: {set(RECORDS) - tested}"


def test_required_alerts_exist_with_severity_and_docs() -> None:
    required = {
        "RobustdxDriftHigh",
        "RobustdxAdversarialFlipRateHigh",
        "RobustdxHighErrorRate",
        "RobustdxHighLatencyP99",
        "RobustdxTargetDown",
        "RobustdxModelNotLoaded",
        "RobustdxNoTraffic",
    }
    assert required <= set(ALERTS)
    readme = (DEPLOY / "README.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    dashboards = {json.loads(p.read_text())["uid"] for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    for name, rule in ALERTS.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description", "runbook", "dashboard"} <= set(rule["annotations"]), name
        anchor = rule["annotations"]["runbook"].partition("#")[2]
        assert anchor in anchors, f"{name}: runbook anchor #{anchor} is not a heading of deploy/README.md"
        assert rule["annotations"]["dashboard"].removeprefix("/d/") in dashboards, name


def test_only_the_drift_alert_requests_a_retrain() -> None:
    retrain = {name for name, rule in ALERTS.items() if rule["labels"].get(RETRAIN_LABEL) == "true"}
    assert retrain == {"RobustdxDriftHigh"}
    assert ALERTS["RobustdxDriftHigh"]["for"] == "10m"  # long enough that a few odd slides do not retrain


def test_alertmanager_webhook_points_at_the_receiver() -> None:
    config = load_yaml(ALERTMANAGER_YML)
    (receiver,) = [r for r in config["receivers"] if r.get("webhook_configs")]
    (hook,) = receiver["webhook_configs"]
    url = urlparse(hook["url"])
    assert (url.hostname, url.port, url.path) == ("alert-receiver", DEFAULT_PORT, "/alerts")
    assert hook["send_resolved"] is False  # the receiver ignores resolved notifications anyway
    compose = load_yaml(DEPLOY / "compose.yaml")["services"]
    assert "alert-receiver" in compose


def test_prometheus_scrapes_what_the_rules_select() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    selected = set(re.findall(r'job="([^"]+)"', "\n".join(p.read_text() for p in RULE_FILES)))
    assert selected <= set(jobs), f"rules select jobs that are not scraped: {selected - set(jobs)}"
    assert jobs["pushgateway"]["honor_labels"] is True  # keep the pushed job="robustdx-flows" and grouping labels
    assert config["rule_files"] == ["rules/*.yml"]


# ------------------------------------------------------------------------------------------------
# a real Pushgateway scraped by a real Prometheus with the shipped job
# ------------------------------------------------------------------------------------------------
def test_a_push_cannot_pose_as_the_service(monitoring_tools: Tools, pushgateway: Proc, tmp_path: Path) -> None:
    """Anyone who can push must not be able to fake the service's drift gauge (and start a retrain):
    the shipped pushgateway job keeps only job="robustdx-flows" series."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    for job, value in ((SERVICE_JOB, 1e-9), (contracts.PUSH_JOB, 0.5)):
        registry = CollectorRegistry()
        Gauge(contracts.DRIFT_MMD_P, "forged or legit", registry=registry).set(value)
        push_to_gateway(host_port(pushgateway), job=job, registry=registry, timeout=5)
    with live_prometheus(monitoring_tools, tmp_path / "prometheus", {"pushgateway": host_port(pushgateway)}, []) as prom:
        legit = prom.wait_for(f'{contracts.DRIFT_MMD_P}{{job="{contracts.PUSH_JOB}"}}', timeout=30)
        assert legit == [0.5]
        assert prom.values(f'{contracts.DRIFT_MMD_P}{{job="{SERVICE_JOB}"}}') == []
