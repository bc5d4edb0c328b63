"""The paper-table experiment's aggregation and plots (core/evaluation/experiment.py) on hand-made cells:
one CSV row per cell, mean ± std per recipe, and PNG plots drawn without pyplot or a backend switch.
(Training and scoring real cells end to end is tests/integration/test_experiment.py.)"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import matplotlib
import pytest

from robustdx.core.evaluation.experiment import cell_row, plot_curves, summarise

pytestmark = pytest.mark.unit


def _cell(recipe: str, seed: int, acc: float) -> dict[str, Any]:
    history = [{"epoch": e, "val_acc": acc - 0.1 / e} for e in (1, 2)]
    return {
        "recipe": recipe,
        "seed": seed,
        "train_seconds": 2.0,
        "test": {"acc": acc, "acc_ci": [acc - 0.1, acc + 0.1], "auc": 0.8, "bal_acc": acc, "ece": 0.05},
        "robustness": [{"eps": 0.0, "robust_acc": acc}, {"eps": 8 / 255, "robust_acc": acc / 2}],
        "square": {"robust_acc": acc / 3},
        "flags": ["a", "b"] if seed else [],
        "attribution": {"clean": {"region_mass": 0.4}, "attacked": {"region_mass": 0.3}, "infidelity": 0.01},
        "history": [{"regime": "ce", "monitor": "val_acc", "history": history}],
    }


def test_cell_row_flattens_a_cell() -> None:
    row = cell_row(_cell("ce", 1, 0.8))
    assert row["test_acc"] == 0.8 and (row["test_acc_lo"], row["test_acc_hi"]) == pytest.approx((0.7, 0.9))
    assert row["robust_acc@0/255"] == 0.8 and row["robust_acc@8/255"] == 0.4
    assert row["square_acc"] == pytest.approx(0.8 / 3) and row["worst_group_acc"] != row["worst_group_acc"]  # NaN
    assert row["ig_clean_region_mass"] == 0.4 and row["ig_attacked_region_mass"] == 0.3 and row["infidelity"] == 0.01
    assert row["flags"] == "a; b"


def test_summarise_gives_mean_and_std_over_seeds_per_recipe_in_order() -> None:
    rows = [cell_row(_cell("ce", 0, 0.6)), cell_row(_cell("ce", 1, 0.8)), cell_row(_cell("adv_ce", 0, 0.5))]
    for row in rows:
        row["worst_group_acc"] = 0.5  # the cells have no groups (NaN)
    summary = summarise(rows, ["adv_ce", "ce", "supcon_ft"])
    assert [s["recipe"] for s in summary] == ["adv_ce", "ce"]
    assert summary[1]["seeds"] == 2 and summary[1]["test_acc"] == "0.7000 ± 0.1414"
    assert summary[0]["test_acc"] == "0.5000 ± 0.0000" and "flags" not in summary[0] and "seed" not in summary[0]


def test_plots_are_drawn_without_pyplot_or_a_backend_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_switch(*args: object, **kwargs: object) -> None:
        raise AssertionError("library code must not switch the matplotlib backend")

    monkeypatch.setattr(matplotlib, "use", no_switch)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # importing pyplot now fails
    cells = [_cell("ce", 0, 0.6), _cell("ce", 1, 0.8), _cell("adv_ce", 0, 0.5)]
    paths = plot_curves(cells, tmp_path)
    assert paths == [tmp_path / "accuracy_vs_eps.png", tmp_path / "training_curves.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
