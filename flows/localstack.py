"""The whole robustdx stack as local processes on 127.0.0.1: ``make up`` / ``make down`` without Docker.

Why: the compose stack (``deploy/compose.yaml``) needs a Docker engine, which the development machines
and CI runners do not have. ``robustdx stack up`` starts the same components as
plain processes, in this order, each in its own session (process group) with its log in
``<root>/logs/NAME.log``:

============  =====  ================================================================================
component     port   command
============  =====  ================================================================================
prefect       4200   ``prefect server start`` — the UI and the API
pushgateway   9091   ``prometheus-pushgateway`` (flows push their outcome there)
alertmanager  9093   ``prometheus-alertmanager``, the shipped routing, its webhook → the receiver
receiver      9095   ``deploy/bin/alert-receiver.sh``: a retrain alert becomes a Prefect event
prometheus    9090   ``prometheus``: the shipped jobs and rules; no Ray job (Ray runs inside the flows)
deploy        —      ``robustdx deploy``: serves ``retrain/nightly`` and ``retrain/on-drift``
service       3000   ``deploy/bin/serve.sh`` (``bentoml serve`` of the production model)
============  =====  ================================================================================

The service needs a model: when ``<root>/bentoml`` has no production pointer yet, ``up`` first creates a
run of ``retrain/nightly`` through the Prefect REST API — the request the UI's Run button sends — and
waits until it has completed and promoted (synthesising the demo data first when the sweep's data set
is missing).

State, all under ``--root`` (default ``runs/stack``): ``stack.json`` (every started process: name, pid,
argv, log, URL, and its kernel start time, so that ``down`` never signals a process that merely reuses a
recorded pid), ``admin-token`` (mode 0600, the bearer token of the service's ``/admin/reload``; never
printed), ``logs/``, ``prefect/`` (Prefect's home and database), ``bentoml/`` (model store and production
pointer), ``retrain/`` (retrained run folders), ``prometheus/``, ``alertmanager/``, ``pushgateway/``.

The generic helpers — installing the Prometheus binaries, :class:`Proc`, the configuration rewrites —
are also the test suite's (``tests/deploy/stack.py`` imports them), so the tests start what ``make up``
starts. Linux only: process identity is read from ``/proc``.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

# ------------------------------------------------------------------------------------------------
# constants
# ------------------------------------------------------------------------------------------------
DEFAULT_ROOT = Path("runs/stack")
STATE_FILE = "stack.json"
TOKEN_FILE = "admin-token"
ALERT_TOKEN_FILE = "alert-token"  # Alertmanager -> receiver bearer secret (credentials_file)
# component -> default port (the compose stack's host ports, so URLs in the docs hold for both)
DEFAULT_PORTS: dict[str, int] = {
    "prefect": 4200,
    "service": 3000,
    "prometheus": 9090,
    "alertmanager": 9093,
    "pushgateway": 9091,
    "receiver": 9095,
}
# component -> its scrape job in deploy/prometheus/prometheus.yml (the ray job is dropped: no Ray head)
SCRAPE_JOBS: dict[str, str] = {
    "service": "robustdx-service",
    "pushgateway": "pushgateway",
    "prefect": "prefect-server",
    "receiver": "alert-receiver",
    "alertmanager": "alertmanager",
    "prometheus": "prometheus",
}
FAST_INTERVAL = "1s"  # --fast-alerts: scrape/evaluation interval and Alertmanager group waits
DEPLOYMENTS = ("retrain/nightly", "retrain/on-drift")  # flows/schedule.py: flow "retrain", NIGHTLY, ON_DRIFT
FIRST_MODEL_DEPLOYMENT = DEPLOYMENTS[0]
# the body of the Prefect UI's "Quick run" (POST /api/deployments/{id}/create_flow_run)
UI_RUN_BODY: dict[str, Any] = {"state": {"type": "SCHEDULED", "message": "Run from the Prefect UI with defaults"}}
# pages of Prefect 3.9's default UI ("/" redirects there); the e2e test renders them in Chromium
UI_DEPLOYMENTS, UI_RUNS, UI_FLOW_RUN = "/v2/deployments", "/v2/runs", "/v2/runs/flow-run/{id}"
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
# what `robustdx demo` synthesises when the sweep's Camelyon17 data is missing
SYNTH_ARGS = ("--per-class", "60", "--size", "96")
CAMELYON_MARKER = Path("camelyon17_v1.0") / "metadata.csv"
STOP_TIMEOUT = 15.0
START_MARK = "--- localstack up started this at"

# Debian 12 packages of the monitoring binaries
APT_PACKAGES = ("prometheus", "prometheus-alertmanager", "prometheus-pushgateway")
TOOL_BINARIES = ("prometheus", "promtool", "prometheus-alertmanager", "prometheus-pushgateway")


def install_command(packages: Sequence[str]) -> tuple[str, ...]:
    """The apt-get command that installs ``packages`` without their recommendations."""
    return ("apt-get", "install", "-y", "--no-install-recommends", *packages)


INSTALL_COMMAND = install_command(APT_PACKAGES)


def repo_root() -> Path:
    """The source checkout this module runs from (it holds ``deploy/``), else the working directory.

    Why not a constant: an installed wheel has no ``deploy/`` next to the package, and then the scripts
    and configs can only come from a checkout the user runs in."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "deploy").is_dir() else Path.cwd()


