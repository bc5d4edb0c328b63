"""The tests' one process helper: a command in its own session, logging to a file, ready-checked over HTTP.

``make up`` runs its programs under supervisord (robustdx.flows.localstack); the tests start single
processes (a Prometheus, the service's ``serve.sh``, a worker) on free ports with :class:`Proc` and
:func:`start_on_free_port`, and get the system binaries they need through the set-up script
(:func:`install_tools`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from robustdx.core.util import free_port, wait_until
from tests.support.paths import REPO

INSTALL_TOOLS = REPO / "deploy" / "bin" / "install-tools.sh"


def install_tools(*groups: str) -> None:
    """``deploy/bin/install-tools.sh GROUP...``: installs the Debian packages when missing and we are root (CI);
    otherwise the test fails (never skips) with the script's message naming the command to run."""
    done = subprocess.run([str(INSTALL_TOOLS), *groups], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{INSTALL_TOOLS.relative_to(REPO)} {' '.join(groups)} failed:\n{done.stdout}{done.stderr}", pytrace=False)


@dataclass
class Proc:
    """One process in its own session (so its whole group can be stopped), logging to ``log``.

    ``ready`` is an HTTP path polled on ``url`` until it answers 2xx, or a predicate; the log's tail is
    attached to every failure. The command runs in ``cwd`` (the repository) with the interpreter's bin
    folder first on PATH, as the deploy/bin scripts expect."""

    name: str
    cmd: Sequence[str]
    log: Path
    port: int | None
    ready: str | Callable[[], bool] = "/"
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    timeout: float = 60.0
    unset: Sequence[str] = ()  # variables of this process's environment the command must not see
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ValueError(f"{self.name} listens on no port")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        """Spawn and wait until ready; stopped again when it never gets there. Idempotent: ``with
        start_on_free_port(...) as p`` enters a started process, which must not spawn a second one (it did, and
        the first, still serving the port, outlived the test)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        inherited = {k: v for k, v in os.environ.items() if k not in self.unset}
        env = {**inherited, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **self.env}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                list(self.cmd), cwd=self.cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_until(self._ready, self.timeout, f"{self.name} ready", interval=0.2)
        except TimeoutError as err:
            self.stop()
            raise TimeoutError(f"{err}\n{self.tail()}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"{self.name} exited with {code} before it was ready:\n{self.tail()}")
        if callable(self.ready):
            return self.ready()
        try:
            return httpx.get(self.url + self.ready, timeout=2).is_success
        except httpx.HTTPError:
            return False

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``timeout`` s; idempotent."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # stragglers of the group that ignored SIGTERM after the leader exited
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Proc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_on_free_port(
    name: str,
    cmd: Callable[[int], Sequence[str]],
    log: Path,
    ready: str = "/",
    env: Callable[[int], Mapping[str, str]] | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
) -> Proc:
    """Start ``cmd(port)`` on a free 127.0.0.1 port; retried on a new port when another process took
    the port between choosing it and binding it (the race every free-port helper has)."""
    for attempt in range(attempts):
        port = free_port()
        proc = Proc(name, cmd(port), log, port, ready=ready, env=env(port) if env else {}, timeout=timeout)
        try:
            return proc.start()
        except RuntimeError:
            if attempt + 1 < attempts and re.search(r"address already in use", proc.tail(), re.IGNORECASE):
                continue
            raise
    raise AssertionError("unreachable")
