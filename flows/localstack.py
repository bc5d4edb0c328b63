"""``make up`` / ``make down`` without Docker: the stack's programs (:mod:`robustdx.flows.stackconf`) run under
supervisord, and this module is the small bootstrap around it.

``up`` writes ``<root>/supervisord.conf``, starts ``supervisord -c`` it, then starts the programs one by one
in priority order (``supervisorctl start NAME`` through supervisord's XML-RPC socket) and waits until each
answers its readiness URL before starting the next. Why not ``autostart``: supervisord orders the spawns by
priority but never waits for readiness, and here the order matters — the receiver and the deployments need
a Prefect API that answers, the deployments need MLflow, and the service needs a model, which only exists
after the bootstrap: when ``<root>/bentoml`` has no production pointer yet, ``up`` creates a run of
``retrain/nightly`` through the Prefect REST API — the request the UI's Run button sends — and waits until
it completed and promoted (synthesising the demo data first when the sweep's data set is missing). The
service starts last. If anything fails (or Ctrl-C / SIGTERM arrives), supervisord is shut down again, which
stops every program it started, and ``up`` returns 1.

``down`` is ``supervisorctl -c <root>/supervisord.conf shutdown`` (each program's process group gets
SIGTERM, then SIGKILL after 15 s; the highest priority stops first), ``status`` is ``supervisorctl status``.
State, all under ``--root`` (default ``runs/stack``): ``supervisord.conf``, ``supervisord.pid``, the control
socket ``supervisor.sock``, ``admin-token`` (mode 0600, the bearer token of the service's
``/admin/reload``; never printed), ``logs/NAME.log``, ``prefect/``, ``bentoml/`` (model store and production
pointer), ``retrain/``, ``sweeps/``, ``prometheus/``, ``alertmanager/``, ``pushgateway/``; MLflow's database
and artifacts in ``--mlflow-store`` (default ``runs/mlflow``, where the command line's trainings go too).
"""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from robustdx.flows.stackconf import (
    ALERT_TOKEN_FILE,
    DEFAULT_MLFLOW_STORE,
    DEFAULT_PORTS,
    DEFAULT_ROOT,
    DEPLOYMENTS,
    TOKEN_FILE,
    Program,
    StackAddresses,
    StackPlan,
    find_tools,
    render_conf,
    repo_root,
    socket_path,
)

FIRST_MODEL_DEPLOYMENT = DEPLOYMENTS[0]
# the body of the Prefect UI's "Quick run" (POST /api/deployments/{id}/create_flow_run)
UI_RUN_BODY: dict[str, Any] = {"state": {"type": "SCHEDULED", "message": "Run from the Prefect UI with defaults"}}
# pages of Prefect 3.9's default UI ("/" redirects there); the e2e test renders them in Chromium
UI_DEPLOYMENTS, UI_RUNS, UI_FLOW_RUN = "/v2/deployments", "/v2/runs", "/v2/runs/flow-run/{id}"
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
# what `robustdx demo` synthesises when the sweep's Camelyon17 data is missing
SYNTH_ARGS = ("--per-class", "60", "--size", "96")
CAMELYON_MARKER = Path("camelyon17_v1.0") / "metadata.csv"
START_MARK = "--- robustdx stack up started this at"


class StackError(RuntimeError):
    """``up`` / ``down`` cannot proceed; the message says why and what to do."""


class Interrupted(BaseException):
    """SIGTERM / SIGHUP during ``up``: treated like Ctrl-C, so what was started is stopped again."""


def _interrupt(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


# ------------------------------------------------------------------------------------------------
# supervisord
# ------------------------------------------------------------------------------------------------
def supervisor_bin(name: str = "supervisord") -> str:
    """``supervisord`` / ``supervisorctl`` of this Python's environment (the pinned ``supervisor`` package)."""
    return str(Path(sys.executable).with_name(name))


def rpc(root: Path) -> Any:
    """supervisord's XML-RPC interface over ``root``'s control socket (what supervisorctl talks to)."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path(root)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def daemon_running(root: Path) -> bool:
    """Whether ``root``'s supervisord answers on its socket."""
    try:
        return rpc(root).getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Error, http.client.HTTPException):
        return False


