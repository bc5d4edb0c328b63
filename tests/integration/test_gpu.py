"""CUDA path: bf16 autocast + channels_last training of every adversarial regime (run with ``-m gpu``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustdx.core.config import parse_config
from robustdx.core.recipes import run_recipe
from tests.conftest import tiny_raw

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


@pytest.mark.parametrize("recipe", ["adv_ce_ft", "adv_supcon_ft"])
def test_cuda_training_with_bf16_autocast(recipe: str, camelyon_root: Path, tmp_path: Path) -> None:
    assert torch.cuda.is_available(), "gpu tests need CUDA"
    raw = tiny_raw(camelyon_root, tmp_path, recipe=recipe)
    raw["device"] = "cuda"
    result = run_recipe(parse_config(raw))
    for stage in result.stages:
        assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in stage.history)
    assert 0.0 <= result.metrics["robust"]["robust_acc"] <= 1.0
