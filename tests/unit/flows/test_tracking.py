"""Pure parts of the MLflow tracking: where runs go, and what of a metrics tree becomes params and metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustdx.flows.tracking import DEFAULT_STORE, TrackedRun, artifact_root, flatten, numeric, tracking_uri

pytestmark = pytest.mark.unit


def test_where_runs_go() -> None:
    assert tracking_uri({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == "http://mlflow:5000"
    assert tracking_uri({}) == f"sqlite:///{DEFAULT_STORE.resolve() / 'mlflow.db'}"
    for off in ("off", "0", "false", "No"):
        assert tracking_uri({"ROBUSTDX_TRACKING": off, "MLFLOW_TRACKING_URI": "http://mlflow:5000"}) is None
    assert artifact_root("sqlite:////data/mlflow/mlflow.db") == Path("/data/mlflow/artifacts").as_uri()
    assert artifact_root("http://mlflow:5000") is None  # the server decides (--artifacts-destination)


def test_metrics_are_the_numeric_leaves() -> None:
    tree = {"test": {"acc": 0.9, "n": 120, "per_group": {"h1": 0.8}}, "robust": {"eps": 4 / 255, "ok": True, "note": "x"}}
    assert flatten(tree)["test.per_group.h1"] == 0.8
    assert numeric(tree) == {"test.acc": 0.9, "test.n": 120.0, "test.per_group.h1": 0.8, "robust.eps": 4 / 255}
    assert numeric({"a": None, "b": [1, 2]}) == {}


def test_a_null_run_does_nothing() -> None:
    run = TrackedRun()
    run.log_metrics({"x": 1.0})
    run.set_tags({"a": "b"})
    run.log_artifact(__file__)
    run.epoch_logger()({"stage": "ce", "epoch": 1, "loss": 0.5})
    assert not run.active and run.link is None


def test_links_to_a_server_run_page() -> None:
    run = TrackedRun(client=object(), run_id="r1", experiment_id="7", uri="http://127.0.0.1:5000/")
    assert run.link == "http://127.0.0.1:5000/#/experiments/7/runs/r1"
    local = TrackedRun(client=object(), run_id="r1", experiment_id="7", uri="sqlite:///x.db")
    assert local.link is not None and "mlflow ui --backend-store-uri sqlite:///x.db" in local.link
