"""PGD and FGSM-RS on the cross-entropy and the two-view SupCon attack: invariants, torchattacks equality, presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustdx.core.attacks import attack_ce, attack_supcon
from robustdx.core.config import AttackConfig
from robustdx.core.losses import cross_entropy, supcon_loss
from robustdx.core.models import RobustDxNet
from tests.support.classifiers import batch, snapshot, tiny_model

pytestmark = pytest.mark.unit

EPS = 8 / 255
ALPHA = 2 / 255






def per_sample_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = cross_entropy(model(x), y, reduction="none")
    model.train(was)
    return out


@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_attack_ce_invariants(restarts: int, seed: int) -> None:
    model = tiny_model(seed).eval()
    x, y = batch(seed)
    x_orig = x.clone()
    cfg = AttackConfig(eps=EPS, steps=5, restarts=restarts)
    x_adv = attack_ce(model, x, y, cfg)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert torch.equal(x, x_orig), "input modified in place"
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (x_adv - x).abs().max().item() > EPS / 2, "the attack barely moved"
    clean, adv = per_sample_ce(model, x, y), per_sample_ce(model, x_adv, y)
    assert adv.sum().item() >= clean.sum().item() - 1e-6
    assert adv.mean().item() > clean.mean().item()


def test_attack_ce_restarts_keep_worst_case() -> None:
    """With several restarts the kept example per image is the worst over restarts; the same
    seed's first restart is the restarts=1 result, so restarts=3 cannot be weaker per sample."""
    model = tiny_model(0).eval()
    x, y = batch(0)
    torch.manual_seed(5)
    one = attack_ce(model, x, y, AttackConfig(eps=EPS, steps=3, restarts=1))
    torch.manual_seed(5)
    three = attack_ce(model, x, y, AttackConfig(eps=EPS, steps=3, restarts=3))
    l1, l3 = per_sample_ce(model, one, y), per_sample_ce(model, three, y)
    assert (l3 >= l1 - 1e-6).all(), (l1, l3)


# --------------------------------------------------------------------------------------------
# the model is left as it was found
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("interior", [True, False], ids=["interior", "full_range"])
def test_attack_ce_matches_torchattacks(random_start: bool, interior: bool) -> None:
    """Same seed, same start, same steps: the two PGDs must agree.

    ``full_range`` images have pixels that reach 0 or 1 during the attack (as real images with
    black or white regions do); ``interior`` ones cannot.
    """
    torchattacks = pytest.importorskip("torchattacks")
    model = tiny_model(0).eval()
    cfg = AttackConfig(eps=EPS, step_size=ALPHA, steps=5, random_start=random_start, restarts=1)
    for k in range(3):
        x, y = batch(10 + k, interior=interior)
        if not interior:
            x[:, :, :3] = 0.0  # a black band and a white band
            x[:, :, -3:] = 1.0
        torch.manual_seed(k)
        ref = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=5, random_start=random_start)(x, y)
        torch.manual_seed(k)
        ours = attack_ce(model, x, y, cfg)
        diff = (ours - ref).abs()
        frac = (diff <= 1e-6).float().mean().item()
        assert frac >= 0.999, f"seed {k}: only {frac:.4f} of elements agree (max diff {diff.max():.4f})"
        assert diff.max().item() <= 2 * ALPHA
        assert not model.training


@pytest.mark.parametrize("random_start", [False, True])
def test_attack_can_move_saturated_pixels(random_start: bool) -> None:
    """A pixel at 0 (or 1) can still be pushed into the range: PGD's sign step is taken w.r.t. the
    (clamped) adversarial image, so a black image must not come back untouched."""
    model = tiny_model(0).eval()
    y = torch.tensor([0, 1])
    for fill in (0.0, 1.0):
        x = torch.full((2, 3, 16, 16), fill)
        torch.manual_seed(0)
        x_adv = attack_ce(model, x, y, AttackConfig(eps=EPS, step_size=ALPHA, steps=5, random_start=random_start))
        moved = ((x_adv - x).abs() > 1e-6).float().mean().item()
        # About half the gradient signs point into the range (torchattacks' PGD moves ~53% here,
        # with or without random start); a clamp that blocks the gradient moves 0% / ~25%.
        assert moved >= 0.4, f"fill={fill}: only {moved:.3f} of pixels moved"


# --------------------------------------------------------------------------------------------
# budgets, FGSM-RS, the paper preset
# --------------------------------------------------------------------------------------------


def test_eps_zero_returns_input_unchanged() -> None:
    model = tiny_model(0).train()
    x, y = batch(0)
    for cfg in (AttackConfig(eps=0), AttackConfig(eps=0, restarts=3), AttackConfig(eps=0, name="fgsm_rs", steps=1)):
        x_adv = attack_ce(model, x, y, cfg)
        assert torch.equal(x_adv, x)
        assert x_adv.data_ptr() != x.data_ptr(), "must be a copy"
    views = torch.stack([x, x.flip(-1)], 1)
    assert torch.equal(attack_supcon(model, views, y, AttackConfig(eps=0), 0.1), views)
    assert model.training