# ------------------------------------------------------------------------------------------------
# system tools (Debian packages), installed as root when missing
# ------------------------------------------------------------------------------------------------
class ToolsUnavailable(RuntimeError):
    """Required binaries are missing and cannot be installed from here."""


@dataclass(frozen=True)
class Tools:
    """Paths of the monitoring binaries (``amtool`` ships with the Alertmanager package when present)."""

    prometheus: Path
    promtool: Path
    alertmanager: Path
    pushgateway: Path
    amtool: Path | None


def _which(name: str) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found else None


def find_tools() -> Tools | None:
    """The installed monitoring tools, or None when any required one is missing."""
    paths = {name: _which(name) for name in TOOL_BINARIES}
    if any(p is None for p in paths.values()):
        return None
    return Tools(
        prometheus=paths["prometheus"],  # type: ignore[arg-type]
        promtool=paths["promtool"],  # type: ignore[arg-type]
        alertmanager=paths["prometheus-alertmanager"],  # type: ignore[arg-type]
        pushgateway=paths["prometheus-pushgateway"],  # type: ignore[arg-type]
        amtool=_which("amtool"),
    )


def apt_binaries(
    packages: Sequence[str],
    binaries: Sequence[str],
    purpose: str,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> dict[str, Path]:
    """``binaries`` by name, after installing the Debian ``packages`` with apt-get when any is missing.

    Why install instead of skipping: CI machines are fresh Debian 12 images that run as root, and the
    checks that need these binaries are worthless if they skip silently. ``apt-get update`` runs only
    when the first install fails (a stale or empty package index), which keeps the common case fast.
    Maintainer scripts start no daemons here (no systemd); callers start the binaries themselves.

    Raises:
        ToolsUnavailable: not root, or apt-get failed; the message names the command to run.
    """
    found = {name: _which(name) for name in binaries}
    missing = [name for name, path in found.items() if path is None]
    if not missing:
        return found  # type: ignore[return-value]
    command = " ".join(install_command(packages))
    if os.geteuid() != 0:
        raise ToolsUnavailable(
            f"missing {', '.join(missing)}; {purpose} needs the real binaries. "
            f"Install them with: sudo apt-get update && sudo {command}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = run(list(install_command(packages)), env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        update = run(["apt-get", "update"], env=env, capture_output=True, text=True, check=False)
        done = run(list(install_command(packages)), env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ToolsUnavailable(
                f"`{command}` failed (exit {done.returncode}) after `apt-get update` (exit {update.returncode}):\n"
                f"{(update.stderr or '')[-1500:]}\n{(done.stdout or '')[-1500:]}\n{(done.stderr or '')[-1500:]}"
            )
    found = {name: _which(name) for name in binaries}
    still = [name for name, path in found.items() if path is None]
    if still:
        raise ToolsUnavailable(f"`{command}` succeeded but {', '.join(still)} is still not on PATH ({os.environ.get('PATH')})")
    return found  # type: ignore[return-value]


def ensure_tools(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> Tools:
    """The monitoring binaries (prometheus, promtool, alertmanager, pushgateway), apt-installed when missing.

    Raises:
        ToolsUnavailable: see :func:`apt_binaries`.
    """
    apt_binaries(APT_PACKAGES, TOOL_BINARIES, "the monitoring stack (make up, tests/deploy)", run)
    tools = find_tools()
    if tools is None:  # a binary vanished between the two lookups
        raise ToolsUnavailable(f"{', '.join(TOOL_BINARIES)} not all on PATH ({os.environ.get('PATH')})")
    return tools


# ------------------------------------------------------------------------------------------------
# process identity (/proc) and stopping a process tree
# ------------------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (after the command name, which may hold spaces), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), None when no such process runs or it is a zombie.

    Why this identifies a process: a pid is reused once its process is gone, but the pair (pid, start
    time) is unique within a boot, and it survives ``exec`` (``serve.sh`` execs ``bentoml``, a Python
    entry point shows up as ``python .../prefect``), which a comparison of command lines would not."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def boot_id() -> str:
    """This boot's id: start times are only comparable within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process this user can see."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``pid``.

    Why: some children leave the process group — BentoML's workers and Ray's daemons start their own
    sessions — so signalling the group alone can orphan them when the leader dies first."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if (start := process_start_time(child)) is not None:
                out.append((child, start))
                todo.append(child)
    return out


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _wait(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop_tree(pid: int, exited: Callable[[], bool], timeout: float = STOP_TIMEOUT) -> None:
    """Stop the process group led by ``pid`` and every descendant of ``pid``, gently first.

    SIGTERM to the group; SIGKILL to it after ``timeout`` s or as soon as the leader is gone (stragglers
    that ignored SIGTERM); then SIGTERM, and SIGKILL after a few seconds, to the descendants outside the
    group that still run with the start time seen before (so a reused pid is never signalled).
    ``exited`` says whether the leader has exited (for a child: ``Popen.poll``, which also reaps it).
    """
    tree = descendants(pid)
    if _signal_group(pid, signal.SIGTERM) and not _wait(exited, timeout):
        _signal_group(pid, signal.SIGKILL)
        _wait(exited, 10.0)
    _signal_group(pid, signal.SIGKILL)
    survivors = [(p, start) for p, start in tree if process_start_time(p) == start]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p, start in survivors:
            if process_start_time(p) == start:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
        _wait(lambda: all(process_start_time(p) != start for p, start in survivors), 5.0)


# ------------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------------
@dataclass
class Proc:
    """One process in its own session (so its whole group can be stopped), logging to a file.

    ``ready`` is an HTTP path polled on ``url`` until it answers 2xx, or a predicate for processes
    without an HTTP endpoint; the log's tail is attached to every failure so a broken start says why.
    The command runs in ``cwd`` (default: the repository root, where ``configs/`` and ``deploy/`` are)
    with the interpreter's bin folder first on PATH: the deploy/bin scripts call python / bentoml /
    prefect by name, exactly as in the container where the image's venv is on PATH.
    """

    name: str
    cmd: Sequence[str]
    log: Path
    port: int | None
    ready: str | Callable[[], bool] = "/"
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = field(default_factory=repo_root)
    timeout: float = 60.0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ValueError(f"{self.name} listens on no port")
        return f"http://127.0.0.1:{self.port}"

    @property
    def ready_url(self) -> str | None:
        return self.url + self.ready if isinstance(self.ready, str) else None

    def spawn(self) -> Proc:
        """Start the process and return at once (see :meth:`wait_ready`)."""
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **self.env}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                list(self.cmd), cwd=self.cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def start(self) -> Proc:
        """Spawn and wait until ready; stopped again when it never gets there."""
        self.spawn()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        if callable(self.ready):
            return self.ready()
        try:
            return httpx.get(self.url + self.ready, timeout=2).is_success
        except httpx.HTTPError:
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"{self.name} exited with {code} before it was ready:\n{self.tail()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        where = self.ready_url or "its readiness check"
        raise TimeoutError(f"{self.name} not ready ({where}) after {self.timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop its group and descendants (:func:`stop_tree`): SIGTERM, SIGKILL after ``timeout``; idempotent."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        stop_tree(proc.pid, lambda: proc.poll() is not None, timeout)

    def __enter__(self) -> Proc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------
# the shipped Prometheus / Alertmanager configurations, pointed at local processes
# ------------------------------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def write_yaml(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def local_prometheus_config(
    targets: Mapping[str, str],
    rule_files: Sequence[Path],
    alertmanager: str | None = None,
    interval: str | None = None,
    repo: Path | None = None,
) -> dict[str, Any]:
    """The shipped ``deploy/prometheus/prometheus.yml`` (of ``repo``) rewritten for local processes.

    ``targets`` maps a shipped job name to a ``host:port``; jobs not named there are dropped (their
    components do not run locally). Job names, metrics paths, labels and ``honor_labels`` stay as
    shipped, so what the alert rules select on is what production has. ``interval`` (e.g. ``1s`` in
    tests, so rules and ``rate()`` windows fill in seconds) replaces every scrape and evaluation
    interval; None keeps the shipped ones. Scrape credentials of the compose network (``basic_auth``
    for the Prefect API) are dropped: the local processes listen on 127.0.0.1 without them.
    """
    shipped = load_yaml((repo or repo_root()) / "deploy" / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in shipped["scrape_configs"]}
    unknown = set(targets) - set(jobs)
    if unknown:
        raise KeyError(f"no scrape job {sorted(unknown)} in deploy/prometheus/prometheus.yml (has {sorted(jobs)})")
    config = copy.deepcopy(shipped)
    if interval:
        config["global"] = {**shipped.get("global", {}), "scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(p) for p in rule_files]
    scrape = []
    for name, target in targets.items():
        job = copy.deepcopy(jobs[name])
        job.pop("basic_auth", None)
        if interval:
            job["scrape_interval"] = interval
            job.pop("scrape_timeout", None)
        labels = job["static_configs"][0].get("labels", {}) if job.get("static_configs") else {}
        job["static_configs"] = [{"targets": [target], **({"labels": labels} if labels else {})}]
        scrape.append(job)
    config["scrape_configs"] = scrape
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    else:
        config.pop("alerting", None)
    return config


def local_alertmanager_config(
    webhook_url: str, token_file: Path, wait: str | None = None, repo: Path | None = None
) -> dict[str, Any]:
    """The shipped ``deploy/alertmanager/alertmanager.yml`` with its webhook pointed at ``webhook_url``
    and its bearer secret read from ``token_file`` (the receiver's ``ROBUSTDX_ALERT_TOKEN_FILE``).

    ``wait`` (e.g. ``1s`` in tests) replaces every ``group_wait`` / ``group_interval``; None keeps the
    shipped ones. Routes, matchers and receivers stay as shipped, so ``retrain="true"`` alerts are routed
    as in production.
    """
    path = (repo or repo_root()) / "deploy" / "alertmanager" / "alertmanager.yml"
    config = copy.deepcopy(load_yaml(path))
    hooks = [hook for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])]
    if len(hooks) != 1:
        raise ValueError(f"expected one webhook receiver in {path}, found {len(hooks)}")
    hooks[0]["url"] = webhook_url
    hooks[0]["http_config"]["authorization"]["credentials_file"] = str(token_file)

    def shorten(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = wait
        for child in route.get("routes", []):
            shorten(child)

    if wait:
        shorten(config["route"])
    return config


def prometheus_argv(
    tools: Tools, config: Path, data: Path, port: int, retention: str = "15d", log_level: str = "info"
) -> list[str]:
    return [
        str(tools.prometheus),
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.retention.time={retention}",
        f"--log.level={log_level}",
    ]


def pushgateway_argv(tools: Tools, port: int, persistence: Path | None = None, log_level: str = "info") -> list[str]:
    """The Pushgateway; with ``persistence`` the pushed metrics survive a restart (as the compose volume does)."""
    keep = [f"--persistence.file={persistence}"] if persistence else []
    return [str(tools.pushgateway), f"--web.listen-address=127.0.0.1:{port}", *keep, f"--log.level={log_level}"]


def alertmanager_argv(tools: Tools, config: Path, data: Path, port: int, log_level: str = "info") -> list[str]:
    """The Alertmanager with clustering switched off (``--cluster.listen-address=``): it then neither binds
    the gossip port 9094 nor waits for peers before sending notifications."""
    return [
        str(tools.alertmanager),
        f"--config.file={config}",
        f"--storage.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        f"--log.level={log_level}",
    ]


# ------------------------------------------------------------------------------------------------
# stack state: <root>/stack.json
# ------------------------------------------------------------------------------------------------
class StackError(RuntimeError):
    """``up`` / ``down`` cannot proceed; the message says why and what to do."""


@dataclass(frozen=True)
class Record:
    """One started process as ``down`` and ``status`` need it."""

    name: str
    pid: int
    argv: list[str]
    log: str
    url: str | None
    ready_url: str | None
    start_time: int | None
    boot_id: str

    @classmethod
    def of(cls, proc: Proc, ready_url: str | None = None) -> Record:
        """The record of a spawned ``proc``; ``ready_url`` defaults to its HTTP readiness path."""
        if proc.proc is None:
            raise ValueError(f"{proc.name} was not started")
        pid = proc.proc.pid
        return cls(
            name=proc.name,
            pid=pid,
            argv=list(proc.cmd),
            log=str(proc.log),
            url=proc.url if proc.port is not None else None,
            ready_url=ready_url or proc.ready_url,
            start_time=process_start_time(pid),
            boot_id=boot_id(),
        )

    def alive(self) -> bool:
        """Still the process that was started: same boot, same pid, same start time."""
        return self.boot_id == boot_id() and self.start_time is not None and process_start_time(self.pid) == self.start_time

    def ready(self) -> bool:
        if not self.ready_url:
            return self.alive()
        try:
            return httpx.get(self.ready_url, timeout=2).is_success
        except httpx.HTTPError:
            return False


def state_path(root: Path) -> Path:
    return root / STATE_FILE


def read_records(root: Path) -> list[Record]:
    """The recorded processes (empty when no stack.json)."""
    try:
        raw = json.loads(state_path(root).read_text())
        return [Record(**item) for item in raw["components"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
        raise StackError(f"{state_path(root)}: unreadable ({err}); remove it once nothing of the stack runs") from None


def write_records(root: Path, records: Sequence[Record]) -> None:
    """Replace stack.json atomically: ``down`` may read it while ``up`` is still writing."""
    path = state_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"root": str(root), "components": [asdict(r) for r in records]}, indent=2))
    os.replace(tmp, path)


def stop_record(record: Record, timeout: float = STOP_TIMEOUT) -> str:
    """Stop one recorded process tree if it is still the one ``up`` started; what happened, in words."""
    if record.start_time is None or record.boot_id != boot_id():
        return f"{record.name}: pid {record.pid} was recorded in another boot or without a start time, left alone"
    now = process_start_time(record.pid)
    if now is None:
        return f"{record.name} (pid {record.pid}) had already exited"
    if now != record.start_time:
        return f"{record.name}: pid {record.pid} now belongs to another process, left alone"
    stop_tree(record.pid, lambda: not record.alive(), timeout)
    return f"stopped {record.name} (pid {record.pid})"


def down(root: Path, timeout: float = STOP_TIMEOUT, out: Callable[[str], None] = print) -> int:
    """Stop every recorded process in reverse start order, then remove stack.json; idempotent."""
    records = read_records(root)
    if not records:
        out(f"nothing to stop (no {state_path(root)})")
        return 0
    for record in reversed(records):
        out(stop_record(record, timeout))
    state_path(root).unlink(missing_ok=True)
    return 0


def status(root: Path, out: Callable[[str], None] = print) -> int:
    """Each recorded component: pid, alive, ready, URL. Exit 0 when all are alive and ready, else 1."""
    records = read_records(root)
    if not records:
        out(f"not up (no {state_path(root)})")
        return 1
    rows = [("component", "pid", "alive", "ready", "url")]
    healthy = True
    for r in records:
        alive = r.alive()
        ready = alive and r.ready()
        healthy &= ready
        rows.append((r.name, str(r.pid), "yes" if alive else "NO", "yes" if ready else "NO", r.url or "-"))
    out(_table(rows))
    return 0 if healthy else 1


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


# ------------------------------------------------------------------------------------------------
# up
# ------------------------------------------------------------------------------------------------
def port_busy(port: int) -> bool:
    """Whether 127.0.0.1:``port`` cannot be bound (SO_REUSEADDR: sockets in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


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


class Interrupted(BaseException):
    """SIGTERM / SIGHUP during ``up``: treated like Ctrl-C, so what was started is stopped again."""


def _interrupt(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


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
        StackError: ``alive()`` turned false (the process running the flow died) or ``timeout`` passed.
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
                raise StackError(f"the process serving the deployments died while {run['name']} was {state.lower()}")
            if elapsed > timeout:
                raise StackError(f"{run['name']} still {state.lower()} after {timeout:.0f} s")
            time.sleep(2.0)


class _Launcher:
    """Starts components one by one, recording each in stack.json right after it is spawned (so ``down``
    can stop a half-started stack), and stops them all again when ``up`` fails. ``current`` is the
    component whose log explains a failure (the one starting, or the deployments during the first retrain)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[Proc] = []
        self.ready_urls: list[str | None] = []
        self.current: Proc | None = None

    def start(self, proc: Proc, ready_url: str | None = None) -> Proc:
        """Spawn, record, wait until ready. ``ready_url``: what ``status`` polls when ``proc.ready`` is no path."""
        print(f"starting {proc.name} ...", flush=True)
        t0 = time.monotonic()
        self.current = proc
        proc.log.parent.mkdir(parents=True, exist_ok=True)
        with open(proc.log, "a") as fh:  # logs accumulate over restarts: mark where this start begins
            fh.write(f"\n{START_MARK} {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC\n")
        proc.spawn()
        self.procs.append(proc)
        self.ready_urls.append(ready_url or proc.ready_url)
        write_records(self.root, [Record.of(p, url) for p, url in zip(self.procs, self.ready_urls, strict=True)])
        proc.wait_ready()
        where = f" on {proc.url}" if proc.port is not None else ""
        print(f"  {proc.name} ready{where} in {time.monotonic() - t0:.1f} s", flush=True)
        return proc

    def fail(self, err: BaseException) -> None:
        """Report ``err`` (with the current component's log tail unless the message has it) and stop everything."""
        print(f"\nup failed: {err}", file=sys.stderr)
        tail = self.current.tail().rpartition(START_MARK)[2].strip() if self.current else ""
        if tail and tail[-500:] not in str(err):
            print(f"--- last lines of {self.current.log} ---\n{tail}", file=sys.stderr)  # type: ignore[union-attr]
        print("stopping what was started ...", file=sys.stderr)
        for proc in reversed(self.procs):
            proc.stop()
        state_path(self.root).unlink(missing_ok=True)


@dataclass(frozen=True)
class StackAddresses:
    """Where a stack's components are: its state folder and ports (also what tests of a running stack need)."""

    root: Path
    ports: Mapping[str, int]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def api(self) -> str:
        return f"{self.url('prefect')}/api"

    @property
    def home(self) -> Path:
        """BENTOML_HOME: the model store and the production pointer."""
        return self.root / "bentoml"


@dataclass(frozen=True)
class StackPlan(StackAddresses):
    """The command, environment and log of every component of one stack (nothing is started here)."""

    repo: Path
    tools: Tools
    token: str
    fast_alerts: bool = False

    def _proc(self, name: str, cmd: Sequence[str], **kw: Any) -> Proc:
        return Proc(name, cmd, self.root / "logs" / f"{name}.log", self.ports.get(name), cwd=self.repo, **kw)

    @property
    def _prefect_env(self) -> dict[str, str]:
        return {
            "PREFECT_HOME": str(self.root / "prefect"),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    @property
    def _bentoml_env(self) -> dict[str, str]:
        return {"BENTOML_HOME": str(self.home), "BENTOML_DO_NOT_TRACK": "True", "ROBUSTDX_ADMIN_TOKEN": self.token}

    @property
    def alert_token_file(self) -> Path:
        """The receiver's bearer secret (created with the admin token by :func:`admin_token`)."""
        return self.root / ALERT_TOKEN_FILE

    @property
    def _wait(self) -> str | None:
        return FAST_INTERVAL if self.fast_alerts else None

    def prefect(self) -> Proc:
        """The server and its UI; its API metrics feed the shipped prefect-server scrape job."""
        argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.ports["prefect"])]
        env = {**self._prefect_env, "PREFECT_SERVER_METRICS_ENABLED": "true"}
        return self._proc("prefect", argv, ready="/api/health", env=env, timeout=120)

    def pushgateway(self) -> Proc:
        argv = pushgateway_argv(self.tools, self.ports["pushgateway"], self.root / "pushgateway" / "metrics.db")
        return self._proc("pushgateway", argv, ready="/-/ready")

    def alertmanager(self) -> Proc:
        config = local_alertmanager_config(f"{self.url('receiver')}/alerts", self.alert_token_file, self._wait, self.repo)
        path = write_yaml(self.root / "alertmanager" / "alertmanager.yml", config)
        argv = alertmanager_argv(self.tools, path, self.root / "alertmanager" / "data", self.ports["alertmanager"])
        return self._proc("alertmanager", argv, ready="/-/ready")

    def receiver(self) -> Proc:
        """deploy/bin/alert-receiver.sh: a retrain alert from Alertmanager becomes a Prefect event."""
        env = {
            **self._prefect_env,
            "ROBUSTDX_ALERTS_HOST": "127.0.0.1",
            "ROBUSTDX_ALERTS_PORT": str(self.ports["receiver"]),
            "ROBUSTDX_ALERT_TOKEN_FILE": str(self.alert_token_file),
        }
        return self._proc("receiver", [str(self.repo / "deploy" / "bin" / "alert-receiver.sh")], ready="/healthz", env=env)

    def prometheus(self) -> Proc:
        """The shipped jobs (all but ray) pointed at the local ports, the shipped rules, alerts to the Alertmanager."""
        targets = {SCRAPE_JOBS[name]: f"127.0.0.1:{port}" for name, port in self.ports.items()}
        rules = sorted((self.repo / "deploy" / "prometheus" / "rules").glob("*.yml"))
        am = f"127.0.0.1:{self.ports['alertmanager']}"
        path = write_yaml(
            self.root / "prometheus" / "prometheus.yml", local_prometheus_config(targets, rules, am, self._wait, self.repo)
        )
        argv = prometheus_argv(self.tools, path, self.root / "prometheus" / "data", self.ports["prometheus"])
        return self._proc("prometheus", argv, ready="/-/ready")

    def deploy(self, sweep: Path, num_samples: int | None, run_overrides: Sequence[str]) -> Proc:
        """``robustdx deploy``: serves both retrain deployments; ready once a runner polled them (:func:`deployments_served`)."""
        argv = [sys.executable, "-m", "robustdx.cli", "deploy", "--sweep", str(sweep)]
        argv += ["--num-samples", str(num_samples)] if num_samples else []
        argv += [arg for override in run_overrides for arg in ("--run-set", override)]
        argv += ["--sweep-set", f"storage_path={self.root / 'sweeps'}"]  # every output of the stack under its root
        argv += ["--home", str(self.home), "--output-dir", str(self.root / "retrain"), "--service-url", self.url("service")]
        env = {**self._prefect_env, **self._bentoml_env, "ROBUSTDX_PUSHGATEWAY": f"127.0.0.1:{self.ports['pushgateway']}"}
        since, api = datetime.now(UTC), self.api
        return self._proc("deploy", argv, ready=lambda: deployments_served(api, since), env=env, timeout=180)

    def service(self) -> Proc:
        """deploy/bin/serve.sh: ``bentoml serve`` of the production model in BENTOML_HOME."""
        env = {**self._bentoml_env, "ROBUSTDX_SERVE_HOST": "127.0.0.1", "ROBUSTDX_SERVE_PORT": str(self.ports["service"])}
        return self._proc("service", [str(self.repo / "deploy" / "bin" / "serve.sh")], ready="/readyz", env=env, timeout=240)


def check_can_start(root: Path, ports: Mapping[str, int]) -> None:
    """Refuse a second stack on the same root, and ports another process holds (named, with their component).

    Raises:
        StackError: already up, a port busy, or one port given to two components.
    """
    live = [r.name for r in read_records(root) if r.alive()]
    if live:
        raise StackError(f"already up ({', '.join(live)} running, see {state_path(root)}); make down first")
    twice = sorted({port for port in ports.values() if list(ports.values()).count(port) > 1})
    if twice:
        raise StackError(f"port {', '.join(map(str, twice))} given to more than one component: {dict(ports)}")
    taken = [f"{port} ({name})" for name, port in ports.items() if port_busy(port)]
    if taken:
        raise StackError(f"port {', '.join(taken)} busy; free it or choose another with --port NAME=PORT")


def up(opts: UpOptions) -> int:
    """Start the stack (see the module docstring); 0 when everything is ready, else 1 with nothing left running.

    Raises:
        StackError: refused before anything started (already up, port busy, bad sweep, missing data).
        ToolsUnavailable: the monitoring binaries are missing and cannot be installed.
    """
    root, repo = opts.root.resolve(), repo_root()
    sweep = opts.sweep.resolve()
    check_can_start(root, opts.ports)
    state_path(root).unlink(missing_ok=True)  # the record of a stack that is gone
    tools = ensure_tools()
    overrides = prepare_data(sweep, opts.run_set, opts.data.resolve() if opts.data else None, repo)
    admin_token(root, ALERT_TOKEN_FILE)
    plan = StackPlan(root, dict(opts.ports), repo, tools, admin_token(root), opts.fast_alerts)
    launcher = _Launcher(root)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        # Prefect first (the receiver and the deployments talk to it); the service last (it needs a model)
        for proc in (plan.prefect(), plan.pushgateway(), plan.alertmanager(), plan.receiver(), plan.prometheus()):
            launcher.start(proc)
        deploy = launcher.start(
            plan.deploy(sweep, opts.num_samples, overrides), ready_url=f"{plan.api}/deployments/name/{FIRST_MODEL_DEPLOYMENT}"
        )
        first_model(plan, deploy, opts.first_model_timeout)
        launcher.start(plan.service())
    except (Exception, KeyboardInterrupt, Interrupted) as err:
        launcher.fail(err)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_summary(plan, {p.name: p for p in launcher.procs})
    return 0


def first_model(plan: StackPlan, deploy: Proc, timeout: float) -> None:
    """Promote a first model through ``retrain/nightly`` unless the stack's BentoML home already has one.

    Raises:
        StackError: the run did not complete, promoted nothing, or the deployments' process died.
    """
    from robustdx.core.release.pointer import read_production

    if read_production(plan.home) is not None:
        return
    run = run_deployment(plan.api, FIRST_MODEL_DEPLOYMENT)
    print(
        f"no model in {plan.home} yet: retraining one ({FIRST_MODEL_DEPLOYMENT} run {run['name']}, "
        f"{plan.url('prefect')}{UI_FLOW_RUN.format(id=run['id'])}; the flow's output goes to {deploy.log})",
        flush=True,
    )
    t0 = time.monotonic()
    try:
        done = wait_flow_run(plan.api, run["id"], timeout, alive=lambda: deploy.proc is not None and deploy.proc.poll() is None)
    except BaseException:
        # else the run stays scheduled in Prefect's database, the next `up` runs it, and the deployment's
        # limit of one run at a time cancels the first-model run that `up` creates then
        cancel_flow_run(plan.api, run["id"], "localstack up stopped before this run finished")
        raise
    state = done["state"]["type"]
    if state != "COMPLETED":
        raise StackError(f"the first retrain ended {state.lower()}: {done['state'].get('message') or ''}\n{deploy.tail()}")
    if read_production(plan.home) is None:
        raise StackError(
            f"the first retrain completed but promoted nothing into {plan.home} (see its promotion-decision artifact)"
        )
    print(f"  first model promoted in {time.monotonic() - t0:.0f} s", flush=True)


def print_summary(plan: StackPlan, procs: Mapping[str, Proc]) -> None:
    """Where to look: a URL and a log per component."""
    rows = [
        ("component", "URL", "log"),
        ("Prefect UI", plan.url("prefect"), str(procs["prefect"].log)),
        ("retrain deployments", plan.url("prefect") + UI_DEPLOYMENTS, str(procs["deploy"].log)),
        ("service (Swagger UI)", plan.url("service"), str(procs["service"].log)),
        ("Prometheus", plan.url("prometheus"), str(procs["prometheus"].log)),
        ("Alertmanager", plan.url("alertmanager"), str(procs["alertmanager"].log)),
        ("Pushgateway", plan.url("pushgateway"), str(procs["pushgateway"].log)),
        ("alert receiver", f"{plan.url('receiver')}/healthz", str(procs["receiver"].log)),
    ]
    print(f"\n{_table(rows)}")
    print(
        f"\nadmin token of POST /admin/reload: {plan.root / TOKEN_FILE}; state: {state_path(plan.root)}\n"
        "make down stops it (robustdx stack down)"
    )


# ------------------------------------------------------------------------------------------------
# option parsing shared by the command line (``robustdx stack``)
# ------------------------------------------------------------------------------------------------
def parse_port(text: str) -> tuple[str, int]:
    """``NAME=PORT`` → (name, port), with the name one of the stack's components.

    Raises:
        ValueError: not NAME=PORT, an unknown name, or a port outside 1..65535.
    """
    name, sep, value = text.partition("=")
    if not sep or name not in DEFAULT_PORTS or not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"expected NAME=PORT with NAME one of {', '.join(DEFAULT_PORTS)}, got {text!r}")
    return name, int(value)
