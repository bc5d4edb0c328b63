"""LocalServer's readiness wait: it stops early when the server exits or logs its start-up failure,
and a timeout carries the log's tail (no BentoML started: a stand-in process and log)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robustdx.service.local import STARTUP_FAILURE, LocalServer

pytestmark = pytest.mark.unit


def server(tmp_path: Path, code: str, log: str = "", timeout: float = 30.0) -> LocalServer:
    """A LocalServer whose 'server' is ``python -c code`` and whose log holds ``log``."""
    srv = LocalServer({}, tmp_path / "serve.log", timeout=timeout)
    srv.log.write_text(log)
    srv.proc = subprocess.Popen([sys.executable, "-c", code])
    return srv


def test_an_exited_server_stops_the_wait(tmp_path: Path) -> None:
    srv = server(tmp_path, "raise SystemExit(3)", log="Traceback: boom")
    srv.proc.wait(10)  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="exited with 3:\nTraceback: boom"):
        srv.wait_ready()


def test_a_logged_startup_failure_stops_the_wait(tmp_path: Path) -> None:
    srv = server(tmp_path, "import time; time.sleep(30)", log=f"RuntimeError: {STARTUP_FAILURE}: no model to serve")
    try:
        with pytest.raises(RuntimeError, match="failed to start:\n.*no model to serve"):
            srv.wait_ready()
    finally:
        srv.proc.kill()  # type: ignore[union-attr]
        srv.proc.wait(10)  # type: ignore[union-attr]


def test_a_server_never_ready_times_out_with_the_log_tail(tmp_path: Path) -> None:
    srv = server(tmp_path, "import time; time.sleep(30)", log="still loading", timeout=1.0)
    try:
        with pytest.raises(TimeoutError, match="service not ready after 1 s:\nstill loading"):
            srv.wait_ready()
    finally:
        srv.proc.kill()  # type: ignore[union-attr]
        srv.proc.wait(10)  # type: ignore[union-attr]
