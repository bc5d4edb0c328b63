"""Ray Tune sweeps for real, on a tiny model: an in-process sweep on a local Ray, and a sweep on a Ray
local cluster (``ray start --head`` on 127.0.0.1) whose driver is killed with SIGKILL half-way and then
resumed by running the same command again."""

from __future__ import annotations

import csv
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from robustdx.core.config import load_config
from robustdx.core.config.sweep import SweepConfig
from robustdx.core.util import free_port
from robustdx.flows.tune.driver import load_sweep, run_sweep
from tests.support.configs import tiny_raw
from tests.support.paths import REPO

pytestmark = pytest.mark.integration

PRETRAIN_EPOCHS = 1


def write_sweep(tmp_path: Path, camelyon_root: Path, finetune_epochs: int, **over: Any) -> Path:
    """A tiny adv-SupCon + fine-tune sweep file (and its base run config) in ``tmp_path``: 32 px, whole epochs
    (9 batches), about a second of training per trial, so that trials differ in score."""
    run = tiny_raw(camelyon_root, tmp_path / "unused-runs", name="base")
    run["data"]["image_size"] = 32
    run["pretrain"].update(epochs=PRETRAIN_EPOCHS, max_steps_per_epoch=None)
    run["finetune"].update(epochs=finetune_epochs, max_steps_per_epoch=None)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(run))
    sweep: dict[str, Any] = {
        "name": "tiny",
        "base": "base.yaml",  # resolved next to the sweep file
        "space": {"eps": ["2/255", "8/255"], "steps": [1, 2], "lr": {"low": 3e-4, "high": 3e-3}},
        "num_samples": 4,
        "search": "random",
        "scheduler": "asha",
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "val_robust_n": 16,
        "num_cpus": 2,
        "storage_path": str(tmp_path / "sweeps"),
        "seed": 0,
    }
    sweep.update(over)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_sweep_on_local_ray_writes_table_plot_and_best_config(
    camelyon_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    sweep, base = load_sweep(write_sweep(tmp_path, camelyon_root, finetune_epochs=4))
    result = run_sweep(sweep)

    assert result.results_dir == sweep.experiment_dir
    assert len(result.rows) == 4 and len(read_csv(result.trials_csv)) == 4
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = [r["score"] for r in result.rows]
    assert all(s is not None and 0 <= s <= 1 for s in scores)
    assert result.best_score == max(scores)
    best_row = next(r for r in result.rows if r["score"] == result.best_score)
    assert result.best_params == {k: best_row[k] for k in ("eps", "steps", "lr")}
    full = PRETRAIN_EPOCHS + 4
    for row in result.rows:
        assert row["status"] in ("completed", "stopped"), row
        assert row["iterations"] == row["trial_epochs"] - PRETRAIN_EPOCHS  # one Tune iteration per fine-tuning epoch
        assert (row["status"] == "completed") == (row["trial_epochs"] == full)
        assert row["epochs_trained"] == row["trial_epochs"] and row["sessions"] == 1
        assert abs(row["score"] - (row["val_acc"] + row["val_robust_acc"]) / 2) < 1e-9  # objective robust_mean
        # each trial trained with its own training eps; the serving eps (eval_attack) is the base's in all of them
        trial_cfg = load_config(sweep.experiment_dir / "runs" / row["trial_id"] / "config.yaml")
        assert trial_cfg.attack.eps == pytest.approx(row["eps"]) and trial_cfg.attack.steps == row["steps"]
        assert trial_cfg.eval_attack == base.eval_attack
    assert any(r["status"] == "completed" for r in result.rows)  # ASHA always lets the leader finish
    assert result.total_trial_epochs == sum(r["trial_epochs"] for r in result.rows)

    best = load_config(result.best_yaml)
    assert best == result.best_config
    assert best.name == "tiny-best" and best.output_dir == base.output_dir
    assert best.attack.eps == pytest.approx(result.best_params["eps"]) and best.attack.steps == result.best_params["steps"]
    assert best.pretrain.lr == pytest.approx(result.best_params["lr"]) == best.finetune.lr  # finetune_lr_scale 1
    assert best.eval_attack == base.eval_attack and best.val_robust_n == 16 and best.monitor == "robust_mean"

    # running the finished sweep again restores it and trains nothing
    again = run_sweep(sweep)
    assert again.total_trial_epochs == result.total_trial_epochs and again.best_score == result.best_score
    assert [r["epochs_trained"] for r in again.rows] == [r["epochs_trained"] for r in result.rows]

    # MLflow: one parent run per sweep (the restore continued it), one child run per trial with its reports
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("robustdx-sweep").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.info.run_id == (sweep.experiment_dir / "mlflow-run-id").read_text()
    assert parent.data.metrics["best_score"] == pytest.approx(result.best_score)
    assert {"trials.csv", "best.yaml", "score_vs_params.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "score")) >= 1


# ------------------------------------------------------------------------------- local cluster


@dataclass
class Cluster:
    address: str
    pid: int  # of the blocking `ray start` process; every Ray process of the cluster descends from it
    env: dict[str, str]  # what a driver needs to join: RAY_ADDRESS and the cluster's own auth token

    def processes(self) -> list[Any]:
        import psutil

        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def trial_processes(self) -> list[Any]:
        """Live worker processes running a trial (Ray titles them ``ray::ImplicitFunc...`` or the trainable's name)."""
        found = []
        for p in self.processes():
            try:
                title = " ".join(p.cmdline())
            except Exception:  # noqa: BLE001 - exited meanwhile
                continue
            if "ImplicitFunc" in title or "robustdx_trial" in title:
                found.append(p)
        return found


@contextmanager
def ray_cluster(num_cpus: int = 2) -> Iterator[Cluster]:
    """A Ray head on 127.0.0.1 started as a real process, stopped at the end (even on failure).

    Not ``ray stop``: that stops every Ray on the machine. The head runs with ``--block`` in its own
    session; its process group is killed, then any descendant left (workers call setsid). Its temp dir is
    short because Ray's unix sockets live below it; every port is a free one, so that parallel test runs
    on one machine do not collide."""
    import psutil

    tmp = Path(tempfile.mkdtemp(prefix="rdx-ray-", dir="/tmp"))
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        f"--num-cpus={num_cpus}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--temp-dir={tmp}",
        *(
            f"--{flag}={free_port()}"
            for flag in (
                "dashboard-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
                "node-manager-port",
                "object-manager-port",
            )
        ),
    ]
    # Token authentication with a token of this cluster only (Ray would otherwise use ~/.ray/auth_token when it
    # exists, and a driver must then be told the mode explicitly).
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    log = tmp / "ray-start.log"
    with open(log, "w") as fh:
        head = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **auth})
    cluster = Cluster(f"127.0.0.1:{port}", head.pid, {**os.environ, **auth, "RAY_ADDRESS": f"127.0.0.1:{port}"})
    try:
        deadline = time.time() + 90
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield cluster
    finally:
        family = cluster.processes()
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        _, alive = psutil.wait_procs([p for p in family if p.is_running()], timeout=10)
        for p in alive:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _tune_cmd(sweep_file: Path) -> list[str]:
    return [sys.executable, "-m", "robustdx.cli", "sweep", "--config", str(sweep_file)]


