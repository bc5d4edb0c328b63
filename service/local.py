"""Run the service locally as ``bentoml serve`` on a free 127.0.0.1 port (tests, benchmark, demo).

:class:`LocalServer` starts ``bentoml serve robustdx.service.app:RobustDx`` in its own process
group with the given environment (``BENTOML_HOME`` and ``ROBUSTDX_*`` settings), waits for ``/readyz``
and always stops the whole group on exit; the server's log goes to a file whose tail is attached to
any start-up failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from robustdx.core.util import free_port, wait_until

SERVICE = "robustdx.service.app:RobustDx"


STARTUP_FAILURE = "robustdx service cannot start"


def bentoml_executable() -> str | None:
    """The ``bentoml`` of this Python's environment, else the one on PATH (None when neither exists)."""
    beside = Path(sys.executable).with_name("bentoml")
    return str(beside) if beside.exists() else shutil.which("bentoml")


class LocalServer:
    """``with LocalServer(env, log) as srv: srv.url`` — a running service; always stopped on exit."""

    def __init__(self, env: dict[str, str], log: Path, timeout: float = 120.0, cwd: Path | None = None) -> None:
        self.env = {**os.environ, **env}
        self.log = log
        self.timeout = timeout
        self.cwd = cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalServer:
        cmd = [bentoml_executable() or "bentoml", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(self.port)]
        self._fh = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=self.cwd, env=self.env, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self) -> None:
        """Poll ``/readyz`` until it answers 200; stop early when the server exits or logs its start-up failure.

        Raises:
            RuntimeError: the server exited, or the service logged that it cannot start (log tail attached).
            TimeoutError: not ready after ``timeout`` seconds (log tail attached).
        """
        try:
            wait_until(self._ready, self.timeout, f"{self.url}/readyz")
        except TimeoutError:
            raise TimeoutError(f"service not ready after {self.timeout:.0f} s:\n{self.tail()}") from None

    def _ready(self) -> bool:
        """One readiness check; raises when waiting longer is pointless."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{self.tail()}")
        if STARTUP_FAILURE in self.tail(1 << 16):  # BentoML restarts a failing worker forever: stop waiting
            raise RuntimeError(f"the service failed to start:\n{self.tail()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        finally:
            self.proc = None
            self._fh.close()
