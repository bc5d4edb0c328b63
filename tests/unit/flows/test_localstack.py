"""``make up`` / ``make down`` (flows/localstack.py) without starting the stack: the rendered configurations
(checked by promtool and amtool), the commands and environments of the components, and the safety rules
of ``up`` and ``down`` on real short-lived processes (``sleep``): a recorded pid that now belongs to another
process is never signalled, children that left the process group are stopped too, and ``up`` refuses to
start over a live stack or on a busy port. tests/e2e/test_stack.py brings the whole stack up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from robustdx.cli.app import app
from robustdx.flows import localstack
from robustdx.flows.localstack import (
    CAMELYON_MARKER,
    DEFAULT_PORTS,
    SCRAPE_JOBS,
    Proc,
    Record,
    StackError,
    StackPlan,
    Tools,
    ToolsUnavailable,
    UpOptions,
    admin_token,
    apt_binaries,
    descendants,
    down,
    load_yaml,
    prepare_data,
    process_start_time,
    read_records,
    state_path,
    status,
    up,
    write_records,
)
from tests.deploy.stack import free_stack_ports
from tests.support.paths import REPO

pytestmark = pytest.mark.unit

SHIPPED_PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
SHIPPED_ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


def plan(root: Path, tools: Tools, fast: bool = False) -> StackPlan:
    return StackPlan(root, dict(DEFAULT_PORTS), REPO, tools, "not-a-real-token", fast_alerts=fast)


# ------------------------------------------------------------------------------------------------
# configurations and commands
# ------------------------------------------------------------------------------------------------
def test_every_shipped_scrape_job_but_ray_has_a_local_component() -> None:
    shipped = {job["job_name"] for job in load_yaml(SHIPPED_PROMETHEUS)["scrape_configs"]}
    assert shipped - set(SCRAPE_JOBS.values()) == {"ray"}  # no Ray head locally: Ray runs inside the flows
    assert set(SCRAPE_JOBS) == set(DEFAULT_PORTS)


def test_prometheus_config_points_the_shipped_jobs_at_local_ports(tmp_path: Path, monitoring_tools: Tools) -> None:
    proc = plan(tmp_path, monitoring_tools).prometheus()
    path = tmp_path / "prometheus" / "prometheus.yml"
    config, shipped = load_yaml(path), load_yaml(SHIPPED_PROMETHEUS)
    assert config["global"] == shipped["global"]  # 15 s as shipped, external labels kept
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {job: [f"127.0.0.1:{DEFAULT_PORTS[name]}"] for name, job in SCRAPE_JOBS.items()}
    by_name = {job["job_name"]: job for job in config["scrape_configs"]}
    assert by_name["prefect-server"]["metrics_path"] == "/api/metrics" and by_name["pushgateway"]["honor_labels"] is True
    assert by_name["robustdx-service"]["static_configs"][0]["labels"] == {"service": "robustdx"}
    rules = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
    assert config["rule_files"] == [str(p) for p in rules] and len(rules) == 2
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        f"127.0.0.1:{DEFAULT_PORTS['alertmanager']}"
    ]
    check = subprocess.run([str(monitoring_tools.promtool), "check", "config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"--config.file={path}" in proc.cmd and f"--web.listen-address=127.0.0.1:{DEFAULT_PORTS['prometheus']}" in proc.cmd
    assert proc.log == tmp_path / "logs" / "prometheus.log" and proc.ready == "/-/ready"


def test_alertmanager_posts_to_the_receiver_with_the_shipped_waits(tmp_path: Path, monitoring_tools: Tools) -> None:
    proc = plan(tmp_path, monitoring_tools).alertmanager()
    path = tmp_path / "alertmanager" / "alertmanager.yml"
    config, shipped = load_yaml(path), load_yaml(SHIPPED_ALERTMANAGER)
    hooks = [h["url"] for r in config["receivers"] for h in r.get("webhook_configs", [])]
    assert hooks == [f"http://127.0.0.1:{DEFAULT_PORTS['receiver']}/alerts"]
    assert config["route"] == shipped["route"] and config["inhibit_rules"] == shipped["inhibit_rules"]
    assert "--cluster.listen-address=" in proc.cmd
    if monitoring_tools.amtool is not None:
        check = subprocess.run([str(monitoring_tools.amtool), "check-config", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_fast_alerts_shorten_intervals_and_waits_only(tmp_path: Path, monitoring_tools: Tools) -> None:
    fast = plan(tmp_path, monitoring_tools, fast=True)
    fast.prometheus(), fast.alertmanager()
    prom = load_yaml(tmp_path / "prometheus" / "prometheus.yml")
    assert prom["global"]["scrape_interval"] == prom["global"]["evaluation_interval"] == "1s"
    assert prom["global"]["external_labels"] == load_yaml(SHIPPED_PROMETHEUS)["global"]["external_labels"]
    route = load_yaml(tmp_path / "alertmanager" / "alertmanager.yml")["route"]
    assert route["group_wait"] == route["routes"][0]["group_wait"] == route["routes"][0]["group_interval"] == "1s"
    assert route["repeat_interval"] == load_yaml(SHIPPED_ALERTMANAGER)["route"]["repeat_interval"]


def test_components_get_local_addresses_and_the_stack_state(tmp_path: Path, monitoring_tools: Tools) -> None:
    p = plan(tmp_path, monitoring_tools)
    prefect, receiver, service = p.prefect(), p.receiver(), p.service()
    assert prefect.cmd[-4:] == ["--host", "127.0.0.1", "--port", "4200"] and prefect.ready == "/api/health"
    assert (
        prefect.env["PREFECT_HOME"] == str(tmp_path / "prefect") and prefect.env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    )
    assert receiver.cmd == [str(REPO / "deploy" / "bin" / "alert-receiver.sh")]
    assert receiver.env["ROBUSTDX_ALERTS_HOST"] == "127.0.0.1" and receiver.env["ROBUSTDX_ALERTS_PORT"] == "9095"
    assert service.cmd == [str(REPO / "deploy" / "bin" / "serve.sh")] and service.ready == "/readyz"
    assert service.env["ROBUSTDX_SERVE_PORT"] == "3000" and service.env["BENTOML_HOME"] == str(tmp_path / "bentoml")
    assert service.env["ROBUSTDX_ADMIN_TOKEN"] == "not-a-real-token"
    assert all(proc.cwd == REPO for proc in (prefect, receiver, service))


def test_deploy_command_uses_only_options_robustdx_deploy_has(tmp_path: Path, monitoring_tools: Tools) -> None:
    proc = plan(tmp_path, monitoring_tools).deploy(tmp_path / "sweep.yaml", 2, ["data.root=/data"])
    argv = list(proc.cmd)
    assert argv[:4] == [sys.executable, "-m", "robustdx.cli", "deploy"]
    assert argv[argv.index("--run-set") + 1] == "data.root=/data" and argv[argv.index("--num-samples") + 1] == "2"
    assert argv[argv.index("--service-url") + 1] == "http://127.0.0.1:3000"
    assert argv[argv.index("--home") + 1] == str(tmp_path / "bentoml")
    assert proc.env["ROBUSTDX_PUSHGATEWAY"] == "127.0.0.1:9091" and proc.env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert proc.env["ROBUSTDX_ADMIN_TOKEN"] == "not-a-real-token" and proc.env["BENTOML_DO_NOT_TRACK"] == "True"
    env = {**os.environ, "COLUMNS": "300", "TERM": "dumb", "NO_COLOR": "1"}
    help_text = subprocess.run([*argv[:4], "--help"], capture_output=True, text=True, env=env, check=True).stdout
    for option in (arg for arg in argv[4:] if arg.startswith("--")):
        assert option in help_text, f"robustdx deploy has no {option}"


def test_missing_demo_data_is_synthesised_other_missing_data_is_an_error(tmp_path: Path) -> None:
    sweep = REPO / "configs" / "sweeps" / "demo.yaml"
    overrides = prepare_data(sweep, [], tmp_path / "camelyon", REPO)
    assert overrides == [f"data.root={tmp_path / 'camelyon'}"] and (tmp_path / "camelyon" / CAMELYON_MARKER).is_file()
    with pytest.raises(StackError, match="no pcam data at /nonexistent"):
        prepare_data(sweep, ["data.dataset=pcam"], Path("/nonexistent/pcam"), REPO)
    with pytest.raises(StackError, match="sweep"):
        prepare_data(tmp_path / "missing.yaml", [], None, REPO)


def test_admin_token_is_private_and_kept(tmp_path: Path) -> None:
    token = admin_token(tmp_path / "stack")
    path = tmp_path / "stack" / "admin-token"
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    assert admin_token(tmp_path / "stack") == token and path.stat().st_mode & 0o777 == 0o600


def test_apt_binaries_names_the_command_for_any_package(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def apt(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package")

    assert apt_binaries(("coreutils",), ("sleep",), "this test", run=apt) == {"sleep": Path(localstack.shutil.which("sleep"))}
    assert calls == []  # present: apt-get never runs
    monkeypatch.setattr(localstack.os, "geteuid", lambda: 1000)
    with pytest.raises(ToolsUnavailable, match=r"this test needs .* apt-get install -y --no-install-recommends chromium$"):
        apt_binaries(("chromium",), ("robustdx-no-such-binary",), "this test", run=apt)
    monkeypatch.setattr(localstack.os, "geteuid", lambda: 0)
    with pytest.raises(ToolsUnavailable, match="Unable to locate package"):
        apt_binaries(("chromium",), ("robustdx-no-such-binary",), "this test", run=apt)
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    assert calls == [install, ["apt-get", "update"], install]


def test_port_option_is_checked(tmp_path: Path) -> None:
    assert localstack.parse_port("prefect=14200") == ("prefect", 14200)
    for bad in ("nope=1", "prefect=x", "prefect", "prefect=70000"):
        with pytest.raises(ValueError, match="NAME=PORT"):
            localstack.parse_port(bad)
        done = CliRunner().invoke(app, ["stack", "up", "--root", str(tmp_path), "--port", bad])
        assert done.exit_code == 2 and "NAME=PORT" in done.output  # a usage error, before anything starts
    assert not (tmp_path / "logs").exists()


# ------------------------------------------------------------------------------------------------
# up / down / status on real processes
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start ``cmd`` as a Proc (own session, no port); every one is stopped and reaped at the end."""
    started: list[Proc] = []

    def start(name: str, *cmd: str) -> Proc:
        proc = Proc(name, list(cmd) or ["sleep", "300"], tmp_path / "logs" / f"{name}.log", None, ready=lambda: True)
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop(timeout=5)


