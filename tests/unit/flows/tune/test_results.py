"""A sweep's result rows (:mod:`robustdx.flows.tune.results`): best epoch and work across worker sessions, the
CSV columns, the plot and the best trial's tie-break."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robustdx.core.config.sweep import Objective
from robustdx.core.util import write_csv
from robustdx.flows.tune.results import best_row, plot_scores, trial_row
from tests.support.sweeps import EPS2, EPS4, EPS8

pytestmark = pytest.mark.unit


def _report(epoch: int, score: float, pid: int, start: int, iteration: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "score": score,
        "epoch": epoch,
        "epochs_done": 2 + epoch,
        "session_start_epochs": start,
        "pid": pid,
        "training_iteration": iteration or epoch,
        "val_acc": score + 0.1,
        "val_robust_acc": score - 0.1,
        **extra,
    }


def test_trial_row_best_epoch_and_work_across_sessions() -> None:
    # 2 pretrain + 4 fine-tuning epochs; the first worker reported epochs 1-2 and died after training epoch 3;
    # the second resumed from the epoch-2 checkpoint (4 epochs on disk) and trained epochs 3 and 4
    reports = [_report(1, 0.6, 10, 0), _report(2, 0.8, 10, 0), _report(3, 0.7, 11, 4), _report(4, 0.75, 11, 4)]
    row = trial_row("t0", {"eps": EPS4}, reports, None, epochs=6)
    assert list(row)[:3] == ["trial_id", "status", "eps"]
    assert row["status"] == "completed" and row["score"] == 0.8 and row["best_epoch"] == 2
    assert (row["val_acc"], row["val_robust_acc"]) == (pytest.approx(0.9), pytest.approx(0.7))
    assert (row["iterations"], row["trial_epochs"], row["epochs_trained"], row["sessions"]) == (4, 6, 4 + 2, 2)
    stopped = trial_row("t1", {"eps": EPS4}, reports[:2], None, epochs=6)
    assert stopped["status"] == "stopped" and stopped["trial_epochs"] == 4
    assert trial_row("t2", {"eps": EPS4}, [], "ValueError: boom", epochs=6)["status"] == "error"
    none = trial_row("t3", {"eps": EPS4}, [], None, epochs=6)
    assert none["status"] == "not started" and none["score"] is None and none["trial_epochs"] is None


def test_csv_and_plot(tmp_path: Path) -> None:
    rows = [
        trial_row("a", {"eps": EPS2, "lr": 1e-3}, [_report(1, 0.6, 1, 0), _report(2, 0.7, 1, 0)], None, 4),
        trial_row("b", {"eps": EPS8, "lr": 3e-4}, [_report(1, 0.5, 2, 0)], None, 4),
        trial_row("c", {"eps": EPS4, "lr": 2e-3}, [], "RuntimeError: x", 4),
    ]
    path = write_csv(tmp_path / "t.csv", rows)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("trial_id,status,eps,lr,score,") and len(lines) == 4
    png = plot_scores(tmp_path / "p.png", rows, ["eps", "lr"], Objective.ROBUST_MEAN)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_best_row_breaks_ties_by_trial_order_not_finishing_order() -> None:
    rows = [
        {"trial_id": "ab12c_00002", "score": 0.9},
        {"trial_id": "ab12c_00001", "score": 0.9},
        {"trial_id": "ab12c_00000", "score": 0.8},
    ]
    assert best_row(rows)["trial_id"] == "ab12c_00001"
    assert best_row(list(reversed(rows)))["trial_id"] == "ab12c_00001"
    assert best_row([*rows, {"trial_id": "ab12c_00003", "score": 0.95}])["trial_id"] == "ab12c_00003"
