"""The test stack's own logic: the monitoring binaries are looked up (installing them is the set-up script's
job, deploy/bin/install-tools.sh), and the config rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustdx.flows import stackconf
from tests.deploy import stack
from tests.support.procs import install_tools

pytestmark = pytest.mark.unit


def test_tools_are_looked_up_never_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stackconf.shutil, "which", lambda name: f"/usr/bin/{name}")
    tools = stackconf.find_tools()
    assert tools.promtool == Path("/usr/bin/promtool") and tools.amtool == Path("/usr/bin/amtool")
    monkeypatch.setattr(stackconf.shutil, "which", lambda name: None if name == "promtool" else f"/usr/bin/{name}")
    with pytest.raises(stackconf.ToolsUnavailable, match=r"missing promtool .*deploy/bin/install-tools.sh monitoring"):
        stackconf.find_tools()


def test_product_code_runs_no_package_manager() -> None:
    for path in [*(stack.REPO / "flows").rglob("*.py"), *(stack.REPO / "cli").rglob("*.py")]:
        assert "apt-get" not in path.read_text(), f"{path} mentions apt-get: installing belongs to deploy/bin/install-tools.sh"


def test_install_tools_fails_the_test_with_the_scripts_message() -> None:
    with pytest.raises(pytest.fail.Exception, match="unknown group 'nope'"):
        install_tools("nope")
    install_tools("monitoring")  # installed on this machine (or by the script, as root)


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
