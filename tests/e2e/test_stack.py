"""``make up`` end to end: the whole local stack under supervisord, the Prefect UI in a real browser, a run
started as the UI's Run button starts it, a promotion tracked in MLflow, and the running service serving the new model.

``robustdx stack up`` runs as a subprocess on free ports with a tiny sweep (two
trials, FIFO, 2 + 2 epochs on the learnable synthetic set) and a temporary MLflow store: supervisord starts
Prefect, MLflow, the monitoring programs and the retrain deployments, a first model is retrained through
``retrain/nightly`` (tracked in the stack's MLflow server) and served. Then headless Chromium (the Debian
package; ``deploy/bin/install-tools.sh chromium`` installs it as root when missing, no browser download) renders
the Prefect UI's deployments page, which must link both retrain deployments; a run of ``retrain/nightly``
is created through the REST call the UI's Run button makes; it must complete and promote (a retrain of the
same configuration matches the serving model, so it passes the gates), and the service — reloaded by the
flow through ``/admin/reload`` — must then serve the new tag. ``down`` (``supervisorctl shutdown``) runs in
the fixture's finaliser, and neither supervisord nor any program's process may survive it.

Screenshots of the deployments and flow-runs pages go to a temporary folder, or to
``$ROBUSTDX_SCREENSHOTS`` (e.g. ``docs/screenshots``, relative to the repository) to refresh the README's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from robustdx.core.release.pointer import read_production
from robustdx.core.util import wait_until
from robustdx.flows.localstack import UI_DEPLOYMENTS, UI_RUNS, daemon_running, rpc, wait_flow_run
from robustdx.flows.stackconf import DEPLOYMENTS, StackAddresses
from tests.deploy.stack import free_stack_ports
from tests.support.configs import write_tiny_sweep
from tests.support.paths import REPO
from tests.support.procs import install_tools

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCREENSHOTS_ENV = "ROBUSTDX_SCREENSHOTS"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# the Prefect UI is a single-page app: let it fetch from the API and render before the DOM is dumped
VIRTUAL_TIME_MS = 15_000
UP_TIMEOUT, RUN_TIMEOUT = 900, 600


@dataclass(frozen=True)
class Chromium:
    """Headless Chromium from the command line: each call gets a fresh profile under ``scratch``."""

    binary: Path
    scratch: Path

    def _run(self, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
        profile = self.scratch / f"profile-{time.monotonic_ns()}"
        cmd = [str(self.binary), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={VIRTUAL_TIME_MS}"]
        done = subprocess.run([*cmd, *flags, url], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"chromium failed on {url} (exit {done.returncode}):\n{done.stderr[-2000:]}"
        return done

    def dom(self, url: str) -> str:
        """The DOM after the page's scripts ran."""
        return self._run(url, "--dump-dom").stdout

    def screenshot(self, url: str, png: Path, size: str = "1400,900") -> Path:
        png.parent.mkdir(parents=True, exist_ok=True)
        self._run(url, f"--screenshot={png}", f"--window-size={size}")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
        return png


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Chromium:
    """``chromium`` from ``deploy/bin/install-tools.sh chromium`` (installed as root when missing, else the test fails)."""
    install_tools("chromium")
    found = shutil.which("chromium")
    assert found, "install-tools.sh chromium succeeded but chromium is not on PATH"
    return Chromium(Path(found), tmp_path_factory.mktemp("chromium"))


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: ``$ROBUSTDX_SCREENSHOTS`` (relative to the repository) or a temporary folder."""
    target = os.environ.get(SCREENSHOTS_ENV)
    if not target:
        return tmp_path_factory.mktemp("screenshots")
    path = Path(target) if Path(target).is_absolute() else REPO / target
    path.mkdir(parents=True, exist_ok=True)
    return path


PROGRAMS = ["prefect", "mlflow", "pushgateway", "alertmanager", "receiver", "prometheus", "deploy", "service"]
READY = {  # what each program answers once ready (flows/stackconf.py)
    "prefect": "/api/health",
    "mlflow": "/health",
    "pushgateway": "/-/ready",
    "alertmanager": "/-/ready",
    "receiver": "/healthz",
    "prometheus": "/-/ready",
    "service": "/readyz",
}


@dataclass(frozen=True)
class Stack(StackAddresses):
    programs: list[dict[str, Any]]  # supervisord's getAllProcessInfo right after up


def _gone(pid: int) -> bool:
    """No such process, or a zombie (supervisord is reparented to an init that may not reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def localstack(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "robustdx.cli", "stack", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def stack(learnable_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``stack up`` with a tiny sweep on free ports; ``down`` afterwards, which must leave nothing running."""
    work = tmp_path_factory.mktemp("localstack")
    root = work / "stack"
    pids: list[int] = []
    ports = free_stack_ports()
    port_args = [arg for name, port in ports.items() for arg in ("--port", f"{name}={port}")]
    try:
        t0 = time.monotonic()
        up = localstack(
            "--root",
            str(root),
            "up",
            "--sweep",
            str(write_tiny_sweep(work, learnable_root, "stack-e2e")),
            "--fast-alerts",
            "--mlflow-store",
            str(work / "mlflow"),
            *port_args,
            timeout=UP_TIMEOUT,
        )
        print(f"localstack up: exit {up.returncode} after {time.monotonic() - t0:.0f} s\n{up.stdout}")
        assert up.returncode == 0, f"up failed:\n{up.stdout[-3000:]}\n{up.stderr[-6000:]}"
        assert "make down stops it" in up.stdout and str(root / "admin-token") in up.stdout
        assert (root / "admin-token").read_text().strip() not in up.stdout + up.stderr, "up printed the admin token"
        programs = rpc(root).getAllProcessInfo()
        pids += [rpc(root).getPID(), *(p["pid"] for p in programs if p["pid"])]
        yield Stack(root, ports, programs)
    finally:
        down = localstack("--root", str(root), "down", timeout=200)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not daemon_running(root), f"supervisord still answers after down:\n{down.stdout}"
        survivors = [pid for pid in pids if not _gone(pid)]
        assert not survivors, f"still running after down: {survivors}\n{down.stdout}"
        assert not daemon_running(root) and localstack("--root", str(root), "status", timeout=60).returncode != 0


def test_up_started_every_program_and_keeps_the_token_secret(stack: Stack) -> None:
    assert sorted(p["name"] for p in stack.programs) == sorted(PROGRAMS)
    assert all(p["statename"] == "RUNNING" for p in stack.programs), [(p["name"], p["statename"]) for p in stack.programs]
    for name, path in READY.items():
        assert httpx.get(stack.url(name) + path, timeout=10).is_success, f"{name} not ready"
    status = localstack("--root", str(stack.root), "status", timeout=60)
    assert status.returncode == 0 and all(f"{name} " in status.stdout for name in PROGRAMS), status.stdout
    token = stack.root / "admin-token"
    assert token.stat().st_mode & 0o777 == 0o600
    secret = token.read_text().strip()
    logs = [stack.log(name) for name in PROGRAMS]
    assert all(log.is_file() for log in logs) and not any(secret in log.read_text(errors="replace") for log in logs)
    active = httpx.get(f"{stack.url('prometheus')}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    jobs = {t["labels"]["job"] for t in active}
    assert jobs == {"robustdx-service", "pushgateway", "prefect-server", "alert-receiver", "alertmanager", "prometheus"}, jobs


def test_mlflow_ui_shows_the_first_retrain(stack: Stack) -> None:
    """The deploy program tracks into the stack's MLflow server (MLFLOW_TRACKING_URI), so the first model's
    promotion decision is a run there."""
    api = f"{stack.url('mlflow')}/api/2.0/mlflow"
    found = httpx.get(f"{api}/experiments/get-by-name", params={"experiment_name": "robustdx-promote"}, timeout=10)
    assert found.status_code == 200, found.text
    experiment = found.json()["experiment"]["experiment_id"]
    runs = httpx.post(f"{api}/runs/search", json={"experiment_ids": [experiment], "max_results": 10}, timeout=10).json()
    assert runs.get("runs"), f"no run in the robustdx-promote experiment of {stack.url('mlflow')}"
    assert "<html" in httpx.get(stack.url("mlflow"), timeout=10).text.lower()  # the UI itself


def test_prefect_ui_lists_the_retrain_deployments(stack: Stack, chromium: Chromium, screenshots: Path) -> None:
    ids = {name: httpx.get(f"{stack.api}/deployments/name/{name}", timeout=10).json()["id"] for name in DEPLOYMENTS}
    page = stack.url("prefect") + UI_DEPLOYMENTS
    dom = chromium.dom(page)
    for text in ("nightly", "on-drift", "retrain"):
        assert text in dom, f"{text!r} not rendered on {page}"
    for name, deployment_id in ids.items():  # a row linking each deployment, not just the words somewhere
        assert f"{UI_DEPLOYMENTS}/deployment/{deployment_id}" in dom, f"no link to {name} on {page}"
    chromium.screenshot(page, screenshots / "prefect-deployments.png")


def _latest_artifact(api: str, key: str) -> dict[str, Any]:
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    found = httpx.post(f"{api}/artifacts/filter", json=body, timeout=10).json()
    assert found, f"no {key} artifact"
    return found[0]


def _served_tag(service: str) -> str:
    return httpx.get(f"{service}/model", timeout=30).json()["tag"]


def test_a_run_from_the_ui_promotes_and_the_service_reloads(stack: Stack, chromium: Chromium, screenshots: Path) -> None:
    first = read_production(stack.home)
    assert first is not None and _served_tag(stack.url("service")) == first.tag

    # the UI's Run button (Quick run): POST /api/deployments/{id}/create_flow_run with a scheduled state
    deployment = httpx.get(f"{stack.api}/deployments/name/retrain/nightly", timeout=10).json()
    body = {"state": {"type": "SCHEDULED", "message": "Run from the Prefect UI with defaults"}}
    created = httpx.post(f"{stack.api}/deployments/{deployment['id']}/create_flow_run", json=body, timeout=10)
    assert created.status_code == 201, created.text
    run = wait_flow_run(stack.api, created.json()["id"], RUN_TIMEOUT)
    assert run["state"]["type"] == "COMPLETED", run["state"]

    pointer = read_production(stack.home)
    assert pointer is not None and pointer.tag != first.tag and pointer.previous == first.tag
    decision = _latest_artifact(stack.api, "promotion-decision")
    assert decision["description"].startswith("promoted"), decision["description"]
    assert pointer.tag in decision["data"]
    # the flow reloaded the running service through /admin/reload (with the token from <root>/admin-token)
    service = stack.url("service")
    wait_until(lambda: _served_tag(service), 30, f"the service to serve {pointer.tag}", ok=lambda tag: tag == pointer.tag)

    page = stack.url("prefect") + UI_RUNS
    assert run["name"] in chromium.dom(page), f"{run['name']} not listed on {page}"
    chromium.screenshot(page, screenshots / "prefect-flow-runs.png", size="1400,1400")
