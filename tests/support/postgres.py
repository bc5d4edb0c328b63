"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests: the Debian package's ``initdb`` / ``pg_ctl``.

:func:`postgres_cluster` initialises a cluster in a fresh temporary folder, starts it on a free port (TCP on
127.0.0.1 only, its Unix socket in that folder), creates the databases asked for, and always stops it and
removes the folder again. The server refuses to run as root, so as root (CI) ``initdb`` and ``pg_ctl`` run as
the ``postgres`` user (``runuser -u postgres --``), which owns the folder.

Authentication is the compose stack's: connections over TCP need the password (scram-sha-256), and the
URLs carry none, as in deploy/compose.yaml, where the servers get it from ``PGPASSWORD`` (read from a
secret file); asyncpg (Prefect) and libpq (psycopg, MLflow) both read that variable. :attr:`Cluster.env`
is that environment for a subprocess.

Missing binaries are installed by ``deploy/bin/install-tools.sh postgres`` (as root), otherwise the test
fails with the script's message, never skips.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from robustdx.core.util import free_port
from tests.support.procs import install_tools

USER = "robustdx"
DATABASES = ("prefect", "mlflow")


@dataclass(frozen=True)
class Cluster:
    """A running cluster: user :data:`USER` with ``password``, on ``127.0.0.1:port``."""

    port: int
    password: str
    data_dir: Path

    def url(self, database: str, driver: str = "postgresql") -> str:
        """``driver://robustdx@127.0.0.1:port/database``, without the password (it comes from ``PGPASSWORD``)."""
        return f"{driver}://{USER}@127.0.0.1:{self.port}/{database}"

    @property
    def prefect_url(self) -> str:
        """What Prefect's server reads from ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` (async driver)."""
        return self.url("prefect", "postgresql+asyncpg")

    @property
    def mlflow_url(self) -> str:
        """What ``mlflow server --backend-store-uri`` takes (SQLAlchemy with psycopg 3)."""
        return self.url("mlflow", "postgresql+psycopg")

    @property
    def env(self) -> dict[str, str]:
        """The environment a client process needs beside the URL."""
        return {"PGPASSWORD": self.password}

    def connect(self, database: str):  # -> psycopg.Connection
        """A psycopg connection (autocommit) to ``database``."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname=database, autocommit=True
        )


def bin_dir() -> Path | None:
    """The folder of ``initdb`` / ``pg_ctl`` / ``postgres``: on PATH, else Debian's /usr/lib/postgresql/<major>/bin."""
    names = ("initdb", "pg_ctl", "postgres")
    found = [shutil.which(n) for n in names]
    if all(found):
        return Path(os.path.realpath(found[0])).parent  # type: ignore[arg-type]
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if all((Path(folder) / n).exists() for n in names):
            return Path(folder)
    return None


def ensure_binaries() -> Path:
    """:func:`bin_dir`, after ``deploy/bin/install-tools.sh postgres`` when they are missing (fails the test
    with the script's message when it cannot install them)."""
    folder = bin_dir()
    if folder is None:
        install_tools("postgres")
        folder = bin_dir()
        if folder is None:
            pytest.fail("deploy/bin/install-tools.sh postgres succeeded, but initdb/pg_ctl are still not found", pytrace=False)
    return folder


def _as_server_user(cmd: Sequence[str]) -> list[str]:
    """As root, run ``cmd`` as the ``postgres`` user (the server refuses root); else as ourselves."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


def _run(cmd: Sequence[str], what: str, timeout: float = 120) -> None:
    done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stdout}{done.stderr}")


def statements(sql: str) -> list[str]:
    """The statements of a plain SQL script (``--`` comments dropped), to run one by one: ``CREATE DATABASE``
    cannot run inside the transaction that a multi-statement query string implies."""
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


@contextmanager
def postgres_cluster(databases: Sequence[str] = DATABASES, init_sql: Path | None = None, attempts: int = 3) -> Iterator[Cluster]:
    """Start a cluster, create ``databases`` and run the statements of ``init_sql`` (as user robustdx, as the
    postgres image runs /docker-entrypoint-initdb.d), yield it, and stop it (also on failure) and delete it."""
    folder = ensure_binaries()
    root = Path(tempfile.mkdtemp(prefix="robustdx-pg-"))
    data, sock, log, pwfile = root / "data", root / "sock", root / "server.log", root / "pwfile"
    password = secrets.token_urlsafe(24)
    started = False
    try:
        sock.mkdir()
        pwfile.write_text(password + "\n")
        if os.geteuid() == 0:  # the postgres user owns everything the server touches
            pg = pwd.getpwnam("postgres")
            for path in (root, sock, pwfile):
                os.chown(path, pg.pw_uid, pg.pw_gid)
        os.chmod(root, 0o700)
        initdb = [str(folder / "initdb"), "-D", str(data), "-U", USER, "-E", "UTF8", "--no-sync", f"--pwfile={pwfile}"]
        # the Unix socket (in our 0700 folder) trusts; TCP needs the password, as in compose
        _run([*initdb, "--auth-local=trust", "--auth-host=scram-sha-256"], "initdb")
        for attempt in range(attempts):
            port = free_port()
            options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
            try:
                _run(
                    [str(folder / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
                    "pg_ctl start",
                )
            except RuntimeError as err:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                if attempt + 1 < attempts and "already in use" in tail:
                    continue
                raise RuntimeError(f"{err}\n{tail}") from None
            started = True
            break
        cluster = Cluster(port=port, password=password, data_dir=data)
        with cluster.connect("postgres") as conn:
            for name in databases:
                conn.execute(f'CREATE DATABASE "{name}"')
            for statement in statements(init_sql.read_text()) if init_sql else []:
                conn.execute(statement)
        yield cluster
    finally:
        if started:
            try:
                _run([str(folder / "pg_ctl"), "-D", str(data), "-w", "-t", "30", "-m", "fast", "stop"], "pg_ctl stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                _run([str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], "pg_ctl stop -m immediate", timeout=60)
        shutil.rmtree(root, ignore_errors=True)
