"""Recipes (core/training/recipes.py): the stages of every recipe, which end in a classifier, where each
stage trains, and the guard that refuses to resume a run folder with another configuration.
(Training every recipe end to end is tests/integration/test_train.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robustdx.core.config import ConfigError, Recipe, Regime, RunConfig, parse_config
from robustdx.core.training.recipes import RECIPES, VOLATILE_KEYS, _guard_config, has_classifier, stage_dir
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.unit


def _cfg(tmp_path: Path, recipe: str = "adv_supcon_ft", **over: object) -> RunConfig:
    return parse_config(tiny_raw(tmp_path / "data", tmp_path / "runs", recipe=recipe, **over))


def test_every_recipe_has_stages_and_fine_tuning_comes_last() -> None:
    assert set(RECIPES) == set(Recipe)
    for recipe, stages in RECIPES.items():
        regimes, keys = [r for r, _ in stages], [k for _, k in stages]
        assert keys == ["pretrain", "finetune"][: len(stages)]
        assert (Regime.FINETUNE in regimes) == recipe.endswith("_ft") == (len(stages) == 2)
        assert all(isinstance(r, Regime) for r in regimes)
    assert RECIPES[Recipe.ADV_SUPCON_FT] == [(Regime.ADV_SUPCON, "pretrain"), (Regime.FINETUNE, "finetune")]


def test_has_classifier() -> None:
    assert {r for r in Recipe if has_classifier(r)} == {
        Recipe.CE,
        Recipe.ADV_CE,
        Recipe.ADV_CE_FT,
        Recipe.SUPCON_FT,
        Recipe.ADV_SUPCON_FT,
    }


def test_stage_dir_names_the_index_and_the_regime(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, name="r1")
    assert stage_dir(cfg, 0) == tmp_path / "runs" / "r1" / "1-adv_supcon"
    assert stage_dir(cfg, 1) == tmp_path / "runs" / "r1" / "2-finetune"
    assert stage_dir(_cfg(tmp_path, recipe="ce", name="r2"), 0).name == "1-ce"


def test_guard_writes_the_config_then_accepts_it_and_volatile_changes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    _guard_config(cfg, cfg.run_dir)
    assert RunConfig.model_validate(yaml.safe_load((cfg.run_dir / "config.yaml").read_text())) == cfg
    _guard_config(cfg, cfg.run_dir)
    assert {"progress", "device", "output_dir", "channels_last"} == VOLATILE_KEYS
    moved = cfg.model_copy(update={"progress": True, "device": "cpu", "channels_last": False})
    _guard_config(moved, cfg.run_dir)


def test_guard_refuses_a_changed_config_naming_what_differs(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    _guard_config(cfg, cfg.run_dir)
    changed = _cfg(tmp_path, seed=1, pretrain={**tiny_raw(tmp_path, tmp_path)["pretrain"], "lr": 0.1})
    with pytest.raises(ConfigError, match=r"different configuration \(differs in: pretrain, seed\).*--set name="):
        _guard_config(changed, cfg.run_dir)


def test_guard_refuses_a_saved_config_that_no_longer_validates(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump({"recipe": "no_such_recipe"}))
    with pytest.raises(ConfigError, match="no longer a valid run config"):
        _guard_config(cfg, cfg.run_dir)


def test_guard_resumes_a_run_saved_before_cv_class_weights_and_new_monitors(tmp_path: Path) -> None:
    """A config.yaml without data.cv_folds / cv_fold / class_weights is the same run as one with their defaults."""
    cfg = _cfg(tmp_path)
    _guard_config(cfg, cfg.run_dir)
    saved = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())
    for section, key in (("data", "cv_folds"), ("data", "cv_fold"), ("pretrain", "class_weights"), ("finetune", "class_weights")):
        del saved[section][key]
    (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    _guard_config(cfg, cfg.run_dir)
    for changed in (
        cfg.model_copy(update={"monitor": "bal_acc"}),
        cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"class_weights": "balanced"})}),
    ):
        with pytest.raises(ConfigError, match="different configuration"):
            _guard_config(changed, cfg.run_dir)