def program_state(root: Path, name: str) -> dict[str, Any]:
    return rpc(root).getProcessInfo(name)


def shutdown(root: Path, timeout: float = 150.0) -> bool:
    """``supervisorctl shutdown``: every program stopped, then supervisord exits; False when none ran."""
    conf = StackAddresses(root, {}).conf
    pidfile = root / "supervisord.pid"
    if not conf.is_file() or not daemon_running(root):
        return False
    subprocess.run([supervisor_bin("supervisorctl"), "-c", str(conf), "shutdown"], capture_output=True, check=False)
    deadline = time.monotonic() + timeout
    while pidfile.exists() or daemon_running(root):  # supervisord removes its pidfile as it exits
        if time.monotonic() > deadline:
            raise StackError(f"supervisord ({pidfile}) still running {timeout:.0f} s after shutdown")
        time.sleep(0.2)
    return True


def _tail(log: Path, n: int = 3000) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    if START_MARK in text:  # only this start's lines
        text = text.rpartition(START_MARK)[2].partition("\n")[2]
    return text[-n:].strip()


def start_program(plan: StackAddresses, program: Program, ready: Callable[[], bool] | None = None) -> None:
    """``supervisorctl start`` one program, then wait for its readiness URL (or ``ready``).

    Raises:
        StackError: it failed to start, stopped before it was ready, or was not ready in time (log tail attached).
    """
    print(f"starting {program.name} ...", flush=True)
    t0, log, sup = time.monotonic(), plan.log(program.name), rpc(plan.root)
    try:
        sup.startProcess(program.name, True)  # returns once RUNNING for startsecs
    except xmlrpc.client.Fault as err:
        raise StackError(f"{program.name} failed to start ({err.faultString}):\n{_tail(log)}") from None

    def is_ready() -> bool:
        if ready is not None:
            return ready()
        if program.ready is None:
            return True
        try:
            return httpx.get(program.ready, timeout=2).is_success
        except httpx.HTTPError:
            return False

    while not is_ready():
        info = sup.getProcessInfo(program.name)
        if info["statename"] != "RUNNING":
            raise StackError(
                f"{program.name} {info['statename'].lower()} (exit {info['exitstatus']}) before it was ready:\n{_tail(log)}"
            )
        if time.monotonic() - t0 > program.timeout:
            raise StackError(f"{program.name} not ready ({program.ready}) after {program.timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.3)
    where = f" on http://127.0.0.1:{program.port}" if program.port else ""
    print(f"  {program.name} ready{where} in {time.monotonic() - t0:.1f} s", flush=True)


def start_supervisord(plan: StackAddresses, programs: Sequence[Program], directory: Path, timeout: float = 30.0) -> None:
    """Write ``<root>/supervisord.conf`` for ``programs`` (run in ``directory``, this interpreter's bin folder first
    on PATH, as the deploy/bin scripts expect) and start supervisord on it; no program is started yet.

    Raises:
        StackError: supervisord did not come up (its message and log attached).
    """
    path_env = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    (plan.root / "logs").mkdir(parents=True, exist_ok=True)
    plan.conf.write_text(render_conf(plan, programs, path_env, directory))
    for p in programs:  # logs accumulate over restarts: mark where this start begins
        with open(plan.log(p.name), "a") as fh:
            fh.write(f"\n{START_MARK} {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC\n")
    cmd = [supervisor_bin(), "-c", str(plan.conf)]
    done = subprocess.run(cmd, env={**os.environ, "PATH": path_env}, capture_output=True, text=True, check=False)
    deadline = time.monotonic() + timeout
    while not daemon_running(plan.root):
        if done.returncode != 0 or time.monotonic() > deadline:
            log = _tail(plan.root / "logs" / "supervisord.log")
            raise StackError(f"supervisord did not start (exit {done.returncode}): {done.stderr.strip()}\n{log}")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------
# up
# ------------------------------------------------------------------------------------------------
@dataclass
class UpOptions:
    """What ``up`` starts; paths are made absolute by :func:`up`."""

    root: Path = DEFAULT_ROOT
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    sweep: Path = Path("configs/sweeps/demo.yaml")
    num_samples: int | None = None
    run_set: list[str] = field(default_factory=list)
    data: Path | None = None
    fast_alerts: bool = False
    first_model_timeout: float = 3600.0
    mlflow_store: Path = DEFAULT_MLFLOW_STORE


def port_busy(port: int) -> bool:
    """Whether 127.0.0.1:``port`` cannot be bound (SO_REUSEADDR: sockets in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_can_start(root: Path, ports: Mapping[str, int]) -> None:
    """Refuse a second stack on the same root, and ports another process holds (named, with their program).

    Raises:
        StackError: already up, a port busy, or one port given to two programs.
    """
    if daemon_running(root):
        raise StackError(f"already up (supervisord answers on {socket_path(root)}); robustdx stack status, make down first")
    twice = sorted({port for port in ports.values() if list(ports.values()).count(port) > 1})
    if twice:
        raise StackError(f"port {', '.join(map(str, twice))} given to more than one program: {dict(ports)}")
    taken = [f"{port} ({name})" for name, port in ports.items() if port_busy(port)]
    if taken:
        raise StackError(f"port {', '.join(taken)} busy; free it or choose another with --port NAME=PORT")


def admin_token(root: Path, name: str = TOKEN_FILE) -> str:
    """A secret of the stack (the service's admin token, the alert receiver's bearer secret), created
    once in ``root/name`` (mode 0600) and reused by later ``up`` runs; never printed."""
    path = root / name
    root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        token = path.read_text().strip()
        if token:
            return token
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def prepare_data(sweep: Path, run_set: Sequence[str], data: Path | None, repo: Path) -> list[str]:
    """The run-config overrides to deploy with; synthesises the demo data set when the sweep's is missing.

    The data root is resolved against ``repo`` because the flows run there. Only Camelyon17 can be
    synthesised (as ``robustdx demo`` does); any other missing data set is an error naming the folder.
    """
    from robustdx.core.errors import ConfigError
    from robustdx.flows.tune.driver import load_sweep

    overrides = [*run_set, *([f"data.root={data}"] if data else [])]
    try:
        _, base = load_sweep(sweep, run_overrides=overrides)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise StackError(f"sweep {sweep}: {err}") from None
    root = base.data.root if base.data.root.is_absolute() else repo / base.data.root
    if base.data.dataset == "camelyon17":
        if not (root / CAMELYON_MARKER).is_file():
            print(f"no Camelyon17 data in {root}: synthesising the demo set (robustdx data synth {' '.join(SYNTH_ARGS)})")
            cmd = [sys.executable, "-m", "robustdx.cli", "data", "synth", "--out", str(root), *SYNTH_ARGS]
            done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise StackError(
                    f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
    elif not root.exists():
        raise StackError(f"no {base.data.dataset} data at {root}: point --data (or the sweep's base config) at it")
    return overrides


def up(opts: UpOptions) -> int:
    """Start the stack (see the module docstring); 0 when everything is ready, else 1 with nothing left running.

    Raises:
        StackError: refused before anything started (already up, port busy, bad sweep, missing data).
        ToolsUnavailable: the monitoring binaries are missing (deploy/bin/install-tools.sh monitoring).
    """
    root, repo = opts.root.resolve(), repo_root()
    check_can_start(root, opts.ports)
    tools = find_tools()
    sweep = opts.sweep.resolve()
    overrides = prepare_data(sweep, opts.run_set, opts.data.resolve() if opts.data else None, repo)
    admin_token(root, ALERT_TOKEN_FILE)
    store = opts.mlflow_store.resolve()
    store.mkdir(parents=True, exist_ok=True)
    plan = StackPlan(
        root, dict(opts.ports), repo, tools, admin_token(root), store, opts.fast_alerts, sweep, opts.num_samples, overrides
    )
    programs = plan.programs()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        start_supervisord(plan, programs, repo)
        by_name = {p.name: p for p in programs}
        for p in programs:
            if p.name == "service":  # needs a model: after the bootstrap
                continue
            since = datetime.now(UTC)
            check = (lambda since=since: deployments_served(plan.api, since)) if p.name == "deploy" else None
            start_program(plan, p, check)
        first_model(plan, opts.first_model_timeout)
        start_program(plan, by_name["service"])
    except (Exception, KeyboardInterrupt, Interrupted) as err:
        print(f"\nup failed: {err}\nstopping what was started ...", file=sys.stderr)
        try:
            shutdown(root)
        except StackError as again:
            print(again, file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_summary(plan)
    return 0


def first_model(plan: StackPlan, timeout: float) -> None:
    """Promote a first model through ``retrain/nightly`` unless the stack's BentoML home already has one.

    Raises:
        StackError: the run did not complete, promoted nothing, or the deployments' program stopped.
    """
    from robustdx.core.release.pointer import read_production

    if read_production(plan.home) is not None:
        return
    run = run_deployment(plan.api, FIRST_MODEL_DEPLOYMENT)
    log = plan.log("deploy")
    print(
        f"no model in {plan.home} yet: retraining one ({FIRST_MODEL_DEPLOYMENT} run {run['name']}, "
        f"{plan.url('prefect')}{UI_FLOW_RUN.format(id=run['id'])}; the flow's output goes to {log})",
        flush=True,
    )
    t0 = time.monotonic()
    try:
        done = wait_flow_run(
            plan.api, run["id"], timeout, alive=lambda: program_state(plan.root, "deploy")["statename"] == "RUNNING"
        )
    except BaseException:
        # else the run stays scheduled in Prefect's database, the next `up` runs it, and the deployment's
        # limit of one run at a time cancels the first-model run that `up` creates then
        cancel_flow_run(plan.api, run["id"], "robustdx stack up stopped before this run finished")
        raise
    state = done["state"]["type"]
    if state != "COMPLETED":
        raise StackError(f"the first retrain ended {state.lower()}: {done['state'].get('message') or ''}\n{_tail(log)}")
    if read_production(plan.home) is None:
        raise StackError(
            f"the first retrain completed but promoted nothing into {plan.home} (see its promotion-decision artifact)"
        )
    print(f"  first model promoted in {time.monotonic() - t0:.0f} s", flush=True)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def print_summary(plan: StackAddresses) -> None:
    """Where to look: a URL and a log per program."""
    rows = [
        ("component", "URL", "log"),
        ("Prefect UI", plan.url("prefect"), "prefect"),
        ("retrain deployments", plan.url("prefect") + UI_DEPLOYMENTS, "deploy"),
        ("MLflow UI", plan.url("mlflow"), "mlflow"),
        ("service (Swagger UI)", plan.url("service"), "service"),
        ("Prometheus", plan.url("prometheus"), "prometheus"),
        ("Alertmanager", plan.url("alertmanager"), "alertmanager"),
        ("Pushgateway", plan.url("pushgateway"), "pushgateway"),
        ("alert receiver", f"{plan.url('receiver')}/healthz", "receiver"),
    ]
    print(f"\n{_table([rows[0], *((name, url, str(plan.log(log))) for name, url, log in rows[1:])])}")
    print(
        f"\nadmin token of POST /admin/reload: {plan.root / TOKEN_FILE}; "
        f"programs: supervisorctl -c {plan.conf} status\nmake down stops it (robustdx stack down)"
    )


# ------------------------------------------------------------------------------------------------
# down / status
# ------------------------------------------------------------------------------------------------
def down(root: Path, timeout: float = 150.0, out: Callable[[str], None] = print) -> int:
    """``supervisorctl shutdown`` and wait until supervisord is gone; idempotent."""
    root = root.resolve()
    if shutdown(root, timeout):
        out(f"stopped the stack of {root}")
    else:
        out(f"nothing to stop (no supervisord answers for {root})")
    return 0


def status(root: Path, out: Callable[[str], None] = print) -> int:
    """``supervisorctl status``: 0 when every program runs, else non-zero (3 when some do not, 1 when not up)."""
    conf = StackAddresses(root.resolve(), {}).conf
    if not conf.is_file() or not daemon_running(root.resolve()):
        out(f"not up (no supervisord answers for {root})")
        return 1
    done = subprocess.run([supervisor_bin("supervisorctl"), "-c", str(conf), "status"], capture_output=True, text=True)
    out((done.stdout + done.stderr).rstrip())
    return done.returncode


# ------------------------------------------------------------------------------------------------
# the Prefect REST API (the requests the UI sends)
# ------------------------------------------------------------------------------------------------
RETRY_STATUSES = frozenset({429, 502, 503})
RETRIES = 6


class RetryingTransport(httpx.HTTPTransport):
    """Retries the answers the Prefect server marks as retryable (429, 502, 503) with exponential back-off,
    as Prefect's own client does (``PREFECT_CLIENT_MAX_RETRIES``): its SQLite database answers 503 while
    another writer (the deployments' runner) holds the lock. The last answer is returned as it is."""

    def __init__(self, retries: int = RETRIES, backoff: float = 0.5) -> None:
        super().__init__()
        self.retries, self.backoff = retries, backoff

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.retries):
            response = super().handle_request(request)
            if response.status_code not in RETRY_STATUSES or attempt == self.retries - 1:
                return response
            response.close()
            time.sleep(min(self.backoff * 2**attempt, 8.0))
        raise AssertionError("unreachable")  # the loop always returns on its last attempt


def _prefect_client(api: str) -> httpx.Client:
    return httpx.Client(base_url=api, timeout=10, transport=RetryingTransport())


def deployments_served(api: str, since: datetime) -> bool:
    """Whether the Prefect API lists both retrain deployments and a runner polled them after ``since``.

    Why ``last_polled``: after a restart the deployments are still in Prefect's database, so their mere
    existence does not show that this ``robustdx deploy`` serves them; a poll since its start does."""
    try:
        with _prefect_client(api) as client:
            for name in DEPLOYMENTS:
                r = client.get(f"/deployments/name/{name}")
                if not r.is_success:
                    return False
                polled = r.json().get("last_polled")
                if not polled or datetime.fromisoformat(polled.replace("Z", "+00:00")) < since:
                    return False
    except httpx.HTTPError:
        return False
    return True


def run_deployment(api: str, name: str) -> dict[str, Any]:
    """Create a flow run of deployment ``name`` exactly as the Prefect UI's Run button does (Quick run)."""
    with _prefect_client(api) as client:
        r = client.get(f"/deployments/name/{name}")
        r.raise_for_status()
        r = client.post(f"/deployments/{r.json()['id']}/create_flow_run", json=UI_RUN_BODY)
        r.raise_for_status()
        return r.json()


def cancel_flow_run(api: str, run_id: str, message: str) -> None:
    """Propose CANCELLED for a flow run (best effort: a run that already finished keeps its state)."""
    try:
        with _prefect_client(api) as client:
            client.post(f"/flow_runs/{run_id}/set_state", json={"state": {"type": "CANCELLED", "message": message}})
    except httpx.HTTPError:
        pass


def wait_flow_run(
    api: str,
    run_id: str,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    out: Callable[[str], None] = print,
    every: float = 30.0,
) -> dict[str, Any]:
    """Poll a flow run until it is in a terminal state; prints state changes and a line every ``every`` s.

    Raises:
        StackError: ``alive()`` turned false (the program running the flow stopped) or ``timeout`` passed.
    """
    t0, last, said = time.monotonic(), "", 0.0
    with _prefect_client(api) as client:
        while True:
            run = client.get(f"/flow_runs/{run_id}").json()
            state = run["state"]["type"] if run.get("state") else "UNKNOWN"
            elapsed = time.monotonic() - t0
            if state != last or elapsed - said >= every:
                out(f"  {run['name']}: {state.lower()} ({elapsed:.0f} s)")
                last, said = state, elapsed
            if state in TERMINAL_STATES:
                return run
            if not alive():
                raise StackError(f"the program serving the deployments stopped while {run['name']} was {state.lower()}")
            if elapsed > timeout:
                raise StackError(f"{run['name']} still {state.lower()} after {timeout:.0f} s")
            time.sleep(2.0)
