"""``make up`` / ``make down`` (flows/stackconf.py, flows/localstack.py) without the real stack: the program table,
the rendered ``supervisord.conf`` (read back by supervisor's own parser), the Prometheus / Alertmanager configs
(checked by promtool and amtool), and the bootstrap's supervisord handling on a real supervisord running small
stand-in programs: start in order with readiness, a failed start reported with its log, ``status``, ``down``,
and ``up`` refusing a live stack or a busy port. tests/e2e/test_stack.py brings the whole stack up."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from robustdx.cli.app import app
from robustdx.core.util import free_port
from robustdx.flows import localstack, stackconf
from robustdx.flows.localstack import (
    CAMELYON_MARKER,
    StackError,
    UpOptions,
    admin_token,
    check_can_start,
    daemon_running,
    down,
    prepare_data,
    start_program,
    start_supervisord,
    status,
    up,
)
from robustdx.flows.stackconf import (
    DEFAULT_PORTS,
    SCRAPE_JOBS,
    Program,
    StackAddresses,
    StackPlan,
    Tools,
    load_yaml,
    render_conf,
    socket_path,
)
from tests.deploy.stack import free_stack_ports
from tests.support.paths import REPO

pytestmark = pytest.mark.unit

SHIPPED_PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
SHIPPED_ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
ORDER = ["prefect", "mlflow", "pushgateway", "alertmanager", "receiver", "prometheus", "deploy", "service"]


def plan(root: Path, tools: Tools, fast: bool = False) -> StackPlan:
    return StackPlan(
        root,
        dict(DEFAULT_PORTS),
        REPO,
        tools,
        "not-a-real-token",
        root / "mlflow",
        fast,
        root / "sweep.yaml",
        2,
        ["data.root=/d"],
    )


def programs(root: Path, tools: Tools, fast: bool = False) -> dict[str, Program]:
    return {p.name: p for p in plan(root, tools, fast).programs()}


# ------------------------------------------------------------------------------------------------
# the program table and the configurations it writes
# ------------------------------------------------------------------------------------------------
def test_every_shipped_scrape_job_but_ray_has_a_local_program() -> None:
    shipped = {job["job_name"] for job in load_yaml(SHIPPED_PROMETHEUS)["scrape_configs"]}
    assert shipped - set(SCRAPE_JOBS.values()) == {"ray"}  # no Ray head locally: Ray runs inside the flows
    assert set(DEFAULT_PORTS) - set(SCRAPE_JOBS) == {"mlflow"} and DEFAULT_PORTS["mlflow"] == 5000


def test_programs_start_in_dependency_order(tmp_path: Path, monitoring_tools: Tools) -> None:
    table = plan(tmp_path, monitoring_tools).programs()
    assert [p.name for p in table] == ORDER
    assert [p.priority for p in table] == sorted({p.priority for p in table})  # distinct, increasing
    assert all(p.ready and p.ready.startswith("http://127.0.0.1:") for p in table)
    assert all(p.port == DEFAULT_PORTS.get(p.name) for p in table)


def test_prometheus_config_points_the_shipped_jobs_at_local_ports(tmp_path: Path, monitoring_tools: Tools) -> None:
    prom = programs(tmp_path, monitoring_tools)["prometheus"]
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
    assert f"--config.file={path}" in prom.command
    assert f"--web.listen-address=127.0.0.1:{DEFAULT_PORTS['prometheus']}" in prom.command
    assert prom.ready == "http://127.0.0.1:9090/-/ready"


def test_alertmanager_posts_to_the_receiver_with_the_shipped_waits(tmp_path: Path, monitoring_tools: Tools) -> None:
    am = programs(tmp_path, monitoring_tools)["alertmanager"]
    path = tmp_path / "alertmanager" / "alertmanager.yml"
    config, shipped = load_yaml(path), load_yaml(SHIPPED_ALERTMANAGER)
    hooks = [h["url"] for r in config["receivers"] for h in r.get("webhook_configs", [])]
    assert hooks == [f"http://127.0.0.1:{DEFAULT_PORTS['receiver']}/alerts"]
    assert config["route"] == shipped["route"] and config["inhibit_rules"] == shipped["inhibit_rules"]
    assert "--cluster.listen-address=" in am.command
    if monitoring_tools.amtool is not None:
        check = subprocess.run([str(monitoring_tools.amtool), "check-config", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_fast_alerts_shorten_intervals_and_waits_only(tmp_path: Path, monitoring_tools: Tools) -> None:
    programs(tmp_path, monitoring_tools, fast=True)
    prom = load_yaml(tmp_path / "prometheus" / "prometheus.yml")
    assert prom["global"]["scrape_interval"] == prom["global"]["evaluation_interval"] == "1s"
    assert prom["global"]["external_labels"] == load_yaml(SHIPPED_PROMETHEUS)["global"]["external_labels"]
    route = load_yaml(tmp_path / "alertmanager" / "alertmanager.yml")["route"]
    assert route["group_wait"] == route["routes"][0]["group_wait"] == route["routes"][0]["group_interval"] == "1s"
    assert route["repeat_interval"] == load_yaml(SHIPPED_ALERTMANAGER)["route"]["repeat_interval"]


def test_programs_get_local_addresses_and_the_stack_state(tmp_path: Path, monitoring_tools: Tools) -> None:
    t = programs(tmp_path, monitoring_tools)
    prefect, receiver, service = t["prefect"], t["receiver"], t["service"]
    assert (
        prefect.command[-4:] == ("--host", "127.0.0.1", "--port", "4200") and prefect.ready == "http://127.0.0.1:4200/api/health"
    )
    assert prefect.env["PREFECT_HOME"] == str(tmp_path / "prefect")
    assert prefect.env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert receiver.command == (str(REPO / "deploy" / "bin" / "alert-receiver.sh"),)
    assert receiver.env["ROBUSTDX_ALERTS_HOST"] == "127.0.0.1" and receiver.env["ROBUSTDX_ALERTS_PORT"] == "9095"
    assert service.command == (str(REPO / "deploy" / "bin" / "serve.sh"),) and service.ready == "http://127.0.0.1:3000/readyz"
    assert service.env["ROBUSTDX_SERVE_PORT"] == "3000" and service.env["BENTOML_HOME"] == str(tmp_path / "bentoml")
    assert service.env["ROBUSTDX_ADMIN_TOKEN"] == "not-a-real-token"


def test_mlflow_serves_the_store_and_the_flows_track_to_it(tmp_path: Path, monitoring_tools: Tools) -> None:
    t = programs(tmp_path, monitoring_tools)
    argv = list(t["mlflow"].command)
    assert argv[:2] == [str(Path(sys.executable).with_name("mlflow")), "server"]
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert argv[argv.index("--artifacts-destination") + 1] == str(tmp_path / "mlflow" / "artifacts")
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5000"
    assert t["mlflow"].ready == "http://127.0.0.1:5000/health"
    assert t["deploy"].env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    help_text = subprocess.run([*argv[:2], "--help"], capture_output=True, text=True, check=True).stdout
    for option in (arg for arg in argv[2:] if arg.startswith("--")):
        assert option in help_text, f"mlflow server has no {option}"


def test_deploy_command_uses_only_options_robustdx_deploy_has(tmp_path: Path, monitoring_tools: Tools) -> None:
    deploy = programs(tmp_path, monitoring_tools)["deploy"]
    argv = list(deploy.command)
    assert argv[:4] == [sys.executable, "-m", "robustdx.cli", "deploy"]
    assert argv[argv.index("--run-set") + 1] == "data.root=/d" and argv[argv.index("--num-samples") + 1] == "2"
    assert argv[argv.index("--service-url") + 1] == "http://127.0.0.1:3000"
    assert argv[argv.index("--home") + 1] == str(tmp_path / "bentoml")
    env = deploy.env
    assert env["ROBUSTDX_PUSHGATEWAY"] == "127.0.0.1:9091" and env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert env["ROBUSTDX_ADMIN_TOKEN"] == "not-a-real-token" and env["BENTOML_DO_NOT_TRACK"] == "True"
    cli_env = {**os.environ, "COLUMNS": "300", "TERM": "dumb", "NO_COLOR": "1"}
    help_text = subprocess.run([*argv[:4], "--help"], capture_output=True, text=True, env=cli_env, check=True).stdout
    for option in (arg for arg in argv[4:] if arg.startswith("--")):
        assert option in help_text, f"robustdx deploy has no {option}"


# ------------------------------------------------------------------------------------------------
# supervisord.conf
# ------------------------------------------------------------------------------------------------
def read_back(conf: str, tmp_path: Path) -> dict[str, object]:
    """The program configs as supervisord itself parses ``conf``."""
    from supervisor.options import ServerOptions

    path = tmp_path / "read-back.conf"
    path.write_text(conf)
    (tmp_path / "logs").mkdir(exist_ok=True)
    opts = ServerOptions()
    opts.realize(args=["-c", str(path)])
    return {pc.name: pc for group in opts.process_group_configs for pc in group.process_configs}


def test_conf_renders_every_program_as_supervisord_reads_it(tmp_path: Path, monitoring_tools: Tools) -> None:
    p = plan(tmp_path, monitoring_tools)
    table = p.programs()
    parsed = read_back(render_conf(p, table, "/venv/bin:/usr/bin", REPO), tmp_path)
    assert sorted(parsed) == sorted(ORDER)
    for program in table:
        pc = parsed[program.name]
        assert shlex.split(pc.command) == list(program.command)  # type: ignore[attr-defined]
        assert pc.priority == program.priority and pc.autostart is False  # type: ignore[attr-defined]
        assert pc.stdout_logfile == str(tmp_path / "logs" / f"{program.name}.log") and pc.redirect_stderr  # type: ignore[attr-defined]
        assert pc.stopasgroup and pc.killasgroup and pc.directory == str(REPO)  # type: ignore[attr-defined]
        assert pc.environment == {"PATH": "/venv/bin:/usr/bin", **program.env}  # type: ignore[attr-defined]


def test_conf_values_survive_percent_and_commas_and_refuse_quotes(tmp_path: Path) -> None:
    addresses = StackAddresses(tmp_path, {})
    odd = Program("odd", ("echo", "50% off", "a b"), 1, env={"A": "x,y=z", "B": "100%"})
    pc = read_back(render_conf(addresses, [odd], "/bin", tmp_path), tmp_path)["odd"]
    assert shlex.split(pc.command) == ["echo", "50% off", "a b"]
    assert pc.environment == {"PATH": "/bin", "A": "x,y=z", "B": "100%"}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="quotes"):
        render_conf(addresses, [Program("q", ("true",), 1, env={"A": 'say "hi"'})], "/bin", tmp_path)


def test_socket_path_stays_under_the_unix_limit(tmp_path: Path) -> None:
    assert socket_path(Path("/r")) == Path("/r/supervisor.sock")
    deep = tmp_path / ("x" * 120)
    short = socket_path(deep)
    assert len(str(short)) <= stackconf.SOCKET_LIMIT and short.name.startswith("robustdx-") and short == socket_path(deep)
    assert socket_path(tmp_path / ("y" * 120)) != short


# ------------------------------------------------------------------------------------------------
# options, data, secrets
# ------------------------------------------------------------------------------------------------
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


def test_port_option_is_checked(tmp_path: Path) -> None:
    assert stackconf.parse_port("mlflow=15000") == ("mlflow", 15000)
    for bad in ("nope=1", "prefect=x", "prefect", "prefect=70000"):
        with pytest.raises(ValueError, match="NAME=PORT"):
            stackconf.parse_port(bad)
        done = CliRunner().invoke(app, ["stack", "up", "--root", str(tmp_path), "--port", bad])
        assert done.exit_code == 2 and "NAME=PORT" in done.output  # a usage error, before anything starts
    assert not (tmp_path / "logs").exists()


def test_missing_tools_are_named_with_the_setup_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stackconf.shutil, "which", lambda name: None)
    done = CliRunner().invoke(app, ["stack", "up", "--root", str(tmp_path), *_port_args(free_stack_ports())])
    assert done.exit_code == 1 and "deploy/bin/install-tools.sh monitoring" in done.output
    assert not (tmp_path / "supervisord.conf").exists()


def _port_args(ports: dict[str, int]) -> list[str]:
    return [arg for name, port in ports.items() for arg in ("--port", f"{name}={port}")]


# ------------------------------------------------------------------------------------------------
# a real supervisord with stand-in programs
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[StackAddresses, dict[str, Program]]]:
    """supervisord on ``tmp_path`` with three stand-ins: an HTTP server, a sleeper without a port, a crasher.
    Shut down at the end whatever the test did."""
    port = free_port()
    addresses = StackAddresses(tmp_path / "stack", {"web": port})
    table = [
        Program(
            "web", (sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)), 10, port, f"http://127.0.0.1:{port}/"
        ),
        Program("sleeper", ("sleep", "300"), 20, env={"SLEEPER_SAYS": "50% done"}),
        Program("crasher", ("sh", "-c", "echo crasher-was-here; exit 3"), 30),
    ]
    start_supervisord(addresses, table, tmp_path)
    try:
        yield addresses, {p.name: p for p in table}
    finally:
        localstack.shutdown(addresses.root)


def test_programs_start_by_name_and_down_stops_them_all(supervised: tuple[StackAddresses, dict[str, Program]]) -> None:
    addresses, table = supervised
    root = addresses.root
    assert daemon_running(root) and (root / "supervisord.pid").is_file()
    assert localstack.program_state(root, "web")["statename"] == "STOPPED"  # autostart=false: up starts them
    start_program(addresses, table["web"])
    start_program(addresses, table["sleeper"])
    assert httpx.get(addresses.url("web"), timeout=5).status_code == 200
    pids = [localstack.program_state(root, name)["pid"] for name in ("web", "sleeper")]
    with pytest.raises(StackError, match=r"crasher failed to start \(SPAWN_ERROR: crasher\):\ncrasher-was-here$"):
        start_program(addresses, table["crasher"])

    said: list[str] = []
    assert status(root, out=said.append) != 0  # the crasher is FATAL
    assert "web" in said[0] and "RUNNING" in said[0] and "FATAL" in said[0]
    with pytest.raises(StackError, match="already up"):
        check_can_start(root, {})
    done = CliRunner().invoke(app, ["stack", "--root", str(root), "up"])
    assert done.exit_code == 1 and "already up" in done.output

    said.clear()
    assert down(root, out=said.append) == 0 and said[0].startswith("stopped")
    assert not daemon_running(root) and not (root / "supervisord.pid").exists()
    for pid in pids:  # the programs' processes are gone (or, reparented to a non-reaping init, zombies)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"), pid
    said.clear()
    assert down(root, out=said.append) == 0 and said[0].startswith("nothing to stop")
    assert status(root, out=said.append) == 1 and said[-1].startswith("not up")


def test_a_program_that_stops_before_it_is_ready_fails_with_its_log(
    supervised: tuple[StackAddresses, dict[str, Program]],
) -> None:
    addresses, _ = supervised
    never = Program("sleeper", ("sleep", "300"), 20, ready=f"http://127.0.0.1:{free_port()}/", timeout=1.5)
    with pytest.raises(StackError, match=r"sleeper not ready .* after 2 s"):
        start_program(addresses, never)


def test_up_refuses_busy_and_shared_ports(tmp_path: Path) -> None:
    ports = free_stack_ports()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["prometheus"]))
        busy.listen()
        with pytest.raises(StackError, match=rf"port {ports['prometheus']} \(prometheus\) busy"):
            up(UpOptions(root=tmp_path, ports=ports))
    with pytest.raises(StackError, match="more than one program"):
        up(UpOptions(root=tmp_path, ports={**ports, "service": ports["prefect"]}))
    assert not (tmp_path / "supervisord.conf").exists() and not (tmp_path / "logs").exists()


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