def test_default_step_size() -> None:
    assert AttackConfig(eps=EPS, steps=5).alpha == pytest.approx(2.5 * EPS / 5)
    assert AttackConfig(eps=EPS, steps=5, step_size=ALPHA).alpha == pytest.approx(ALPHA)


def test_fgsm_rs() -> None:
    cfg = AttackConfig(name="fgsm_rs", eps=EPS, steps=1)
    assert cfg.alpha == pytest.approx(1.25 * EPS)
    model = tiny_model(0).eval()
    x, y = batch(0, interior=True)
    torch.manual_seed(3)
    x_adv = attack_ce(model, x, y, cfg)
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    # Manual FGSM-RS (Wong et al. 2020) with the same random start.
    torch.manual_seed(3)
    delta = torch.empty_like(x).uniform_(-EPS, EPS)
    xs = (x + delta).clamp(0, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(cross_entropy(model(xs), y, reduction="none").sum(), xs)
    want = (x + (xs.detach() - x + 1.25 * EPS * g.sign()).clamp(-EPS, EPS)).clamp(0, 1)
    assert torch.allclose(x_adv, want, atol=1e-6)
    # The big step lands on the ball's surface for most pixels.
    assert ((x_adv - x).abs() >= EPS - 1e-6).float().mean().item() > 0.5


def test_paper_preset_perturbation_bounds() -> None:
    model = tiny_model(0).eval()
    x, y = batch(0)
    cfg = AttackConfig.paper()
    x_adv = attack_ce(model, x, y, cfg)
    std = model.normalize.std  # [1, 3, 1, 1]
    delta = x_adv - x
    # Pixel-space budget per channel is eps * std_c ...
    per_channel = delta.abs().amax(dim=(0, 2, 3))
    assert (per_channel <= 0.2 * std.flatten() + 1e-6).all()
    # ... but 10 steps of 0.01 from the centre never get further than 0.1 (half the ball).
    normalised = (delta / std).abs()
    assert normalised.max().item() <= 0.1 + 1e-6
    assert normalised.max().item() >= 0.1 - 1e-4  # some pixels do walk the whole way
    # No clamp: some attacked pixels leave [0, 1].
    assert (x_adv < 0).any() or (x_adv > 1).any()


def test_normalized_space_needs_normalize_layer() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    x, y = batch(0, b=2)
    with pytest.raises(ValueError, match="Normalize"):
        attack_ce(net, x, y, AttackConfig.paper())
    # In pixel space any classifier works.
    x_adv = attack_ce(net, x, y, AttackConfig(eps=EPS, steps=2))
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


def supcon_at(model: RobustDxNet, views: torch.Tensor, y: torch.Tensor) -> float:
    """The SupCon loss of ``views`` under ``model.project`` in eval mode, τ = 0.1."""
    was = model.training
    model.eval()
    with torch.no_grad():
        b, v = views.shape[:2]
        out = supcon_loss(model.project(views.flatten(0, 1)).view(b, v, -1), y, 0.1).item()
    model.train(was)
    return out


@pytest.mark.parametrize("restarts", [1, 2])
def test_attack_supcon_invariants(restarts: int) -> None:
    model = tiny_model(0).train()
    g = torch.Generator().manual_seed(0)
    views = torch.rand(6, 2, 3, 16, 16, generator=g)
    views_orig = views.clone()
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    before = snapshot(model)
    torch.manual_seed(0)
    adv = attack_supcon(model, views, y, AttackConfig(eps=EPS, steps=5, restarts=restarts), temperature=0.1)
    assert adv.shape == views.shape
    assert not adv.requires_grad
    assert torch.equal(views, views_orig)
    assert (adv - views).abs().max().item() <= EPS + 1e-6
    assert (adv - views).abs().max().item() > EPS / 2
    assert adv.min().item() >= 0 and adv.max().item() <= 1
    # Each view gets its own perturbation.
    assert not torch.allclose(adv[:, 0] - views[:, 0], adv[:, 1] - views[:, 1])
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("seed", [0, 1])
def test_attack_supcon_increases_loss(seed: int) -> None:
    """Gradient ascent from the clean views raises the SupCon loss.

    No random start here: at initialisation the projections have nearly collapsed (loss ≈
    log(2B-1)), so a uniform start in the ball can lower the loss by more than five coarse steps
    regain; from the clean point each small sign step is an ascent step.
    """
    model = tiny_model(seed).eval()
    g = torch.Generator().manual_seed(seed)
    views = torch.rand(6, 2, 3, 16, 16, generator=g)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    cfg = AttackConfig(eps=EPS, steps=8, step_size=1 / 255, random_start=False)
    adv = attack_supcon(model, views, y, cfg, temperature=0.1)
    assert (adv - views).abs().max().item() <= EPS + 1e-6
    assert adv.min().item() >= 0 and adv.max().item() <= 1
    clean, attacked = supcon_at(model, views, y), supcon_at(model, adv, y)
    assert attacked >= clean - 1e-6
    assert attacked > clean + 1e-4
