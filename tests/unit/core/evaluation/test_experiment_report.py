"""The paper-table report on hand-made cells: findings first, pooled Wilson intervals, attribution controls,
plots drawn without pyplot or a backend switch (core/evaluation/experiment_report.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest

from robustdx.core.evaluation.experiment_report import (
    attribution_caveats,
    attribution_rows,
    cell_row,
    plot_accuracy_vs_eps,
    plot_training_curves,
    summary_rows,
)
from robustdx.core.evaluation.statistics import proportion, t_interval

pytestmark = pytest.mark.unit
N = 40


def _budget(label: str, eps: float, role: str, robust: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    return {
        "eps": eps, "eps_label": label, "role": role, "n": len(robust),
        "robust_acc": proportion(int(robust.sum()), len(robust)).to_json(),
        "robust_recall": [proportion(int(robust[labels == c].sum()), int((labels == c).sum())).to_json() for c in (0, 1)],
        "robust_items": robust.astype(int).tolist(),
    }  # fmt: skip


def _cell(recipe: str, seed: int, rate: float) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    labels = np.arange(N) % 2
    robust = (rng.random(N) < rate).astype(int)
    attr = {"n": 8, "region": "centre", "region_area": 0.11, "converged": {"value": 0.9},
            "ig": {"region_mass": 0.4, "pointing_game": {"value": 0.5}}, "gradient": {"region_mass": 0.2},
            "randomised_model_ig": {"region_mass": 0.1, "pointing_game": {"value": 0.1}}, "ig_attacked": {"region_mass": 0.3},
            "deletion_insertion": {"deletion_diff": -0.1, "insertion_diff": 0.2},
            "cascading": {"full_randomisation_spearman": 0.2}, "infidelity": {"ig": 0.01, "gradient": 0.5}}  # fmt: skip
    return {
        "name": f"{recipe}-s{seed}", "recipe": recipe, "seed": seed, "fold": None, "train_seconds": 3.0, "eval_seconds": 2.0,
        "items": list(range(N)),
        "test": {"n": N, "acc": proportion(30, N).to_json(), "bal_acc": {"value": 0.75, "ci": [0.6, 0.9]},
                 "auc": {"value": 0.8, "ci": [0.7, 0.9]}, "recall": [None, None], "better_than_chance": True},
        "robustness": {"clean_items": [1] * N, "budgets": [_budget("2/255", 2 / 255, "headline", robust, labels),
                                                           _budget("8/255", 8 / 255, "grid", robust * 0, labels)]},
        "flags": ["x"] if seed else [], "attribution": attr,
        "history": [{"regime": "ce", "monitor": "val_acc", "history": [{"epoch": e, "val_acc": 0.5 + e / 10} for e in (1, 2)]}],
    }  # fmt: skip


def test_summary_pools_runs_with_wilson_intervals() -> None:
    cells = [_cell("ce", 0, 0.5), _cell("ce", 1, 0.5), _cell("adv_ce", 0, 0.9)]
    rows = summary_rows(cells, ["adv_ce", "ce", "supcon_ft"])
    assert [r["recipe"] for r in rows] == ["adv_ce", "ce"]
    ce = rows[1]
    assert ce["runs"] == 2 and ce["flagged runs"] == 1
    assert rows[0]["robust@2/255 sd over runs"] == "— (one run)" and ce["robust@2/255 sd over runs"] != "— (one run)"
    k = sum(c["robustness"]["budgets"][0]["robust_acc"]["k"] for c in cells[:2])
    want = proportion(k, 2 * N)
    assert ce["robust@2/255"] == f"{want.value:.3f} [{want.lo:.3f}, {want.hi:.3f}]"
    assert ce["clean_acc"].startswith("0.750 [")
    per_seed = [c["robustness"]["budgets"][0]["robust_acc"]["value"] for c in cells[:2]]
    lo, hi = t_interval(per_seed)  # two seeds: t(0.975, 1) = 12.7, so wide
    want_seeds = f"{np.mean(per_seed):.3f} [{max(lo, 0):.3f}, {min(hi, 1):.3f}]"  # clipped to [0, 1]
    assert ce["robust@2/255 over seeds (t 95 %)"] == want_seeds and hi - lo > 0.1
    assert rows[0]["robust@2/255 over seeds (t 95 %)"] == "— (one seed)"
    row = cell_row(cells[0])
    assert row["cell"] == "ce-s0" and row["robust@8/255"].startswith("0.000 [0.000,") and row["flags"] == 0


def test_attribution_rows_put_each_score_beside_its_controls() -> None:
    rows = attribution_rows([_cell("ce", 0, 0.5)], ["ce"])
    (row,) = rows
    assert row["IG mass in region"] == "0.400" and row["gradient mass"] == "0.200" and row["randomised-model IG mass"] == "0.100"
    assert row["infidelity IG / gradient"] == "0.01 / 0.5"
    assert row["IG complete to 1 %"] == "0.900"


def test_attribution_caveats_name_maps_that_fail_their_controls() -> None:
    good = _cell("adv_ce", 0, 0.5)
    bad = _cell("ce", 0, 0.5)
    bad["attribution"] = {**bad["attribution"], "cascading": {"full_randomisation_spearman": 0.8},
                          "randomised_model_ig": {"region_mass": 0.45, "pointing_game": {"value": 0.1}}}  # fmt: skip
    caveats = attribution_caveats([good, bad], ["ce", "adv_ce"])
    assert len(caveats) == 2 and all("`ce`" in c for c in caveats)
    assert "Spearman 0.80 > 0.5" in caveats[0] and "(0.400) is no higher than a randomised model's (0.450)" in caveats[1]
    assert attribution_caveats([good], ["adv_ce"]) == []


def test_cell_row_says_what_apgd_and_square_broke_beyond_pgd() -> None:
    cell = _cell("ce", 0, 0.5)
    cell["robustness"]["budgets"][0].update(apgd_n=20, apgd_only_broken=3, square_n=16, square_only_broken=1)
    row = cell_row(cell)
    assert row["APGD breaks beyond PGD (train ε)"] == "3 of 20" and row["Square breaks beyond both"] == "1 (first 16)"


def test_plots_are_drawn_without_pyplot_or_a_backend_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_switch(*args: object, **kwargs: object) -> None:
        raise AssertionError("library code must not switch the matplotlib backend")

    monkeypatch.setattr(matplotlib, "use", no_switch)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    cells = [_cell("ce", 0, 0.5), _cell("adv_ce", 0, 0.9)]
    for path in (plot_accuracy_vs_eps(cells, ["ce", "adv_ce"], tmp_path / "a.png"),
                 plot_training_curves(cells, ["ce", "adv_ce"], tmp_path / "t.png")):  # fmt: skip
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
