"""CUDA path: bf16 autocast + channels_last training of every adversarial regime (``make test-gpu``).

Deselected where there is no CUDA device (tests/conftest.py); ``-m gpu`` selects it everywhere, so
asking for it on a CPU-only machine fails instead of passing by deselection.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustdx.core.config import parse_config
from robustdx.core.training.recipes import run_recipe
from tests.support.activations import training_conv_activations
from tests.support.configs import tiny_raw

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


@pytest.mark.parametrize("recipe", ["adv_ce_ft", "adv_supcon_ft"])
def test_cuda_training_engages_bf16_autocast_and_channels_last(recipe: str, camelyon_root: Path, tmp_path: Path) -> None:
    assert torch.cuda.is_available(), "gpu tests need CUDA (run them with `make test-gpu` on a machine that has it)"
    raw = tiny_raw(camelyon_root, tmp_path, recipe=recipe)
    raw["device"] = "cuda"
    raw["data"]["image_size"] = 32  # big enough that channels_last and contiguous differ for every activation
    with training_conv_activations() as seen:
        result = run_recipe(parse_config(raw))
    assert seen, "no training-mode convolution ran"
    assert {a.device for a in seen} == {"cuda"}
    assert {a.dtype for a in seen} == {torch.bfloat16}, "autocast did not engage: convolutions computed in another dtype"
    assert all(a.channels_last for a in seen), "activations are not channels_last"
    for stage in result.stages:
        assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in stage.history)
    assert 0.0 <= result.metrics["robust"]["robust_acc"] <= 1.0
