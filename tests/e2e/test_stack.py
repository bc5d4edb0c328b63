"""``make up`` end to end: the whole local stack, the Prefect UI in a real browser, a run started as the UI's
Run button starts it, a promotion, and the running service serving the new model.

``robustdx stack up`` runs as a subprocess on free ports with a tiny sweep (two
trials, FIFO, 2 + 2 epochs on the learnable synthetic set): it starts Prefect, the monitoring processes,
the retrain deployments, retrains a first model through ``retrain/nightly`` and serves it. Then headless
Chromium (the Debian package; installed with apt-get as root when missing, no browser download) renders
the Prefect UI's deployments page, which must link both retrain deployments; a run of ``retrain/nightly``
is created through the REST call the UI's Run button makes; it must complete and promote (a retrain of the
same configuration matches the serving model, so it passes the gates), and the service — reloaded by the
flow through ``/admin/reload`` — must then serve the new tag. ``down`` runs in the fixture's finaliser,
and no recorded process may survive it.

Screenshots of the deployments and flow-runs pages go to a temporary folder, or to
``$ROBUSTDX_SCREENSHOTS`` (e.g. ``docs/screenshots``, relative to the repository) to refresh the README's.
"""

from __future__ import annotations

import os
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
from robustdx.flows.localstack import (
    DEPLOYMENTS,
    UI_DEPLOYMENTS,
    UI_RUNS,
    Record,
    StackAddresses,
    ToolsUnavailable,
    apt_binaries,
    read_records,
    wait_flow_run,
)
from tests.deploy.stack import free_stack_ports
from tests.support.configs import write_tiny_sweep
from tests.support.paths import REPO

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
    """``/usr/bin/chromium``, apt-installed as root when missing (see :func:`robustdx.flows.localstack.apt_binaries`)."""
    try:
        found = apt_binaries(("chromium",), ("chromium",), "tests/e2e/test_stack.py (the Prefect UI in headless Chromium)")
    except ToolsUnavailable as err:
        pytest.fail(str(err), pytrace=False)
    return Chromium(found["chromium"], tmp_path_factory.mktemp("chromium"))


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: ``$ROBUSTDX_SCREENSHOTS`` (relative to the repository) or a temporary folder."""
    target = os.environ.get(SCREENSHOTS_ENV)
    if not target:
        return tmp_path_factory.mktemp("screenshots")
    path = Path(target) if Path(target).is_absolute() else REPO / target
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Stack(StackAddresses):
    records: list[Record]


def localstack(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "robustdx.cli", "stack", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def stack(learnable_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``localstack up`` with a tiny sweep on free ports; ``down`` afterwards, which must leave nothing running."""
    work = tmp_path_factory.mktemp("localstack")
    root = work / "stack"
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
            *port_args,
            timeout=UP_TIMEOUT,
        )
        print(f"localstack up: exit {up.returncode} after {time.monotonic() - t0:.0f} s\n{up.stdout}")
        assert up.returncode == 0, f"up failed:\n{up.stdout[-3000:]}\n{up.stderr[-6000:]}"
        assert "make down stops it" in up.stdout and str(root / "admin-token") in up.stdout
        assert (root / "admin-token").read_text().strip() not in up.stdout + up.stderr, "up printed the admin token"
        yield Stack(root, ports, read_records(root))
    finally:
        started = read_records(root)  # also after a failed or killed `up`: whatever stack.json still lists
        down = localstack("--root", str(root), "down", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        survivors = [f"{r.name} (pid {r.pid})" for r in started if r.alive()]
        assert not survivors, f"still running after down: {survivors}\n{down.stdout}"


def test_up_started_every_component_and_keeps_the_token_secret(stack: Stack) -> None:
    assert [r.name for r in stack.records] == [
        "prefect",
        "pushgateway",
        "alertmanager",
        "receiver",
        "prometheus",
        "deploy",
        "service",
    ]
    assert all(r.alive() and r.ready() for r in stack.records), [(r.name, r.alive(), r.ready()) for r in stack.records]
    token = stack.root / "admin-token"
    assert token.stat().st_mode & 0o777 == 0o600
    secret = token.read_text().strip()
    assert secret and not any(secret in Path(r.log).read_text(errors="replace") for r in stack.records)
    active = httpx.get(f"{stack.url('prometheus')}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    jobs = {t["labels"]["job"] for t in active}
    assert jobs == {"robustdx-service", "pushgateway", "prefect-server", "alert-receiver", "alertmanager", "prometheus"}, jobs


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
