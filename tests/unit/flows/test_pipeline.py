"""Pure parts of the Prefect flows: which failures are retried, artifact keys, the best trial's config."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.states import Failed

from robustdx.core.config import parse_config
from robustdx.core.errors import ConfigError, DataError
from robustdx.flows.pipeline import _key, _link, _sweep_run_line, _transient, best_run_config
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConfigError("bad key"), False),
        (DataError("no such folder"), False),
        (FileNotFoundError("x"), False),
        (RuntimeError("CUDA out of memory"), True),
        (OSError("connection reset"), True),
    ],
)
def test_only_transient_failures_are_retried(error: Exception, retried: bool) -> None:
    assert _transient(None, None, Failed(data=error)) is retried


def test_artifact_keys_are_lowercase_dashes() -> None:
    assert _key("train-Retrain_2026.11/26 x") == "train-retrain-2026-11-26-x"
    assert _key("___") == "run"


def test_best_run_config_renames_and_applies_full_training_overrides(tmp_path: Path) -> None:
    best = parse_config(tiny_raw(tmp_path, tmp_path / "trials", name="trial_0001")).model_dump(mode="json")
    cfg = best_run_config(best, ["finetune.epochs=9"], str(tmp_path / "retrain"), "retrain-x")
    assert cfg.name == "retrain-x" and cfg.output_dir == tmp_path / "retrain"
    assert cfg.finetune.epochs == 9 and not cfg.progress
    with pytest.raises(ConfigError, match="finetune.epoch"):
        best_run_config(best, ["finetune.epoch=9"], str(tmp_path), "x")


def test_artifacts_point_at_the_mlflow_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert _sweep_run_line(tmp_path) == ""  # an untracked sweep says nothing
    (tmp_path / "mlflow-run-id").write_text("abc123\n")
    assert "parent run `abc123` in `http://127.0.0.1:5000`" in _sweep_run_line(tmp_path)
    monkeypatch.setenv("ROBUSTDX_TRACKING", "off")
    assert _sweep_run_line(tmp_path) == ""
    assert _link("http://h:5000/#/experiments/1/runs/r") == "[http://h:5000/#/experiments/1/runs/r](http://h:5000/#/experiments/1/runs/r)"
    assert _link("MLflow run r in sqlite:///x.db") == "MLflow run r in sqlite:///x.db"  # no link to a local file
