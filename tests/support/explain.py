"""Tiny models, images and checks for the Integrated-Gradients unit tests (tests/unit/core/explain).

Why shared: the IG, baseline and plot tests explain the same calibrated tiny CNN on the same seeded
images, and every IG result is held to the same completeness check against the model's own logits.
"""

from __future__ import annotations

import torch
from torch import nn

from robustdx.core.config import ModelConfig
from robustdx.core.explain.baselines import make_baseline
from robustdx.core.explain.ig import Attribution
from robustdx.core.models import RobustDxNet, build_model


def calibrated_cnn(seed: int = 0) -> RobustDxNet:
    """A tiny CNN whose BatchNorm statistics come from one batch of images, so that (unlike at
    initialisation) its logits depend clearly on the input and ``f(x) − f(b)`` is well away from 0."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="test_cnn", proj_dim=8, head_hidden=8))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: one pass sets the statistics
    with torch.no_grad():
        model.train()(torch.rand(64, 3, 16, 16))
    return model.eval()


def images(b: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1000 + seed))  # never a noise baseline


def target_logit(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).gather(1, t[:, None]).squeeze(1).double()


def check_completeness(model: nn.Module, x: torch.Tensor, res: Attribution, tol: float, baseline: str) -> None:
    """``Σ attr`` against ``f(x) − f(b)`` computed here, and the reported delta/rel_error against both."""
    diff = target_logit(model, x, res.target) - target_logit(model, make_baseline(x, baseline), res.target)
    total = res.attributions.flatten(1).sum(1, dtype=torch.float64)
    own = (total - diff).abs() / diff.abs()
    assert (own <= tol + 1e-5).all(), own
    assert torch.allclose(res.delta.double(), total - diff, atol=1e-4, rtol=1e-3)
    assert torch.allclose(res.rel_error.double(), own, atol=1e-4)
    assert bool(res.converged(tol).all())