def _saved_checkpoints(experiment: Path) -> int:
    """Trials whose latest checkpoint the driver's saved experiment state already records."""
    n = 0
    for state in glob.glob(str(experiment / "experiment_state-*.json")):
        try:
            trials = json.loads(Path(state).read_text())["trial_data"]
        except (json.JSONDecodeError, OSError):
            continue  # being written
        for _, meta in trials:
            last = (json.loads(meta) if isinstance(meta, str) else meta).get("last_result") or {}
            n += bool(last.get("checkpoint_dir_name"))
    return n


def _reports(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """Every result each trial reported, across driver sessions (Tune appends to result.json)."""
    out = {}
    for path in experiment.glob("robustdx_trial_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


@pytest.mark.slow
def test_sweep_on_a_local_cluster_resumes_after_the_driver_is_killed(camelyon_root: Path, tmp_path: Path) -> None:
    """``ray start --head`` cluster; the driver runs as ``robustdx sweep`` with RAY_ADDRESS, is killed
    with SIGKILL once a trial's checkpoint is recorded, and the same command then finishes the sweep: every trial
    completes, and the trials running at the kill resume from their checkpoints rather than from epoch 0."""
    finetune_epochs = 6  # a kill window of several epochs after the first recorded checkpoint
    sweep_file = write_sweep(tmp_path, camelyon_root, finetune_epochs, scheduler="fifo", max_concurrent=2, name="cluster")
    sweep = SweepConfig.model_validate(yaml.safe_load(sweep_file.read_text()))
    experiment = sweep.experiment_dir
    with ray_cluster() as cluster:
        env = cluster.env
        with open(tmp_path / "driver-1.log", "w") as fh:
            driver = subprocess.Popen(
                _tune_cmd(sweep_file), env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.time() + 150
        while _saved_checkpoints(experiment) < 1:
            if driver.poll() is not None or time.time() > deadline:
                pytest.fail(f"no trial checkpoint before the driver ended:\n{(tmp_path / 'driver-1.log').read_text()[-4000:]}")
            time.sleep(0.1)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        assert not (experiment / "trials.csv").exists(), "killed too late: the sweep had finished"
        before = _reports(experiment)
        deadline = time.time() + 60  # the cluster ends the dead driver's trial actors; wait before resuming
        while cluster.trial_processes() and time.time() < deadline:
            time.sleep(0.2)

        resumed = subprocess.run(_tune_cmd(sweep_file), env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
        assert "resuming the sweep" in resumed.stdout

    rows = read_csv(experiment / "trials.csv")
    full = PRETRAIN_EPOCHS + finetune_epochs
    assert len(rows) == 4 and all(r["status"] == "completed" and int(r["trial_epochs"]) == full for r in rows), rows
    reports = _reports(experiment)
    unfinished = [t for t, rs in before.items() if rs[-1]["epoch"] < finetune_epochs]
    assert unfinished, f"no trial was interrupted mid fine-tuning: {before}"
    for trial in unfinished:
        later = [r for r in reports[trial] if r["pid"] != before[trial][0]["pid"]]
        assert later, f"trial {trial} was not resumed"
        # resumed from its checkpoint: the new session started past pretraining and past the last recorded epoch
        assert later[0]["session_start_epochs"] > PRETRAIN_EPOCHS, later[0]
        assert later[0]["epoch"] > 1 and later[0]["training_iteration"] == later[0]["epoch"]
    trained = sum(int(r["epochs_trained"]) for r in rows)
    assert trained < 2 * full * 4, rows
