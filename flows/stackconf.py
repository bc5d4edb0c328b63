"""What ``make up`` runs, as data: the program table, the ``supervisord.conf`` it is rendered into, and the
shipped Prometheus / Alertmanager configurations pointed at the local processes. Nothing here starts a
process (:mod:`robustdx.flows.localstack` does, through supervisord).

==============  =====  ========  ===========================================================================
program         port   priority  command
==============  =====  ========  ===========================================================================
prefect         4200   10        ``prefect server start`` — the UI and the API
mlflow          5000   20        ``mlflow server`` — tracking server and UI over ``--mlflow-store``
pushgateway     9091   30        ``prometheus-pushgateway`` (flows push their outcome there)
alertmanager    9093   40        ``prometheus-alertmanager``, the shipped routing, its webhook → the receiver
receiver        9095   50        ``deploy/bin/alert-receiver.sh``: a retrain alert becomes a Prefect event
prometheus      9090   60        ``prometheus``: the shipped jobs and rules; no Ray job (Ray runs in the flows)
deploy          —      70        ``robustdx deploy``: serves ``retrain/nightly`` and ``retrain/on-drift``
service         3000   80        ``deploy/bin/serve.sh`` (``bentoml serve`` of the production model)
==============  =====  ========  ===========================================================================

The binaries of the monitoring programs are looked up, never installed: installing Debian packages is
set-up, done once by ``deploy/bin/install-tools.sh monitoring`` (``make up`` runs it).
"""

from __future__ import annotations

import configparser
import copy
import hashlib
import io
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_ROOT = Path("runs/stack")
DEFAULT_MLFLOW_STORE = Path("runs/mlflow")  # flows/tracking.py's default store: make up's UI shows CLI runs too
CONF_FILE = "supervisord.conf"
TOKEN_FILE = "admin-token"
ALERT_TOKEN_FILE = "alert-token"  # Alertmanager -> receiver bearer secret (credentials_file)
# program -> default port (the compose stack's host ports, so URLs in the docs hold for both)
DEFAULT_PORTS: dict[str, int] = {
    "prefect": 4200,
    "mlflow": 5000,
    "service": 3000,
    "prometheus": 9090,
    "alertmanager": 9093,
    "pushgateway": 9091,
    "receiver": 9095,
}
# program -> its scrape job in deploy/prometheus/prometheus.yml (ray is dropped: no Ray head; mlflow is not scraped)
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
INSTALL_SCRIPT = "deploy/bin/install-tools.sh"
TOOL_BINARIES = ("prometheus", "promtool", "prometheus-alertmanager", "prometheus-pushgateway")
SOCKET_LIMIT = 100  # AF_UNIX paths: 108 bytes on Linux, with a margin
STOP_WAIT = 15  # seconds between SIGTERM and SIGKILL (supervisord's stopwaitsecs)


def repo_root() -> Path:
    """The source checkout this module runs from (it holds ``deploy/``), else the working directory.

    Why not a constant: an installed wheel has no ``deploy/`` next to the package, and then the scripts
    and configs can only come from a checkout the user runs in."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "deploy").is_dir() else Path.cwd()


# ------------------------------------------------------------------------------------------------
# system tools (looked up; deploy/bin/install-tools.sh installs them)
# ------------------------------------------------------------------------------------------------
class ToolsUnavailable(RuntimeError):
    """Required binaries are missing; the message names the set-up script that installs them."""


@dataclass(frozen=True)
class Tools:
    """Paths of the monitoring binaries (``amtool`` ships with the Alertmanager package when present)."""

    prometheus: Path
    promtool: Path
    alertmanager: Path
    pushgateway: Path
    amtool: Path | None


def find_tools() -> Tools:
    """The installed monitoring binaries.

    Raises:
        ToolsUnavailable: one is missing; the message names ``deploy/bin/install-tools.sh monitoring``.
    """
    paths = {name: shutil.which(name) for name in TOOL_BINARIES}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise ToolsUnavailable(
            f"missing {', '.join(missing)} (the monitoring programs of make up); install them once with "
            f"`sudo {INSTALL_SCRIPT} monitoring` (Debian packages prometheus, prometheus-alertmanager, prometheus-pushgateway)"
        )
    amtool = shutil.which("amtool")
    return Tools(
        prometheus=Path(paths["prometheus"]),  # type: ignore[arg-type]
        promtool=Path(paths["promtool"]),  # type: ignore[arg-type]
        alertmanager=Path(paths["prometheus-alertmanager"]),  # type: ignore[arg-type]
        pushgateway=Path(paths["prometheus-pushgateway"]),  # type: ignore[arg-type]
        amtool=Path(amtool) if amtool else None,
    )


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
# the program table
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Program:
    """One supervisord program: ``ready`` is the URL that answers 2xx once it serves (None: running is enough)."""

    name: str
    command: tuple[str, ...]
    priority: int
    port: int | None = None
    ready: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    startsecs: int = 1  # RUNNING only after surviving this long; a crash before is a failed start
    timeout: float = 60.0  # seconds to become ready after RUNNING


@dataclass(frozen=True)
class StackAddresses:
    """Where a stack's programs are: its state folder and ports (also what tests of a running stack need)."""

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

    @property
    def conf(self) -> Path:
        return self.root / CONF_FILE

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"