def test_down_stops_every_recorded_tree_newest_first(tmp_path: Path, spawn: Any) -> None:
    first = spawn("first")
    # a child that leaves the process group (as BentoML's workers and Ray's daemons do)
    second = spawn("second", "sh", "-c", "setsid sleep 300 & wait")
    records = [Record.of(first), Record.of(second)]
    write_records(tmp_path, records)
    assert second.proc is not None
    deadline = time.monotonic() + 10
    while not (escaped := descendants(second.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert escaped, "the setsid child did not start"
    said: list[str] = []
    try:
        assert down(tmp_path, timeout=5, out=said.append) == 0
        survivors = [pid for pid, start in escaped if process_start_time(pid) == start]
        assert not survivors, "the child outside the process group survived"
    finally:  # never leave it behind, whatever failed
        for pid, start in escaped:
            if process_start_time(pid) == start:
                os.kill(pid, signal.SIGKILL)
    assert said == [f"stopped second (pid {records[1].pid})", f"stopped first (pid {records[0].pid})"]
    assert not any(r.alive() for r in records)
    assert not state_path(tmp_path).exists()
    said.clear()
    assert down(tmp_path, out=said.append) == 0 and said[0].startswith("nothing to stop")


def test_down_never_signals_a_reused_pid(tmp_path: Path, spawn: Any) -> None:
    other = spawn("other")  # stands for the process that got the recorded pid after ours exited
    real = Record.of(other)
    assert real.start_time is not None
    write_records(tmp_path, [replace(real, start_time=real.start_time - 1), replace(real, name="rebooted", boot_id="another")])
    said: list[str] = []
    assert down(tmp_path, timeout=1, out=said.append) == 0
    assert said == [
        f"rebooted: pid {real.pid} was recorded in another boot or without a start time, left alone",
        f"other: pid {real.pid} now belongs to another process, left alone",
    ]
    assert real.alive() and other.proc is not None and other.proc.poll() is None
    assert not state_path(tmp_path).exists()


def test_down_of_a_process_that_already_exited(tmp_path: Path, spawn: Any) -> None:
    gone = spawn("gone")
    record = Record.of(gone)
    gone.stop()
    write_records(tmp_path, [record])
    said: list[str] = []
    assert down(tmp_path, out=said.append) == 0 and said == [f"gone (pid {record.pid}) had already exited"]


def test_status_says_what_runs(tmp_path: Path, spawn: Any) -> None:
    runner = spawn("runner")
    write_records(tmp_path, [Record.of(runner)])
    said: list[str] = []
    assert status(tmp_path, out=said.append) == 0
    assert "runner" in said[0] and " yes " in said[0]
    os.killpg(runner.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    runner.proc.wait()  # type: ignore[union-attr]
    said.clear()
    assert status(tmp_path, out=said.append) == 1 and "NO" in said[0]
    assert status(tmp_path / "elsewhere", out=said.append) == 1 and said[-1].startswith("not up")


def test_up_refuses_a_live_stack(tmp_path: Path, spawn: Any, capsys: pytest.CaptureFixture[str]) -> None:
    running = spawn("prefect")
    write_records(tmp_path, [Record.of(running)])
    with pytest.raises(StackError, match=r"already up \(prefect running.*make down first"):
        up(UpOptions(root=tmp_path, ports=free_stack_ports()))
    done = CliRunner().invoke(app, ["stack", "--root", str(tmp_path), "up"])
    assert done.exit_code == 1 and "already up" in done.output
    assert [r.name for r in read_records(tmp_path)] == ["prefect"] and Record.of(running).alive()


def test_up_refuses_busy_and_shared_ports(tmp_path: Path) -> None:
    ports = free_stack_ports()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["prometheus"]))
        busy.listen()
        with pytest.raises(StackError, match=rf"port {ports['prometheus']} \(prometheus\) busy"):
            up(UpOptions(root=tmp_path, ports=ports))
    with pytest.raises(StackError, match="more than one component"):
        up(UpOptions(root=tmp_path, ports={**ports, "service": ports["prefect"]}))
    assert not state_path(tmp_path).exists() and not (tmp_path / "logs").exists()


def test_an_unreadable_state_file_is_an_error_not_a_guess(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_path(tmp_path).write_text('{"components": [{"name": "prefect"}]}')
    done = CliRunner().invoke(app, ["stack", "down", "--root", str(tmp_path)])
    assert done.exit_code == 1 and "unreadable" in done.output and state_path(tmp_path).exists()


def test_the_prefect_client_retries_what_the_server_marks_retryable() -> None:
    """Prefect answers 503 while its SQLite database is locked; its own client retries, so does ours."""
    import http.server
    import threading

    seen: list[str] = []

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(body.decode())
            code = 503 if len(seen) < 3 else 201
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        transport = localstack.RetryingTransport(backoff=0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", transport=transport) as client:
            assert client.post("/create", json={"a": 1}).status_code == 201
            assert seen == ['{"a":1}'] * 3  # the same body, re-sent
            seen.clear()
            transport.retries = 2
            assert client.post("/create", json={"a": 1}).status_code == 503  # gives up with the last answer
            assert len(seen) == 2
    finally:
        server.shutdown()
        server.server_close()
