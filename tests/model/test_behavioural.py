"""Behavioural tests of trained models (Made-With-ML's "model" tier): minimum function, direction.

A tiny CNN trained for a few seconds on the synthetic Camelyon17 copy must beat chance, and
adversarial training must buy robustness: at the same ε, PGD accuracy of the ``adv_ce`` model is
well above that of the clean ``ce`` model, at a similar clean accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robustdx.core.config import parse_config
from robustdx.core.training.recipes import run_recipe
from tests.support.configs import synthetic_camelyon, tiny_raw

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def bigger_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_camelyon(tmp_path_factory, per_class=150, size=32)


@pytest.fixture(scope="module")
def trained(bigger_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("runs")
    metrics = {}
    for recipe in ("ce", "adv_ce"):
        raw = tiny_raw(bigger_root, out, recipe=recipe, name=recipe)
        raw["data"].update(image_size=32, batch_size=32, val_split="id_val")
        raw["attack"] = {"eps": "2/255", "steps": 3}
        raw["eval_attack"] = {"eps": "2/255", "steps": 10}
        raw["pretrain"].update(epochs=12, lr=0.003, max_steps_per_epoch=None, schedule="alternate")
        metrics[recipe] = run_recipe(parse_config(raw)).metrics
    return metrics


def test_trained_models_beat_chance_on_the_ood_hospital(trained: dict[str, dict[str, Any]]) -> None:
    for recipe, m in trained.items():
        assert m["test"]["acc"] > 0.8, recipe
        assert m["test"]["auc"] > 0.9, recipe


def test_adversarial_training_buys_robustness(trained: dict[str, dict[str, Any]]) -> None:
    ce, adv = trained["ce"]["robust"], trained["adv_ce"]["robust"]
    assert adv["eps"] == ce["eps"] == pytest.approx(2 / 255)
    assert adv["robust_acc"] > ce["robust_acc"] + 0.2
    assert ce["robust_acc"] < ce["clean_acc"] - 0.2  # the clean model is brittle
