"""The sweep schema (:mod:`robustdx.core.config.sweep`): dimension forms, defaults, objectives and validation
messages that name the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robustdx.core.config import ConfigError
from robustdx.core.config.sweep import Objective, SweepConfig, parse_sweep
from tests.support.sweeps import EPS4, EPS8, sweep_raw

pytestmark = pytest.mark.unit


def _error(raw: dict[str, Any], overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        parse_sweep(raw, overrides or [])
    return str(err.value)


def test_dimension_forms_and_eps_fractions() -> None:
    sweep = parse_sweep(
        sweep_raw(space={"eps": {"choices": ["4/255", 0.01]}, "steps": [3, 5], "temperature": {"low": 0.05, "high": 0.5}})
    )
    assert sweep.space.eps.choices == pytest.approx([EPS4, 0.01])
    assert sweep.space.steps.choices == [3, 5]
    assert (sweep.space.temperature.low, sweep.space.temperature.high) == (0.05, 0.5)
    assert list(sweep.space.dimensions()) == ["eps", "steps", "temperature"]
    ranged = parse_sweep(sweep_raw(space={"eps": {"low": "1/255", "high": "8/255"}}))
    assert ranged.space.eps.extremes() == pytest.approx([1 / 255, EPS8])


def test_defaults() -> None:
    sweep = parse_sweep(sweep_raw())
    assert (sweep.scheduler, sweep.search, sweep.objective, sweep.val_robust_n) == ("asha", "optuna", "robust_mean", 64)
    assert sweep.resources_per_trial.gpu is None and sweep.space.lr.finetune_lr_scale == 1.0
    assert sweep.storage_path == Path("runs/sweeps") and sweep.experiment_dir == (Path("runs/sweeps") / "s").resolve()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"space": {"eps": [8]}}, r"space\.eps\.choices\.0: .*did you mean 8/255\?"),
        ({"space": {"eps": {"low": "4/255", "high": "2/255"}}}, r"low must be below high"),
        ({"space": {"eps": {"choices": ["2/255"], "low": 0.0}}}, r"either choices or low/high, not both"),
        ({"space": {"eps": {"low": 0.0}}}, r"a range needs both low and high"),
        ({"space": {"eps": {"choices": []}}}, r"choices must not be empty"),
        ({"space": {"steps": 5}}, r"space\.steps: .*single value 5.*use `overrides`"),
        ({"space": {"steps": [0, 3]}}, r"space\.steps\.choices\.0: .*greater than or equal to 1"),
        ({"space": {"lr": {"low": 0, "high": 1e-3}}}, r"space\.lr\.low: .*greater than 0"),
        (
            {"space": {"lr": {"low": 1e-4, "high": 1e-3, "finetune_scale": 2}}},
            r"unknown key\. Did you mean 'finetune_lr_scale'\?",
        ),
        (
            {"space": {"eps": {"lo": 0.0, "high": 0.1}}},
            r"space\.eps\.lo: unknown key\. Did you mean 'low'\? Valid: choices, low, high",
        ),
        (
            {"space": {"epsilon": ["2/255"]}},
            r"space\.epsilon: unknown key\. Did you mean 'eps'\? Valid: eps, steps, lr, temperature",
        ),
        ({"space": {}}, r"search space is empty: give at least one of eps, steps, lr, temperature"),
        ({"num_sample": 3}, r"num_sample: unknown key\. Did you mean 'num_samples'\?"),
        ({"scheduler": "hyperband"}, r"scheduler: .*'asha' or 'fifo'.*\(got 'hyperband'\)"),
        ({"search": "grid"}, r"search: .*'optuna' or 'random'"),
        ({"objective": "robust", "val_robust_n": 0}, r"objective=robust needs val_robust_n > 0"),
        ({"name": "../up"}, r"name: String should match pattern"),
        ({"asha": {"reduction_factor": 1}}, r"asha\.reduction_factor: .*greater than 1"),
    ],
)
def test_validation_errors_name_the_key_and_the_fix(change: dict[str, Any], expected: str) -> None:
    assert __import__("re").search(expected, _error(sweep_raw(**change)))


def test_missing_keys_and_overrides() -> None:
    msg = _error({"space": {"eps": ["2/255"]}})
    assert "name: Field required" in msg and "base: Field required" in msg
    sweep = parse_sweep(sweep_raw(), ["num_samples=3", "scheduler=fifo", "space.eps=[4/255]"])
    assert (sweep.num_samples, sweep.scheduler) == (3, "fifo") and sweep.space.eps.choices == pytest.approx([EPS4])
    assert "override 'num_samples' is not of the form key=value" in _error(sweep_raw(), ["num_samples"])


def test_objectives_read_validation_metrics_and_pick_a_matching_monitor() -> None:
    assert {o.value: o.metric for o in Objective} == {"robust_mean": "val_score", "clean": "val_acc", "robust": "val_robust_acc"}
    assert [o.monitor for o in Objective] == ["robust_mean", "acc", "robust_mean"]
    assert parse_sweep(sweep_raw(objective="clean", val_robust_n=0)).val_robust_n == 0  # clean needs no attacked images


def test_sweep_config_schema_is_strict() -> None:
    assert SweepConfig.model_config["extra"] == "forbid"
    with pytest.raises(ValueError):
        SweepConfig.model_validate({**sweep_raw(), "unknown": 1})
