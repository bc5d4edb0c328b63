"""The monitoring stack, run for real on 127.0.0.1 by the tests: a pytest plugin plus its helpers.

Everything here starts *real* processes: ``prometheus``, ``prometheus-alertmanager`` and
``prometheus-pushgateway`` (Debian packages), and the BentoML service and the Alertmanager webhook
receiver through the same ``deploy/bin/*.sh`` scripts the containers run. Each gets a free port, its
own process group and a temporary data directory, and the fixture's finaliser stops the whole group.

Why a plugin module and not a conftest: the deploy tests (``tests/deploy``) and the end-to-end alert
test (``tests/integration``) share these fixtures, and pytest shares a conftest's fixtures only with
the tests below it. The root ``tests/conftest.py`` registers this module once
(``pytest_plugins = ["tests.deploy.stack"]``), so each session fixture (the trained model, the
service, the receiver) exists once per test session. The Prefect server is the root conftest's
``prefect_server``.

Fixtures: ``monitoring_tools`` (session), ``model_home``, ``service``, ``pushgateway``,
``alert_receiver`` (session) and ``alert_pipeline`` (module: service -> Prometheus -> Alertmanager ->
receiver -> Prefect). The configuration rewrites are product code in :mod:`robustdx.flows.stackconf`
(``make up`` runs the same programs under supervisord), imported from there:

* ``monitoring_tools`` runs ``deploy/bin/install-tools.sh monitoring`` (it installs the Debian packages
  when they are missing and we are root, as in CI) and fails with its message otherwise (never a skip).
* :class:`tests.support.procs.Proc` (a process in its own group, ready-checked over HTTP) and
  :func:`tests.support.procs.start_on_free_port`: the tests' one process helper.
* :func:`local_prometheus_config` / :func:`local_alertmanager_config`: the shipped configurations
  pointed at the local processes, here with 1 s intervals (:data:`TEST_INTERVAL`); job names,
  ``honor_labels``, routes and matchers are kept, so what the alert rules select on is tested as shipped.
* :class:`Prom`: a tiny PromQL client with ``wait_for``.
* :func:`stain_stream` / :func:`feed` / :func:`trickle`: clean or stain-shifted patches sent to the service.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from robustdx.core.util import free_port, wait_until
from robustdx.flows import stackconf
from robustdx.flows.localstack import admin_token
from robustdx.flows.stackconf import (
    Tools,
    alertmanager_argv,
    find_tools,
    load_yaml,
    prometheus_argv,
    pushgateway_argv,
    write_yaml,
)
from tests.support.procs import Proc, install_tools, start_on_free_port

__all__ = ["Proc", "Tools", "load_yaml", "start_on_free_port"]  # what the deploy tests import from here

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = DEPLOY / "bin"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
ALERTMANAGER_YML = DEPLOY / "alertmanager" / "alertmanager.yml"
VENV_BIN = Path(sys.executable).parent

# job names of deploy/prometheus/prometheus.yml that the tests run locally (the rest — Ray, Prefect,
# Grafana — are dropped from the local config; test_compose checks they exist in the shipped one)
SERVICE_JOB = stackconf.SCRAPE_JOBS["service"]
PUSHGATEWAY_JOB = stackconf.SCRAPE_JOBS["pushgateway"]
TEST_INTERVAL = "1s"  # scrape / evaluation intervals and Alertmanager group waits: rules fill in seconds


# ------------------------------------------------------------------------------------------------
# Prometheus, Alertmanager, Pushgateway
# ------------------------------------------------------------------------------------------------
def local_prometheus_config(
    targets: Mapping[str, str], rule_files: Sequence[Path], alertmanager: str | None = None
) -> dict[str, Any]:
    """:func:`robustdx.flows.stackconf.local_prometheus_config` with :data:`TEST_INTERVAL` intervals."""
    return stackconf.local_prometheus_config(targets, rule_files, alertmanager, TEST_INTERVAL, REPO)


def local_alertmanager_config(webhook_url: str, token_file: Path) -> dict[str, Any]:
    """:func:`robustdx.flows.stackconf.local_alertmanager_config` with :data:`TEST_INTERVAL` group waits."""
    return stackconf.local_alertmanager_config(webhook_url, token_file, TEST_INTERVAL, REPO)


def start_prometheus(tools: Tools, config: Mapping[str, Any], workdir: Path) -> Proc:
    """A real Prometheus with ``config`` and a temporary TSDB under ``workdir``."""
    cfg = write_yaml(workdir / "prometheus.yml", config)
    return start_on_free_port(
        "prometheus",
        lambda port: prometheus_argv(tools, cfg, workdir / "data", port, retention="1h", log_level="warn"),
        workdir / "prometheus.log",
        ready="/-/ready",
    )


def start_pushgateway(tools: Tools, workdir: Path) -> Proc:
    return start_on_free_port(
        "pushgateway", lambda port: pushgateway_argv(tools, port, log_level="warn"), workdir / "pushgateway.log", ready="/-/ready"
    )


def start_alertmanager(tools: Tools, config: Mapping[str, Any], workdir: Path) -> Proc:
    """A real Alertmanager (clustering off, see :func:`robustdx.flows.stackconf.alertmanager_argv`)."""
    cfg = write_yaml(workdir / "alertmanager.yml", config)
    return start_on_free_port(
        "alertmanager",
        lambda port: alertmanager_argv(tools, cfg, workdir / "data", port, log_level="warn"),
        workdir / "alertmanager.log",
        ready="/-/ready",
    )


def free_stack_ports() -> dict[str, int]:
    """A distinct free 127.0.0.1 port for every program of ``make up`` (flows/stackconf.py)."""
    ports: set[int] = set()
    while len(ports) < len(stackconf.DEFAULT_PORTS):
        ports.add(free_port())
    return dict(zip(stackconf.DEFAULT_PORTS, sorted(ports), strict=True))


def host_port(proc: Proc) -> str:
    return f"127.0.0.1:{proc.port}"


class PromQueryError(RuntimeError):
    """Prometheus rejected a query (bad PromQL, unknown function, ...)."""


@dataclass(frozen=True)
class Prom:
    """A minimal client of the Prometheus HTTP API."""

    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (or ``[scalar]``). Raises on a PromQL error."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise PromQueryError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def values(self, expr: str) -> list[float]:
        return [float(s["value"][1]) for s in self.query(expr)]

    def wait_for(self, expr: str, ok: Callable[[list[float]], bool] = bool, timeout: float = 60.0) -> list[float]:
        """Poll ``expr`` until ``ok(values)``; the last values are in the timeout message."""
        return wait_until(lambda: self.values(expr), timeout, f"{expr!r} to satisfy the condition", ok=ok, interval=0.5)

    def alerts(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]

    def targets_up(self) -> dict[str, str]:
        active = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}


# ------------------------------------------------------------------------------------------------
# traffic: clean and stain-shifted patches (the drift the monitoring must see)
# ------------------------------------------------------------------------------------------------
# a stain no training hospital has: strong magenta tint and a brighter slide
SHIFT_TINT, SHIFT_BRIGHTNESS = np.array([1.45, 0.6, 1.35]), 0.12


def stain_patch(seed: int, shifted: bool, center: int = 0, size: int = 48) -> bytes:
    """A PNG patch from the synthetic generator, stained like ``center`` or with the foreign stain."""
    from robustdx.core.data.synthetic import apply_stain, histology_patch, hospital_stain
    from tests.integration.service_harness import png_bytes

    img = histology_patch(np.random.default_rng(seed), bool(seed % 2), size)
    tint, bright = (SHIFT_TINT, SHIFT_BRIGHTNESS) if shifted else hospital_stain(center)
    return png_bytes((apply_stain(img, tint, bright) * 255).round().astype(np.uint8))


def stain_stream(n: int, shifted: bool, start: int = 0) -> Iterator[bytes]:
    """``n`` patches, cycling over the training hospitals (0, 3, 4) when not shifted."""
    for i in range(start, start + n):
        yield stain_patch(i, shifted, center=(0, 3, 4)[i % 3])


def feed(url: str, images: Iterator[bytes], per_request: int = 4) -> int:
    """POST the images to ``/predict`` a few at a time; returns how many were answered 200."""
    ok, batch = 0, []
    with httpx.Client(base_url=url, timeout=60) as client:

        def send() -> int:
            files = [("images", (f"p{i}.png", b, "image/png")) for i, b in enumerate(batch)]
            r = client.post("/predict", files=files)
            assert r.status_code == 200, r.text[:300]
            return len(batch)

        for img in images:
            batch.append(img)
            if len(batch) == per_request:
                ok += send()
                batch = []
        if batch:
            ok += send()
    return ok


def wait_monitor_idle(url: str, drift_runs_before: int, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until the service's background monitor has processed every queued sample and computed
    drift again since ``drift_runs_before`` (``GET /model`` exposes its state)."""
    return wait_until(
        lambda: httpx.get(f"{url}/model", timeout=10).json()["monitor"],
        timeout,
        "the service's monitor to settle",
        ok=lambda mon: mon["idle"] and mon["drift_runs"] > drift_runs_before,
    )