@dataclass(frozen=True)
class StackPlan(StackAddresses):
    """Every program of one stack (:meth:`programs`); nothing is started here, only config files written."""

    repo: Path
    tools: Tools
    token: str
    mlflow_store: Path = DEFAULT_MLFLOW_STORE
    fast_alerts: bool = False
    sweep: Path = Path("configs/sweeps/demo.yaml")
    num_samples: int | None = None
    run_overrides: Sequence[str] = ()

    @property
    def prefect_env(self) -> dict[str, str]:
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
        return self.root / ALERT_TOKEN_FILE

    @property
    def _wait(self) -> str | None:
        return FAST_INTERVAL if self.fast_alerts else None

    def programs(self) -> list[Program]:
        """The table, in start (priority) order; writes the Prometheus and Alertmanager configs it points at."""
        ports, root, py = self.ports, self.root, sys.executable
        am_config = write_yaml(
            root / "alertmanager" / "alertmanager.yml",
            local_alertmanager_config(f"{self.url('receiver')}/alerts", self.alert_token_file, self._wait, self.repo),
        )
        targets = {SCRAPE_JOBS[name]: f"127.0.0.1:{port}" for name, port in ports.items() if name in SCRAPE_JOBS}
        rules = sorted((self.repo / "deploy" / "prometheus" / "rules").glob("*.yml"))
        prom_config = write_yaml(
            root / "prometheus" / "prometheus.yml",
            local_prometheus_config(targets, rules, f"127.0.0.1:{ports['alertmanager']}", self._wait, self.repo),
        )
        store = self.mlflow_store
        deploy = [py, "-m", "robustdx.cli", "deploy", "--sweep", str(self.sweep)]
        deploy += ["--num-samples", str(self.num_samples)] if self.num_samples else []
        deploy += [arg for override in self.run_overrides for arg in ("--run-set", override)]
        deploy += ["--sweep-set", f"storage_path={root / 'sweeps'}"]  # every output of the stack under its root
        deploy += ["--home", str(self.home), "--output-dir", str(root / "retrain"), "--service-url", self.url("service")]
        bin_ = self.repo / "deploy" / "bin"
        return [
            Program(
                "prefect",
                (py, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])),
                10,
                ports["prefect"],
                f"{self.api}/health",
                {**self.prefect_env, "PREFECT_SERVER_METRICS_ENABLED": "true"},
                timeout=120,
            ),
            Program(
                "mlflow",
                (
                    str(Path(py).with_name("mlflow")),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{store / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(store / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ports["mlflow"]),
                    "--workers",
                    "1",
                ),
                20,
                ports["mlflow"],
                f"{self.url('mlflow')}/health",
                timeout=120,
            ),
            Program(
                "pushgateway",
                tuple(pushgateway_argv(self.tools, ports["pushgateway"], root / "pushgateway" / "metrics.db")),
                30,
                ports["pushgateway"],
                f"{self.url('pushgateway')}/-/ready",
            ),
            Program(
                "alertmanager",
                tuple(alertmanager_argv(self.tools, am_config, root / "alertmanager" / "data", ports["alertmanager"])),
                40,
                ports["alertmanager"],
                f"{self.url('alertmanager')}/-/ready",
            ),
            Program(
                "receiver",
                (str(bin_ / "alert-receiver.sh"),),
                50,
                ports["receiver"],
                f"{self.url('receiver')}/healthz",
                {
                    **self.prefect_env,
                    "ROBUSTDX_ALERTS_HOST": "127.0.0.1",
                    "ROBUSTDX_ALERTS_PORT": str(ports["receiver"]),
                    "ROBUSTDX_ALERT_TOKEN_FILE": str(self.alert_token_file),
                },
            ),
            Program(
                "prometheus",
                tuple(prometheus_argv(self.tools, prom_config, root / "prometheus" / "data", ports["prometheus"])),
                60,
                ports["prometheus"],
                f"{self.url('prometheus')}/-/ready",
            ),
            Program(  # ready once a runner polls both deployments (localstack.deployments_served)
                "deploy",
                tuple(deploy),
                70,
                None,
                f"{self.api}/deployments/name/{DEPLOYMENTS[-1]}",
                {
                    **self.prefect_env,
                    **self._bentoml_env,
                    "ROBUSTDX_PUSHGATEWAY": f"127.0.0.1:{ports['pushgateway']}",
                    "MLFLOW_TRACKING_URI": self.url("mlflow"),
                },
                timeout=180,
            ),
            Program(
                "service",
                (str(bin_ / "serve.sh"),),
                80,
                ports["service"],
                f"{self.url('service')}/readyz",
                {**self._bentoml_env, "ROBUSTDX_SERVE_HOST": "127.0.0.1", "ROBUSTDX_SERVE_PORT": str(ports["service"])},
                timeout=240,
            ),
        ]


