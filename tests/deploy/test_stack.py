"""The test stack's own logic: tool installation (without running apt-get) and the config rewrites."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from robustdx.flows import localstack
from tests.deploy import stack

pytestmark = pytest.mark.unit


class FakeApt:
    """Stands in for subprocess.run: records commands; 'installs' the tools on the n-th install."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, succeed_on_install: int) -> None:
        self.calls: list[list[str]] = []
        self.installed = False
        self.succeed_on = succeed_on_install
        monkeypatch.setattr(localstack.shutil, "which", lambda name: f"/usr/bin/{name}" if self.installed else None)

    def __call__(self, cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(cmd)
        installs = sum(c[:2] == ["apt-get", "install"] for c in self.calls)
        ok = cmd[:2] == ["apt-get", "update"] or installs >= self.succeed_on
        if cmd[:2] == ["apt-get", "install"] and ok:
            self.installed = True
        return subprocess.CompletedProcess(cmd, 0 if ok else 100, "", "" if ok else "E: Unable to locate package prometheus")


def test_tools_present_means_no_apt(monkeypatch: pytest.MonkeyPatch) -> None:
    apt = FakeApt(monkeypatch, succeed_on_install=1)
    apt.installed = True
    tools = stack.ensure_tools(run=apt)
    assert apt.calls == [] and tools.promtool == Path("/usr/bin/promtool") and tools.amtool == Path("/usr/bin/amtool")


def test_not_root_fails_naming_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    apt = FakeApt(monkeypatch, succeed_on_install=1)
    monkeypatch.setattr(localstack.os, "geteuid", lambda: 1000)
    with pytest.raises(stack.ToolsUnavailable) as err:
        stack.ensure_tools(run=apt)
    assert apt.calls == []
    assert "apt-get install -y --no-install-recommends prometheus prometheus-alertmanager prometheus-pushgateway" in str(
        err.value
    )
    assert "promtool" in str(err.value)


def test_root_installs_and_updates_the_index_only_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localstack.os, "geteuid", lambda: 0)
    apt = FakeApt(monkeypatch, succeed_on_install=1)
    stack.ensure_tools(run=apt)
    assert apt.calls == [list(stack.INSTALL_COMMAND)]
    apt = FakeApt(monkeypatch, succeed_on_install=2)  # a stale index: the first install fails
    stack.ensure_tools(run=apt)
    assert apt.calls == [list(stack.INSTALL_COMMAND), ["apt-get", "update"], list(stack.INSTALL_COMMAND)]


def test_root_install_failure_reports_apt_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localstack.os, "geteuid", lambda: 0)
    with pytest.raises(stack.ToolsUnavailable, match="Unable to locate package"):
        stack.ensure_tools(run=FakeApt(monkeypatch, succeed_on_install=99))


def test_local_prometheus_config_keeps_the_shipped_jobs() -> None:
    config = stack.local_prometheus_config({stack.PUSHGATEWAY_JOB: "127.0.0.1:1"}, [Path("/r.yml")])
    (job,) = config["scrape_configs"]
    assert job["honor_labels"] is True and job["static_configs"] == [{"targets": ["127.0.0.1:1"]}]
    assert config["global"]["scrape_interval"] == "1s" and "alerting" not in config
    with pytest.raises(KeyError, match="no scrape job"):
        stack.local_prometheus_config({"nope": "127.0.0.1:1"}, [])


def test_fast_alert_rules_change_only_the_drift_duration(tmp_path: Path) -> None:
    shipped = stack.load_yaml(stack.RULES_DIR / "alerts.yml")
    fast = stack.load_yaml(stack.fast_alert_rules(tmp_path))
    changed = [
        (a["alert"], a.get("for"), b.get("for"))
        for ga, gb in zip(shipped["groups"], fast["groups"], strict=True)
        for a, b in zip(ga["rules"], gb["rules"], strict=True)
        if a != b
    ]
    assert changed == [("RobustdxDriftHigh", "10m", "2s")]


def test_local_alertmanager_config_keeps_the_routing() -> None:
    shipped = stack.load_yaml(stack.ALERTMANAGER_YML)
    local = stack.local_alertmanager_config("http://127.0.0.1:9/alerts", Path("/run/test/alert-token"))
    assert local["route"]["routes"][0]["matchers"] == shipped["route"]["routes"][0]["matchers"]
    assert local["route"]["group_wait"] == local["route"]["routes"][0]["group_wait"] == "1s"
    hooks = [h for r in local["receivers"] for h in r.get("webhook_configs", [])]
    assert [h["url"] for h in hooks] == ["http://127.0.0.1:9/alerts"]
    assert hooks[0]["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": "/run/test/alert-token"}
