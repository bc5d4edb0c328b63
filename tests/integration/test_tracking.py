"""MLflow tracking of trainings (:mod:`robustdx.flows.tracking`) against a real MLflow store (SQLite, each test its
own database), read back through MLflow's own client: what a user browsing the MLflow UI would see."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
from mlflow import MlflowClient

from robustdx.core.config import RunConfig
from robustdx.core.errors import DataError
from robustdx.core.release.bundle import MANIFEST, WEIGHTS
from robustdx.flows import tracking

pytestmark = [pytest.mark.integration]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri)


def _only_run(client: MlflowClient, experiment: str) -> object:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_a_training_is_one_run_with_its_config_epochs_bundle_and_documents(
    tiny_config: RunConfig, store: MlflowClient
) -> None:
    result, tracked = tracking.train_tracked(tiny_config)

    run = _only_run(store, tracking.TRAIN)
    assert run.info.run_id == tracked.run_id and run.info.status == "FINISHED"
    assert run.data.params["recipe"] == "adv_supcon_ft" and run.data.params["attack.steps"] == "2"
    # 2 pretraining epochs, then 2 fine-tuning epochs at steps 3 and 4: one axis across the stages
    assert [m.step for m in store.get_metric_history(run.info.run_id, "adv_supcon/lr")] == [1, 2]
    finetune = store.get_metric_history(run.info.run_id, "finetune/val_acc")
    assert [m.step for m in finetune] == [3, 4]
    assert [m.value for m in finetune][-1] == pytest.approx(
        json.loads((result.run_dir / "2-finetune" / "metrics.jsonl").read_text().splitlines()[-1])["val_acc"]
    )
    assert run.data.metrics["test.acc"] == pytest.approx(result.metrics["test"]["acc"])
    assert run.data.metrics["robust.robust_acc"] == pytest.approx(result.metrics["robust"]["robust_acc"])
    manifest = json.loads((result.bundle / MANIFEST).read_text())
    assert run.data.tags["bundle_weights_sha256"] == manifest["files"][WEIGHTS]["sha256"]
    assert run.data.tags["bundle"] == str(result.bundle)
    files = {a.path for a in store.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "MODEL_CARD.md"} <= files


def test_a_failed_training_is_a_failed_run(tiny_config: RunConfig, store: MlflowClient, tmp_path: Path) -> None:
    broken = tiny_config.model_copy(update={"data": tiny_config.data.model_copy(update={"root": tmp_path / "nowhere"})})
    with pytest.raises(DataError):
        tracking.train_tracked(broken)
    assert _only_run(store, tracking.TRAIN).info.status == "FAILED"


def test_switched_off_nothing_is_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROBUSTDX_TRACKING", "off")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}")
    with tracking.tracked_run(tracking.TRAIN, "off") as run:
        run.log_metrics({"x": 1.0})
    assert not run.active and run.link is None
    assert not (tmp_path / "db").exists()


def test_an_unreachable_server_costs_a_warning_not_the_work(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    done = False
    with caplog.at_level(logging.WARNING, logger=tracking.__name__), tracking.tracked_run(tracking.TRAIN, "x") as run:
        run.log_metrics({"x": 1.0})
        run.set_tags({"a": "b"})
        done = True
    assert done and not run.active
    assert "does not answer" in caplog.text


def test_a_resumed_run_continues_the_same_mlflow_run(store: MlflowClient) -> None:
    with tracking.tracked_run(tracking.SWEEP, "s") as first:
        first.log_metrics({"x": 1.0}, step=1)
    with tracking.tracked_run(tracking.SWEEP, "s", resume=first.run_id) as second:
        second.log_metrics({"x": 2.0}, step=2)
    with tracking.tracked_run(tracking.SWEEP, "t", resume="no-such-run") as third:
        pass
    assert second.run_id == first.run_id and third.run_id != first.run_id
    assert [m.value for m in store.get_metric_history(first.run_id, "x")] == [1.0, 2.0]
