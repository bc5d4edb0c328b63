"""The Prefect server and MLflow on a real PostgreSQL, as deploy/compose.yaml runs them.

A throwaway cluster (tests/support/postgres.py: the Debian package, started and stopped here) with the
databases ``prefect`` and ``mlflow`` created by the stack's deploy/postgres/init.sql; each server is the real
CLI in a subprocess on 127.0.0.1, given its database URL without a password and ``PGPASSWORD`` beside it (the
compose stack's mechanism: the password comes from a secret file, never from compose.yaml). Each test reads
its data back through the server's API *and* finds the rows in PostgreSQL, which proves that the server did
not fall back to SQLite.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from robustdx.core.util import free_port
from tests.support.paths import REPO
from tests.support.postgres import Cluster, postgres_cluster
from tests.support.procs import Proc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
# the session's conftest points MLflow at a SQLite file, and Prefect settings may leak in from the shell
DROP = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    """The databases made by the compose stack's own init script (deploy/postgres/init.sql)."""
    with postgres_cluster(databases=(), init_sql=REPO / "deploy" / "postgres" / "init.sql") as cluster:
        yield cluster


def server(
    name: str, cmd: Sequence[str], env: Mapping[str, str], log: Path, port: int, health: str, timeout: float = 150
) -> Proc:
    """``cmd`` (the tests' one process helper), ready when ``health`` on ``port`` answers; without the shell's
    Prefect and MLflow settings."""
    return Proc(name, cmd, log, port=port, ready=health, env=env, timeout=timeout, unset=DROP)


def test_prefect_server_keeps_its_flow_runs_in_postgres(postgres: Cluster, tmp_path: Path) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    port = free_port()
    env = {
        **postgres.env,
        "PREFECT_HOME": str(tmp_path / "server_home"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.prefect_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    api = f"http://127.0.0.1:{port}/api"
    marker = uuid.uuid4().hex

    @flow(name="robustdx-postgres-check", persist_result=False)
    def tiny(x: int) -> int:
        return x + 1

    with server("prefect", cmd, env, tmp_path / "prefect.log", port, "/api/health"):
        home = tmp_path / "client_home"
        settings = {PREFECT_API_URL: api, PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "storage"}
        with temporary_settings(settings):
            state = tiny.with_options(flow_run_name=f"pg-{marker}")(41, return_state=True)
            assert state.is_completed() and state.result() == 42
            run_id = state.state_details.flow_run_id
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(run_id)
        assert run.state is not None and run.state.type.value == "COMPLETED"
        assert run.name == f"pg-{marker}" and run.parameters == {"x": 41}

        with postgres.connect("prefect") as conn:
            row = conn.execute(
                "SELECT fr.name, fr.state_type::text, f.name FROM flow_run fr JOIN flow f ON f.id = fr.flow_id WHERE fr.id = %s",
                (run_id,),
            ).fetchone()
            states = [
                r[0]
                for r in conn.execute(
                    "SELECT type::text FROM flow_run_state WHERE flow_run_id = %s ORDER BY timestamp", (run_id,)
                )
            ]
        assert row == (f"pg-{marker}", "COMPLETED", "robustdx-postgres-check")
        assert states[-1] == "COMPLETED" and "RUNNING" in states
    assert not list((tmp_path / "server_home").glob("*.db")), "the server must not have created a SQLite database"


def test_mlflow_server_keeps_runs_in_postgres_and_artifacts_in_its_destination(postgres: Cluster, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    port = free_port()
    artifacts = tmp_path / "artifacts"
    cmd = [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", postgres.mlflow_url,
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    mlflow_env = {**postgres.env, "HOME": str(tmp_path)}
    with server("mlflow", cmd, mlflow_env, tmp_path / "mlflow.log", port, "/health", timeout=240):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment(f"pg-{uuid.uuid4().hex[:8]}")
        run = client.create_run(experiment, run_name="postgres-check")
        run_id = run.info.run_id
        client.log_param(run_id, "epsilon", "0.0313")
        for step, loss in enumerate([0.9, 0.5, 0.25]):
            client.log_metric(run_id, "train/loss", loss, step=step)
        report = tmp_path / "report.md"
        report.write_text("# robust accuracy 0.73\n")
        client.log_artifact(run_id, str(report))
        client.set_terminated(run_id)

        got = client.get_run(run_id)
        assert got.data.params == {"epsilon": "0.0313"} and got.info.status == "FINISHED"
        history = client.get_metric_history(run_id, "train/loss")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 0.9), (1, 0.5), (2, 0.25)]
        assert [a.path for a in client.list_artifacts(run_id)] == ["report.md"]
        downloaded = Path(client.download_artifacts(run_id, "report.md", str(tmp_path / "download")))
        assert downloaded.read_text() == report.read_text()

        with postgres.connect("mlflow") as conn:
            runs = conn.execute("SELECT name, status, experiment_id::text FROM runs WHERE run_uuid = %s", (run_id,)).fetchall()
            metrics = conn.execute(
                "SELECT step, value FROM metrics WHERE run_uuid = %s AND key = 'train/loss' ORDER BY step", (run_id,)
            ).fetchall()
            params = conn.execute("SELECT key, value FROM params WHERE run_uuid = %s", (run_id,)).fetchall()
        assert runs == [("postgres-check", "FINISHED", experiment)]
        assert metrics == [(0, 0.9), (1, 0.5), (2, 0.25)] and params == [("epsilon", "0.0313")]
    # the server proxied the upload into --artifacts-destination (no artifact went to the client's disk)
    assert [p.read_text() for p in artifacts.rglob("report.md")] == [report.read_text()]
