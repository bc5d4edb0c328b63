"""Cells of a paper table: equal optimisation budgets, folds, names (core/evaluation/experiment.py).
(Training and scoring real cells end to end is tests/integration/test_experiment.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from robustdx.core.config import Budget, ExperimentConfig, Recipe, parse_config
from robustdx.core.evaluation.experiment import budget_epochs, cell_config, cell_name, cells_of
from robustdx.core.training.recipes import RECIPES
from robustdx.core.training.strategies import create_strategy
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.unit


def _passes(cfg) -> int:
    return sum(
        getattr(cfg, key).epochs * len(create_strategy(regime, getattr(cfg, key)).passes()) for regime, key in RECIPES[cfg.recipe]
    )


@pytest.mark.parametrize("recipe", ["ce", "adv_ce", "adv_ce_ft", "supcon_ft", "adv_supcon_ft"])
def test_every_regime_gets_the_same_number_of_optimiser_passes(recipe: str, tmp_path: Path) -> None:
    base = parse_config(tiny_raw(tmp_path, tmp_path, recipe=recipe))
    exp = ExperimentConfig(name="t", base=Path("b.yaml"), budget=Budget(passes=8), output_dir=tmp_path)
    cfg = cell_config(base, exp, Recipe(recipe), 0, None)
    assert _passes(cfg) == 8
    want = {"ce": {"pretrain": 8}, "adv_ce": {"pretrain": 4}, "adv_ce_ft": {"pretrain": 2, "finetune": 4},
            "supcon_ft": {"pretrain": 4, "finetune": 4}, "adv_supcon_ft": {"pretrain": 2, "finetune": 4}}[recipe]  # fmt: skip
    assert {k: getattr(cfg, k).epochs for k in want} == want


def test_a_budget_that_cannot_split_into_whole_epochs_is_refused(tmp_path: Path) -> None:
    base = parse_config(tiny_raw(tmp_path, tmp_path, recipe="adv_ce"))
    with pytest.raises(ValueError, match="cannot be split into whole epochs"):
        budget_epochs(base, Budget(passes=7))


def test_cells_cover_recipes_seeds_and_folds(tmp_path: Path) -> None:
    base = parse_config(tiny_raw(tmp_path, tmp_path, data={"dataset": "busi", "root": str(tmp_path), "n_test": 10}))
    exp = ExperimentConfig(name="t", base=Path("b.yaml"), recipes=["ce", "adv_ce"], seeds=[0, 1], folds=3, output_dir=tmp_path)
    cells = cells_of(exp)
    assert len(cells) == 2 * 2 * 3 and len({cell_name(*c) for c in cells}) == 12
    cfg = cell_config(base, exp, Recipe.CE, 1, 2)
    assert (cfg.data.cv_folds, cfg.data.cv_fold, cfg.data.n_test, cfg.name) == (3, 2, None, "ce-s1-f2")
    assert cfg.run_dir == tmp_path / "t" / "runs" / "ce-s1-f2"
    assert cells_of(exp.model_copy(update={"folds": None}))[:3] == [
        (Recipe.CE, 0, None),
        (Recipe.ADV_CE, 0, None),
        (Recipe.CE, 1, None),
    ]


def test_experiments_score_classifiers_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without a classifier"):
        ExperimentConfig(name="t", base=Path("b.yaml"), recipes=["supcon"])