def drift_runs(url: str) -> int:
    return int(httpx.get(f"{url}/model", timeout=10).json()["monitor"]["drift_runs"])


def send_and_settle(url: str, n: int, shifted: bool, start: int) -> None:
    """Send ``n`` patches and wait until drift was recomputed on them."""
    before = drift_runs(url)
    assert feed(url, stain_stream(n, shifted, start)) == n
    wait_monitor_idle(url, before)


def answer(client: httpx.Client, prediction: dict, agree: bool, reviewer: str) -> httpx.Response:
    """A clinician's feedback on one prediction of /predict: its label, or another class."""
    label = prediction["label"] if agree else next(c for c in prediction["probabilities"] if c != prediction["label"])
    body = {"request_id": prediction["request_id"], "label": label, "reviewer": reviewer}
    return client.post("/feedback", json=body, headers={"Authorization": f"Bearer {CLINICIAN_TOKEN}"})


@contextmanager
def trickle(url: str, period: float = 0.5, explain_every: int = 6) -> Iterator[None]:
    """Keep a little traffic flowing in a background thread (one /predict every ``period`` s, and an
    /explain every ``explain_every`` requests) so every ``rate()`` window a query looks at has samples."""
    stop = threading.Event()
    errors: list[str] = []

    def run() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                png = stain_patch(10_000 + i, shifted=bool(i % 2))
                if i % explain_every == 0:
                    r = client.post("/explain", files={"image": ("x.png", png, "image/png")}, data={"map_size": "4"})
                else:
                    r = client.post("/predict", files=[("images", ("x.png", png, "image/png"))], data={"store_image": "true"})
                    if r.status_code == 200 and i % 3 == 1:  # a clinician answers some: agreeing, then not, in turn
                        r = answer(client, r.json()[0], agree=bool(i % 2), reviewer=f"dr.trickle{i}")
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                i += 1
                stop.wait(period)

    thread = threading.Thread(target=run, name="trickle", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors[:3]


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
# the service's monitoring settings for tests: a drift check every 8 samples over a window of 32,
# every image probed by the PGD robustness check, one CPU
CLINICIAN_TOKEN = "stack-clinician-token"
SERVICE_ENV = {
    "ROBUSTDX_CLINICIAN_TOKEN": CLINICIAN_TOKEN,
    "ROBUSTDX_DRIFT_WINDOW": "32",
    "ROBUSTDX_DRIFT_EVERY": "8",
    "ROBUSTDX_ROBUST_SAMPLE_RATE": "1.0",
    "ROBUSTDX_CPU": "1",
    "BENTOML_DO_NOT_TRACK": "True",
}


@pytest.fixture(scope="session")
def monitoring_tools() -> Tools:
    """prometheus, promtool, alertmanager and pushgateway binaries (deploy/bin/install-tools.sh monitoring)."""
    install_tools("monitoring")
    return find_tools()


@pytest.fixture(scope="session")
def model_home(camelyon_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BentoML home with one tiny trained model promoted to production."""
    from robustdx.core.config import parse_config
    from robustdx.core.release.pointer import write_production
    from robustdx.core.release.store import save_bundle_to_store
    from robustdx.core.training.recipes import run_recipe
    from tests.support.configs import tiny_raw

    home = tmp_path_factory.mktemp("stack_bentoml_home")
    runs = tmp_path_factory.mktemp("stack_runs")
    result = run_recipe(parse_config(tiny_raw(camelyon_root, runs, name="stack", seed=0)))
    write_production(home, save_bundle_to_store(result.bundle, home))
    return home


def serve_command(port: int) -> list[str]:
    """The container's start command (deploy/bin/serve.sh), bound to 127.0.0.1:``port``."""
    return [str(BIN / "serve.sh")]


@pytest.fixture(scope="session")
def service(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """``deploy/bin/serve.sh`` — the serve image's CMD — serving the tiny model on 127.0.0.1."""
    log = tmp_path_factory.mktemp("stack_service") / "serve.log"
    proc = start_on_free_port(
        "bentoml serve",
        serve_command,
        log,
        ready="/readyz",
        env=lambda port: {
            **SERVICE_ENV,
            "BENTOML_HOME": str(model_home),
            "ROBUSTDX_SERVE_HOST": "127.0.0.1",
            "ROBUSTDX_SERVE_PORT": str(port),
        },
        timeout=180,
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def pushgateway(monitoring_tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_pushgateway(monitoring_tools, tmp_path_factory.mktemp("pushgateway"))
    yield proc
    proc.stop()


def start_receiver(api_url: str, workdir: Path, token_file: Path) -> Proc:
    """``deploy/bin/alert-receiver.sh`` (the compose service's command) forwarding to ``api_url``,
    accepting alerts that carry the bearer secret in ``token_file``."""
    return start_on_free_port(
        "alert receiver",
        lambda port: [str(BIN / "alert-receiver.sh")],
        workdir / "receiver.log",
        ready="/healthz",
        env=lambda port: {
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(workdir / "prefect_home"),
            "ROBUSTDX_ALERTS_HOST": "127.0.0.1",
            "ROBUSTDX_ALERTS_PORT": str(port),
            "ROBUSTDX_ALERT_TOKEN_FILE": str(token_file),
        },
    )


@pytest.fixture(scope="session")
def alert_token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bearer secret Alertmanager sends and the receiver requires (as the compose secret does)."""
    root = tmp_path_factory.mktemp("alert_secret")
    admin_token(root, stackconf.ALERT_TOKEN_FILE)
    return root / stackconf.ALERT_TOKEN_FILE


@pytest.fixture(scope="session")
def alert_receiver(prefect_server: str, alert_token_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """The Alertmanager webhook receiver as a real process, emitting to the session's Prefect server."""
    proc = start_receiver(prefect_server, tmp_path_factory.mktemp("receiver"), alert_token_file)
    yield proc
    proc.stop()


def seed_pushgateway(url: str) -> None:
    """Push what a retrain cycle pushes (flows/metrics.py): every flow's last run, a promotion decision
    and the candidate's and production model's scores."""
    from robustdx.flows.metrics import push_metrics

    scores = {"clean_acc": 0.86, "robust_acc": 0.61, "attribution": 0.42}
    assert push_metrics("sweep", "completed", 95.0, url=url)
    assert push_metrics("train", "completed", 240.0, url=url)
    assert push_metrics("train", "failed", 12.0, url=url)
    assert push_metrics(
        "promote",
        "completed",
        30.0,
        decision="promoted",
        candidate=scores,
        production={k: v - 0.03 for k, v in scores.items()},
        url=url,
    )
    assert push_metrics("retrain", "completed", 400.0, url=url)


@contextmanager
def live_prometheus(
    tools: Tools, workdir: Path, targets: Mapping[str, str], rule_files: Sequence[Path], alertmanager: str | None = None
) -> Iterator[Prom]:
    """A real Prometheus scraping ``targets`` (shipped job name -> host:port) every second with
    ``rule_files``; waits until every target is up, stops it on exit."""
    proc = start_prometheus(tools, local_prometheus_config(targets, rule_files, alertmanager), workdir)
    try:
        prom = Prom(proc.url)
        try:
            wait_until(prom.targets_up, 30, "every Prometheus target up", ok=lambda up: up == dict.fromkeys(targets, "up"))
        except TimeoutError as err:
            raise TimeoutError(f"{err}\n{proc.tail()}") from None
        yield prom
    finally:
        proc.stop()


# ------------------------------------------------------------------------------------------------
# the whole alert path: service -> Prometheus -> Alertmanager -> receiver -> Prefect
# ------------------------------------------------------------------------------------------------
DRIFT_ALERT = "RobustdxDriftHigh"


def fast_alert_rules(workdir: Path, alert: str = DRIFT_ALERT, duration: str = "2s") -> Path:
    """The shipped alerts.yml with only ``alert``'s ``for:`` shortened to ``duration``.

    Why rewrite: the shipped 10 minutes (a few odd slides must not start a retrain) cannot be waited
    for in a test. Everything else — expression, labels (retrain="true"), annotations — is the shipped
    rule, so the test exercises exactly what production evaluates; the 10-minute pending period itself
    is covered by the promtool unit tests (deploy/prometheus/tests/alerts_test.yml).
    """
    rules = load_yaml(RULES_DIR / "alerts.yml")
    found = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    if len(found) != 1:
        raise KeyError(f"{alert} is defined {len(found)} times in {RULES_DIR / 'alerts.yml'}")
    found[0]["for"] = duration
    return write_yaml(workdir / "alerts-fast.yml", rules)


@dataclass
class AlertPipeline:
    """The running alert path, for tests that drive the service and watch what comes out."""

    service: Proc
    prom: Prom
    alertmanager: Proc
    receiver: Proc
    prefect_api: str

    alert_name: str = DRIFT_ALERT

    @property
    def resource_id(self) -> str:
        """The Prefect resource id the receiver gives events about this service (its scrape instance)."""
        return f"robustdx.service.{host_port(self.service)}"

    def send(self, n: int, shifted: bool, start: int) -> None:
        """``n`` clean or stain-shifted patches to the service, waiting until drift is recomputed."""
        send_and_settle(self.service.url, n, shifted, start)

    def prometheus_alert(self) -> dict[str, Any] | None:
        """The drift alert as Prometheus sees it (pending / firing), or None while inactive."""
        found = [a for a in self.prom.alerts() if a["labels"]["alertname"] == self.alert_name]
        return found[0] if found else None

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        """The drift alerts Alertmanager holds (with their receivers and fingerprints)."""
        params = {"filter": f'alertname="{self.alert_name}"'}
        return httpx.get(f"{self.alertmanager.url}/api/v2/alerts", params=params, timeout=10).json()


@pytest.fixture(scope="module")
def alert_pipeline(
    monitoring_tools: Tools,
    service: Proc,
    alert_receiver: Proc,
    alert_token_file: Path,
    prefect_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AlertPipeline]:
    """Prometheus (shipped recording rules + alerts with a 2 s drift ``for:``) scraping the service every
    second, a real Alertmanager with the shipped routing (group_wait 1 s) posting to the receiver
    process, which emits into the session's Prefect server."""
    work = tmp_path_factory.mktemp("alert_pipeline")
    am = start_alertmanager(
        monitoring_tools, local_alertmanager_config(f"{alert_receiver.url}/alerts", alert_token_file), work / "alertmanager"
    )
    try:
        rules = [RULES_DIR / "recording.yml", fast_alert_rules(work)]
        with live_prometheus(
            monitoring_tools, work / "prometheus", {SERVICE_JOB: host_port(service)}, rules, host_port(am)
        ) as prom:
            yield AlertPipeline(service, prom, am, alert_receiver, prefect_server)
    finally:
        am.stop()
