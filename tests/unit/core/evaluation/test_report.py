"""Markdown run reports (core/evaluation/report.py): the run's settings, one table per stage, and the
test results of a classifier or the centroid accuracy of an encoder."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from robustdx.core.config import parse_config
from robustdx.core.evaluation.report import write_report
from robustdx.core.training.checkpoint import StageResult
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.unit

BUNDLE = SimpleNamespace(path=Path("runs/tiny/bundle"), version="0123456789ab")


def _stage(regime: str, monitor: str, key: str) -> StageResult:
    history = [{"epoch": 1, "train_loss": 0.7, key: 0.5, "lr": 0.003}, {"epoch": 2, "train_loss": 0.6, key: 0.625, "lr": 0.00255}]
    return StageResult(regime, monitor, 0.625, 2, history, seconds=1.25)


def test_classifier_report_has_the_settings_stage_tables_and_test_results(tmp_path: Path) -> None:
    cfg = parse_config(tiny_raw(tmp_path, tmp_path, name="demo"))
    stages = [_stage("adv_supcon", "val_centroid_acc", "val_centroid_acc"), _stage("finetune", "val_acc", "val_acc")]
    metrics = {
        "test": {"acc": 0.75, "bal_acc": 0.7, "auc": 0.8, "worst_group_acc": 0.6, "group_acc": {"0": 0.6, "1": 0.9}},
        "robust": {"n": 32, "robust_acc": 0.4},
    }
    text = write_report(tmp_path / "report.md", cfg, stages, metrics, BUNDLE).read_text()
    assert text.startswith("# robustdx run `demo`")
    assert "- recipe: **adv_supcon_ft**, seed 0" in text and "version `0123456789ab`" in text
    assert "ε = 4.00/255 (pixel), 2 steps" in text
    assert "## Stage `adv_supcon` — best val_centroid_acc 0.6250 at epoch 2 (1.2 s)" in text
    assert "| epoch | train_loss | val_centroid_acc | lr |\n|---|---|---|---|\n| 1 | 0.7000 | 0.5000 | 0.0030 |" in text
    assert "| epoch | train_loss | val_acc | lr |" in text
    assert "## Test results" in text
    assert "| accuracy | balanced acc | AUC | worst-group acc | robust acc (PGD-3, ε=4.0/255, n=32) |" in text
    assert "| 0.7500 | 0.7000 | 0.8000 | 0.6000 | 0.4000 |" in text
    assert "Per-group test accuracy: group 0: 0.600, group 1: 0.900" in text


def test_encoder_report_gives_the_centroid_accuracy(tmp_path: Path) -> None:
    cfg = parse_config(tiny_raw(tmp_path, tmp_path, recipe="supcon"))
    metrics = {"val": {"centroid_acc": 0.55}, "test": {"centroid_acc": 0.5}}
    text = write_report(tmp_path / "report.md", cfg, [_stage("supcon", "val_centroid_acc", "val_centroid_acc")], metrics, BUNDLE)
    assert "Encoder only (no classifier head): nearest-centroid accuracy val 0.5500, test 0.5000." in text.read_text()
