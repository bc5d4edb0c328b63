"""The gradient-free Square attack (core/attacks/square.py): its window schedule, invariants (budget,
range, model state, RNG), input validation, and known answers on a model with a known margin."""

from __future__ import annotations

import pytest
import torch

from robustdx.core.attacks import square_attack, square_p_schedule
from tests.support.classifiers import EPS, MeanIntensity, margin_images, tiny_model

pytestmark = pytest.mark.unit


def test_square_p_schedule() -> None:
    assert square_p_schedule(0, 10000, 0.8) == 0.8
    assert square_p_schedule(11, 10000, 0.8) == 0.4
    assert square_p_schedule(9999, 10000, 0.8) == pytest.approx(0.8 / 512)
    assert square_p_schedule(1, 100, 0.8) == 0.2  # rescaled: 1/100 of the run = iteration 100 of 10 000
    ps = [square_p_schedule(i, 1000) for i in range(1000)]
    assert all(b <= a for a, b in zip(ps, ps[1:], strict=False))


@pytest.mark.parametrize("full_range", [False, True])
def test_square_attack_invariants(full_range: bool) -> None:
    model = tiny_model(0).train()
    for p in model.projector.parameters():
        p.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    if full_range:
        x[:, :, :3], x[:, :, -3:] = 0.0, 1.0
    x_orig, y = x.clone(), torch.arange(6) % 2
    rng = torch.get_rng_state()
    xa = square_attack(model, x, y, EPS, n_queries=50, seed=0)
    assert torch.equal(rng, torch.get_rng_state()), "the global RNG moved"
    assert xa.shape == x.shape and xa.dtype == x.dtype and not xa.requires_grad
    assert torch.equal(x, x_orig)
    assert (xa - x).abs().max().item() <= EPS + 1e-6
    assert xa.min().item() >= 0.0 and xa.max().item() <= 1.0
    assert (xa - x).abs().max().item() >= EPS - 1e-6, "Square perturbations sit on the ball's surface"
    assert model.training and all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(xa, square_attack(model, x, y, EPS, n_queries=50, seed=0)), "not reproducible"
    assert not torch.equal(xa, square_attack(model, x, y, EPS, n_queries=50, seed=1))


def test_square_attack_validation_and_zero_budget() -> None:
    model = tiny_model(0)
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    out = square_attack(model, x, y, 0.0)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    with pytest.raises(ValueError, match="8/255"):
        square_attack(model, x, y, 8.0)
    with pytest.raises(ValueError, match="n_queries"):
        square_attack(model, x, y, EPS, n_queries=0)
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        square_attack(model, x[0], y, EPS)


def test_square_finds_the_known_answer() -> None:
    """Items within 0.5ε of the decision boundary are flipped, items beyond ε cannot be."""
    margins = [0.3, -0.4, 0.5, -0.2, 1.5, -2.0, 3.0, -1.2]
    x, y = margin_images(margins)
    model = MeanIntensity()
    xa = square_attack(model, x, y, EPS, n_queries=300, seed=0)
    correct = model(xa).argmax(1) == y
    assert correct.tolist() == [abs(m) > 1 for m in margins]
