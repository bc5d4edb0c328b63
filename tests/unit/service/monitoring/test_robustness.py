"""The PGD robustness probe on a tiny model: flips and margins against the model's own prediction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustdx.service.monitoring.robustness import _margin, probe

pytestmark = pytest.mark.unit


def test_margin_is_own_logit_minus_best_other() -> None:
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
    assert _margin(logits, torch.tensor([0, 2])).tolist() == [1.0, -4.0]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()


def test_no_attack_at_eps_zero_never_flips() -> None:
    flips, margins = probe(_model(), torch.rand(6, 3, 4, 4), eps=0.0, steps=3)
    assert flips == [0.0] * 6 and all(m >= 0 for m in margins)


def test_a_large_attack_lowers_the_margin() -> None:
    model, x = _model(), torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    _, clean = probe(model, x, eps=0.0, steps=3)
    flips, attacked = probe(model, x, eps=0.5, steps=10)
    assert len(flips) == 6 and set(flips) <= {0.0, 1.0}
    assert all(a < c for a, c in zip(attacked, clean, strict=True))
    assert [f == 1.0 for f in flips] == [a < 0 for a in attacked]
