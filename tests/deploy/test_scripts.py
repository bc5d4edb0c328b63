"""deploy/bin: the start commands of the containers, run outside a container.

The service and the alert receiver scripts are run for real by the stack fixtures (test_dashboards,
test_alert_to_event). Here: every script is valid sh that ``exec``s its program (so signals reach it),
every option it passes exists in that program's ``--help``, the service script serves the same
BentoML service the tests and the demo serve, and the worker script — the train image's CMD — is
started against a real Prefect server: it creates the ``robustdx`` process work pool, registers as a
worker and answers the image's HEALTHCHECK.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from robustdx.core.util import wait_until
from robustdx.service.local import SERVICE
from tests.deploy.dockerfile import parse
from tests.deploy.stack import BIN, DEPLOY, VENV_BIN, Proc, load_yaml, start_on_free_port

# set-up scripts run once on a machine (not a container's start command): checked on their own below
SETUP_SCRIPTS = {"install-tools.sh"}
SCRIPTS = sorted(p for p in BIN.glob("*.sh") if p.name not in SETUP_SCRIPTS)
# script -> the command whose --help must list every option the script passes
HELP = {
    "serve.sh": [str(VENV_BIN / "bentoml"), "serve", "--help"],
    "worker.sh": [str(VENV_BIN / "prefect"), "worker", "start", "--help"],
    "ray-head.sh": [str(VENV_BIN / "ray"), "start", "--help"],
    "alert-receiver.sh": [sys.executable, "-m", "robustdx.cli", "alert-receiver", "--help"],
}


def options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def help_text(cmd: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr[-1000:]}"
    return done.stdout + done.stderr


@pytest.mark.unit
def test_every_script_has_a_help_command() -> None:
    assert {p.name for p in SCRIPTS} == set(HELP)


@pytest.mark.unit
def test_install_tools_script_is_valid_bash_with_usage() -> None:
    script = BIN / "install-tools.sh"
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode == 0
    usage = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert usage.returncode == 0 and all(group in usage.stdout for group in ("monitoring", "postgres", "chromium"))
    unknown = subprocess.run([str(script), "nope"], capture_output=True, text=True, check=False)
    assert unknown.returncode == 2 and "unknown group 'nope'" in unknown.stderr


@pytest.mark.unit
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_sh_and_execs(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert script.read_text().startswith("#!/bin/sh\n")
    done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^exec ", script.read_text(), re.M), "exec the program so it receives the container's signals as PID 1"


@pytest.mark.unit
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_options_exist(script: Path) -> None:
    used = options(script.read_text().split("exec ", 1)[1])
    known = options(help_text(HELP[script.name]))
    assert used and used <= known, f"{script.name}: {sorted(used - known)} not in `{' '.join(HELP[script.name][-3:])}`"


@pytest.mark.unit
def test_compose_prefect_server_command_options_exist() -> None:
    command = load_yaml(DEPLOY / "compose.yaml")["services"]["prefect-server"]["command"]
    assert command[:3] == ["prefect", "server", "start"]
    used = {w for w in command if w.startswith("--")}
    assert used <= options(help_text([str(VENV_BIN / "prefect"), "server", "start", "--help"]))


@pytest.mark.unit
def test_serve_script_serves_the_tested_service() -> None:
    assert f"bentoml serve {SERVICE}" in (BIN / "serve.sh").read_text()


# ------------------------------------------------------------------------------------------------
# the worker, for real
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, str]]:
    """deploy/bin/worker.sh against the session's Prefect server, on a pool of its own."""
    pool = f"robustdx-test-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("worker")
    proc = start_on_free_port(
        "prefect worker",
        lambda port: [str(BIN / "worker.sh")],
        work / "worker.log",
        ready="/health",
        env=lambda port: {
            "PREFECT_API_URL": prefect_server,
            "PREFECT_HOME": str(work / "prefect_home"),
            "PREFECT_WORK_POOL": pool,
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(port),
        },
        timeout=90,
    )
    yield proc, pool
    proc.stop()


@pytest.mark.integration
def test_worker_script_creates_the_process_pool_and_registers(worker: tuple[Proc, str]) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    proc, pool = worker

    async def registered() -> tuple[str, list[str]]:
        async with get_client() as client:
            try:
                wp = await client.read_work_pool(pool)
            except ObjectNotFound:  # the worker creates it right after it starts polling
                return "", []
            return wp.type, [w.name for w in await client.read_workers_for_work_pool(pool)]

    try:
        kind, workers = wait_until(lambda: asyncio.run(registered()), 30, f"a worker on {pool}", ok=lambda r: bool(r[1]))
    except TimeoutError as err:
        raise AssertionError(f"no worker registered on {pool}: {err}\n{proc.tail()}") from None
    assert kind == "process"


@pytest.mark.integration
def test_train_image_healthcheck_passes_against_the_worker(worker: tuple[Proc, str]) -> None:
    proc, _ = worker
    cmd = parse().stages["train"].last("HEALTHCHECK").exec_form()
    env = {**os.environ, "PREFECT_WORKER_WEBSERVER_PORT": str(proc.port)}
    assert subprocess.run([sys.executable, *cmd[1:]], env=env, timeout=30, check=False).returncode == 0
