"""Shared fixtures: synthetic data sets in the real on-disk formats and tiny run configs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from robustdx.core.config import RunConfig, parse_config
from robustdx.core.data.synthetic import write_busi
from tests.support.configs import synthetic_camelyon, tiny_raw

# BentoML posts usage statistics from every process that saves or serves a model, unless told not to; here
# nothing outside is reachable and each attempt waits for its timeout. Set before BentoML is imported (it
# caches the answer); subprocesses inherit it.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

# Fixtures of the monitoring stack (Prometheus, Alertmanager, Pushgateway, a served model, the alert
# receiver), used by tests/deploy and by the alert -> retrain end-to-end test.
pytest_plugins = ["tests.deploy.stack"]



def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``gpu`` tests where there is no CUDA device; run them where there is one.

    A ``-m`` expression that names ``gpu`` (``make test-gpu``) selects them everywhere, so asking for
    the GPU tests on a machine without CUDA fails loudly instead of passing by deselection."""
    if torch.cuda.is_available() or "gpu" in (config.getoption("markexpr") or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every run the tests track goes to one session database, never to the checkout's ``runs/mlflow``.

    Set in the environment, so the CLI and flow subprocesses the tests start track there too; the tests of
    tracking itself read it back (:func:`robustdx.flows.tracking.tracking_uri`)."""
    store = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        mp.delenv("ROBUSTDX_TRACKING", raising=False)
        yield store


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    """One thread: test tensors are tiny, and on a shared 2-core machine two threads mostly wait
    for each other (5-100x slower PGD steps, measured). Subprocesses (CLI tests) use torch's default."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def camelyon_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic copy: 24 patches of 48 px per class and hospital."""
    return synthetic_camelyon(tmp_path_factory, per_class=24, size=48)


@pytest.fixture(scope="session")
def learnable_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough synthetic data (60 patches of 32 px per class and hospital) for a tiny CNN to learn in
    seconds: 0.81 in-distribution validation accuracy after 8 adversarial epochs, against 0.46 untrained."""
    return synthetic_camelyon(tmp_path_factory, per_class=60, size=32)


@pytest.fixture(scope="session")
def busi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic BUSI copy (original layout, masks beside images)."""
    root = tmp_path_factory.mktemp("busi")
    write_busi(root, n_benign=20, n_malignant=20, n_normal=10, height=48, width=64, seed=0)
    return root


@pytest.fixture
def tiny_config(camelyon_root: Path, tmp_path: Path) -> RunConfig:
    return parse_config(tiny_raw(camelyon_root, tmp_path / "runs"))


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server for the session: Prefect's test harness (a subprocess on 127.0.0.1 with
    a temporary SQLite database), with its own PREFECT_HOME and result storage. Yields the API URL."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect_home")
    settings = {PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "storage", PREFECT_SERVER_ANALYTICS_ENABLED: False}
    with temporary_settings(settings), prefect_test_harness(server_startup_timeout=90):
        yield str(PREFECT_API_URL.value())
