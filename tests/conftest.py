"""Shared fixtures: synthetic data sets in the real on-disk formats and tiny run configs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from robustdx.core.config import RunConfig, parse_config
from robustdx.core.data.synthetic import write_busi, write_camelyon17

# Fixtures of the monitoring stack (Prometheus, Alertmanager, Pushgateway, a served model, the alert
# receiver), used by tests/deploy and by the alert -> retrain end-to-end test.
pytest_plugins = ["tests.deploy.stack"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    """One thread: test tensors are tiny, and on a shared 2-core machine two threads mostly wait
    for each other (5-100x slower PGD steps, measured). Subprocesses (CLI tests) use torch's default."""
    torch.set_num_threads(1)


def synthetic_camelyon(factory: pytest.TempPathFactory, per_class: int, size: int) -> Path:
    """Write a synthetic WILDS Camelyon17 copy (5 hospitals x 2 classes x ``per_class``) in a temp folder."""
    root = factory.mktemp(f"camelyon17_{per_class}x{size}")
    write_camelyon17(root, per_class=per_class, size=size, seed=0)
    return root


@pytest.fixture(scope="session")
def camelyon_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic copy: 24 patches of 48 px per class and hospital."""
    return synthetic_camelyon(tmp_path_factory, per_class=24, size=48)


@pytest.fixture(scope="session")
def learnable_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough synthetic data (60 patches of 32 px per class and hospital) for a tiny CNN to learn in
    seconds: 0.81 in-distribution validation accuracy after 8 adversarial epochs, against 0.46 untrained."""
    return synthetic_camelyon(tmp_path_factory, per_class=60, size=32)


def learnable_raw(root: Path, out: Path, **over: Any) -> dict[str, Any]:
    """``tiny_raw`` at 32 px on whole epochs, validated in distribution: a config that learns."""
    raw = tiny_raw(root, out, **over)
    raw["data"].update(image_size=32, batch_size=32, val_split="id_val")
    for stage in ("pretrain", "finetune"):
        raw[stage].setdefault("max_steps_per_epoch", None)
        if raw[stage]["max_steps_per_epoch"] == 3:
            raw[stage]["max_steps_per_epoch"] = None
    return raw


def write_tiny_sweep(folder: Path, data: Path, name: str) -> Path:
    """A two-trial FIFO sweep over the training ε on the learnable set (2 + 2 epochs per trial), written
    with its base run config into ``folder``; results go to ``folder/sweeps``."""
    base = folder / "base.yaml"
    raw = learnable_raw(data, folder / "runs", name=f"{name}-base", pretrain__epochs=2, finetune__epochs=2)
    base.write_text(yaml.safe_dump(raw))
    sweep = {
        "name": name,
        "base": str(base),
        "space": {"eps": ["2/255", "4/255"], "lr": {"choices": [0.003]}},
        "num_samples": 2,
        "search": "random",
        "scheduler": "fifo",
        "val_robust_n": 16,
        "num_cpus": 2,
        "storage_path": str(folder / "sweeps"),
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.fixture(scope="session")
def busi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic BUSI copy (original layout, masks beside images)."""
    root = tmp_path_factory.mktemp("busi")
    write_busi(root, n_benign=20, n_malignant=20, n_normal=10, height=48, width=64, seed=0)
    return root


def tiny_raw(root: Path, out: Path, **over: Any) -> dict[str, Any]:
    """A raw config mapping for a tiny, fast run on the synthetic Camelyon17 copy."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "recipe": "adv_supcon_ft",
        "output_dir": str(out),
        "progress": False,
        "data": {"dataset": "camelyon17", "root": str(root), "image_size": 16, "batch_size": 16, "eval_batch_size": 64},
        "model": {"arch": "test_cnn", "proj_dim": 16, "head_hidden": 16},
        "attack": {"eps": "4/255", "steps": 2},
        "eval_attack": {"eps": "4/255", "steps": 3},
        "pretrain": {"epochs": 2, "lr": 0.003, "max_steps_per_epoch": 3},
        "finetune": {"epochs": 2, "lr": 0.003, "max_steps_per_epoch": 3},
        "n_reference": 32,
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    return raw


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
