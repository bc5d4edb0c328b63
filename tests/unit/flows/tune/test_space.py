"""The Tune search space and trial run configs (:mod:`robustdx.flows.tune.space`): Ray's domains, the training
attack changed while the serving ε stays, and spaces refused before any trial starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robustdx.core.config import ConfigError
from robustdx.core.config.sweep import parse_sweep
from robustdx.flows.tune.space import check_space, param_space, trial_config
from tests.support.sweeps import EPS2, EPS4, EPS8, run_base, sweep_raw

pytestmark = pytest.mark.unit


def test_param_space_domains() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    space = param_space(parse_sweep(sweep_raw(space={**sweep_raw()["space"], "temperature": [0.1, 0.2]})).space)
    assert isinstance(space["eps"], Categorical) and space["eps"].categories == pytest.approx([EPS2, EPS8])
    assert isinstance(space["temperature"], Categorical)
    assert isinstance(space["lr"], Float) and type(space["lr"].get_sampler()).__name__ == "_LogUniform"
    assert (space["lr"].lower, space["lr"].upper) == (1e-4, 1e-2)
    assert isinstance(space["steps"], Integer)
    steps = set(space["steps"].sample(size=300, random_state=0))
    assert steps == {2, 3, 4, 5}, "an integer range includes high"
    eps = param_space(parse_sweep(sweep_raw(space={"eps": {"low": "1/255", "high": "8/255"}})).space)["eps"]
    assert isinstance(eps, Float) and type(eps.get_sampler()).__name__ == "_Uniform"


def test_trial_config_changes_the_training_attack_only(tmp_path: Path) -> None:
    base = run_base(tmp_path, attack={"eps": "4/255", "steps": 2, "step_size": "1/255"}, eval_attack={"eps": "4/255", "steps": 7})
    sweep = parse_sweep(sweep_raw())
    cfg = trial_config(sweep, base, {"eps": EPS8, "steps": 5, "lr": 2e-3}, name="t1", output_dir=tmp_path / "x", progress=False)
    assert (cfg.attack.eps, cfg.attack.steps) == (pytest.approx(EPS8), 5)
    assert cfg.attack.step_size is None and cfg.attack.alpha == pytest.approx(2.5 * EPS8 / 5)  # the step follows eps/steps
    assert cfg.eval_attack == base.eval_attack and cfg.eval_attack.eps == pytest.approx(EPS4)  # serving eps fixed
    assert cfg.pretrain.lr == cfg.finetune.lr == 2e-3
    assert (cfg.name, cfg.output_dir, cfg.progress) == ("t1", tmp_path / "x", False)
    assert (cfg.val_robust_n, cfg.monitor) == (64, "robust_mean")
    unchanged = {k: v for k, v in base.model_dump().items() if k not in ("attack", "pretrain", "finetune", "name", "output_dir")}
    changed = cfg.model_dump()
    assert all(changed[k] == v for k, v in unchanged.items() if k not in ("progress", "val_robust_n", "monitor"))
    assert base.attack.step_size == pytest.approx(1 / 255), "the base config is not modified"
    only_eps = trial_config(sweep, base, {"eps": EPS2})
    assert only_eps.attack.step_size is None and only_eps.attack.steps == base.attack.steps == 2


def test_finetune_lr_scale_and_temperature(tmp_path: Path) -> None:
    base = run_base(tmp_path)
    space = {"lr": {"low": 1e-4, "high": 1e-2, "finetune_lr_scale": 3}, "temperature": [0.05, 0.2]}
    cfg = trial_config(parse_sweep(sweep_raw(space=space)), base, {"lr": 1e-3, "temperature": 0.05})
    assert cfg.pretrain.lr == 1e-3 and cfg.finetune.lr == pytest.approx(3e-3) and cfg.pretrain.temperature == 0.05
    space["lr"]["finetune_lr_scale"] = None
    cfg = trial_config(parse_sweep(sweep_raw(space=space)), base, {"lr": 1e-3})
    assert cfg.finetune.lr == base.finetune.lr
    single = run_base(tmp_path, recipe="adv_ce")
    assert trial_config(parse_sweep(sweep_raw(space=space)), single, {"lr": 1e-3}).pretrain.lr == 1e-3
    clean = trial_config(parse_sweep(sweep_raw(objective="clean", val_robust_n=0)), base, {})
    assert (clean.monitor, clean.val_robust_n) == ("acc", 0)
    with pytest.raises(ConfigError, match="unknown sweep parameter.*'momentum'"):
        trial_config(parse_sweep(sweep_raw()), base, {"momentum": 0.9})


@pytest.mark.parametrize(
    "run_over, space, expected",
    [
        ({"recipe": "adv_supcon"}, None, r"recipe 'adv_supcon' trains an encoder without a classifier.*recipe=adv_supcon_ft"),
        ({"recipe": "adv_ce"}, {"temperature": [0.1, 0.2]}, r"space\.temperature: recipe 'adv_ce' has no SupCon stage"),
        (
            {"attack": {"name": "fgsm_rs", "eps": "4/255"}},
            {"steps": [1, 3]},
            r"invalid run config at \{'steps': 3\}.*fgsm_rs takes",
        ),
        ({}, {"lr": {"low": 1e-3, "high": 0.5, "finetune_lr_scale": 4}}, r"invalid run config at \{'lr': 0\.5\}.*finetune\.lr"),
    ],
)
def test_check_space_refuses_spaces_that_cannot_work(
    tmp_path: Path, run_over: dict[str, Any], space: dict[str, Any] | None, expected: str
) -> None:
    sweep = parse_sweep(sweep_raw(space=space) if space else sweep_raw())
    with pytest.raises(ConfigError, match=f"(?s){expected}"):
        check_space(sweep, run_base(tmp_path, **run_over))