# ------------------------------------------------------------------------------------------------
# supervisord.conf
# ------------------------------------------------------------------------------------------------
def socket_path(root: Path) -> Path:
    """supervisord's control socket: ``<root>/supervisor.sock``, or, when that path is too long for AF_UNIX
    (deep temporary folders), ``$TMPDIR/robustdx-<hash of root>.sock`` — still one per root."""
    path = root.resolve() / "supervisor.sock"
    if len(str(path)) <= SOCKET_LIMIT:
        return path
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"robustdx-{digest}.sock"
    if len(str(short)) > SOCKET_LIMIT:
        raise ValueError(f"no socket path under {SOCKET_LIMIT} characters for {root}: set TMPDIR to a short folder")
    return short


def _conf_value(text: str) -> str:
    """A value as supervisord reads it: it expands ``%(name)s``, so a literal ``%`` is doubled."""
    return text.replace("%", "%%")


def _env_value(value: str) -> str:
    """A value of ``environment=``: supervisord splits it with a non-POSIX shlex, which knows no escapes."""
    if '"' in value or "'" in value:
        raise ValueError(f"supervisord cannot pass quotes in an environment value: {value!r}")
    return f'"{value}"'


def render_conf(plan: StackAddresses, programs: Sequence[Program], path_env: str, directory: Path) -> str:
    """``supervisord.conf`` for ``programs``: a daemon with its pid, log and socket under the plan's root,
    one ``[program:x]`` each, started by name (``autostart=false``, see :func:`robustdx.flows.localstack.up`)."""
    root = plan.root.resolve()
    conf = configparser.RawConfigParser()
    conf.optionxform = str  # type: ignore[assignment,method-assign]  # keep keys as written
    sock = socket_path(root)
    conf["unix_http_server"] = {"file": _conf_value(str(sock)), "chmod": "0700"}
    conf["supervisord"] = {
        "nodaemon": "false",
        "logfile": _conf_value(str(root / "logs" / "supervisord.log")),
        "pidfile": _conf_value(str(root / "supervisord.pid")),
        "childlogdir": _conf_value(str(root / "logs")),
        "directory": _conf_value(str(directory)),
        "identifier": "robustdx",
        "environment": f"PATH={_env_value(_conf_value(path_env))}",
    }
    conf["rpcinterface:supervisor"] = {"supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"}
    conf["supervisorctl"] = {"serverurl": _conf_value(f"unix://{sock}")}
    for p in programs:
        section = {
            "command": _conf_value(shlex.join(p.command)),
            "directory": _conf_value(str(directory)),
            "priority": str(p.priority),
            "autostart": "false",
            "autorestart": "unexpected",  # a crash after start-up is restarted; `stop` is not
            "exitcodes": "0",
            "startsecs": str(p.startsecs),
            "startretries": "0",  # a failed start is FATAL at once: `up` reports it instead of retrying
            "stopsignal": "TERM",
            "stopwaitsecs": str(STOP_WAIT),
            "stopasgroup": "true",
            "killasgroup": "true",
            "redirect_stderr": "true",
            "stdout_logfile": _conf_value(str(root / "logs" / f"{p.name}.log")),
        }
        if p.env:
            section["environment"] = ",".join(f"{k}={_env_value(_conf_value(v))}" for k, v in p.env.items())
        conf[f"program:{p.name}"] = section
    out = io.StringIO()
    out.write("; written by `robustdx stack up`; supervisorctl -c this-file status | start NAME | stop NAME | shutdown\n")
    conf.write(out)
    return out.getvalue()


def parse_port(text: str) -> tuple[str, int]:
    """``NAME=PORT`` → (name, port), with the name one of the stack's programs.

    Raises:
        ValueError: not NAME=PORT, an unknown name, or a port outside 1..65535.
    """
    name, sep, value = text.partition("=")
    if not sep or name not in DEFAULT_PORTS or not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"expected NAME=PORT with NAME one of {', '.join(DEFAULT_PORTS)}, got {text!r}")
    return name, int(value)
