"""Attribution scores: known answers on models whose evidence is planted in a known square, exact
infidelity for a linear model, and the randomisation sanity check on a real small CNN."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from robustdx.core.config import ModelConfig
from robustdx.core.explain.baselines import make_baseline
from robustdx.core.explain.maps import attribution_map
from robustdx.core.explain.quality import (
    PerturbationConfig,
    centre_mask,
    deletion_insertion_auc,
    infidelity_and_sensitivity,
    mass_in_region,
    pointing_game,
    randomisation_check,
    randomised_copy,
    spearman_per_image,
)
from robustdx.core.models import RobustDxNet, build_model

pytestmark = pytest.mark.unit

SIZE = 24
ROWS, COLS = slice(4, 10), slice(12, 18)  # the planted 6x6 square


class SquareEvidence(nn.Module):
    """Class-1 logit grows with the mean of the pixels in the planted square; nothing else matters.
    For random images the target probability is ~0.99, ~0.01 for a black one."""

    def forward(self, x: Tensor) -> Tensor:
        z = 20.0 * (x[:, :, ROWS, COLS].mean((1, 2, 3)) - 0.25)
        return torch.stack([-z / 2, z / 2], 1)


class Linear(nn.Module):
    """A linear classifier: gradient × input is its exact decomposition."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(2, 3 * 8 * 8, generator=torch.Generator().manual_seed(seed)) * 0.05)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


class Texture(nn.Module):
    """Class-1 logit grows with the mean horizontal pixel-to-pixel change: blur of any width lowers it,
    by how much depends on the width."""

    def forward(self, x: Tensor) -> Tensor:
        z = 100.0 * (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3)) - 2.0
        return torch.stack([-z / 2, z / 2], 1)


def square_mask() -> Tensor:
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    m[ROWS, COLS] = True
    return m


def disjoint_mask() -> Tensor:
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    m[14:22, 0:10] = True
    return m


def images(b: int = 6, seed: int = 0) -> Tensor:
    return torch.rand(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def saliency(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    x = x if x.requires_grad else x.detach().requires_grad_(True)  # captum warns otherwise
    return Saliency(model).attribute(x, target=t, abs=False)


def integrated_gradients(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    return IntegratedGradients(model).attribute(x, target=t, n_steps=16)


def tiny_cnn(seed: int = 0) -> RobustDxNet:
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="test_cnn", proj_dim=8, head_hidden=8)).eval()


# --------------------------------------------------------------------------------------------
# localisation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("explain", [saliency, integrated_gradients], ids=["saliency", "ig"])
def test_planted_square_localisation(explain) -> None:  # noqa: ANN001 - a test parameter
    x = images()
    amap = attribution_map(explain(SquareEvidence(), x, torch.ones(6, dtype=torch.long)))
    assert pointing_game(amap, square_mask()).all()
    assert not pointing_game(amap, disjoint_mask()).any()
    assert mass_in_region(amap, square_mask()) == pytest.approx(torch.ones(6), abs=1e-6)
    assert mass_in_region(amap, disjoint_mask()) == pytest.approx(torch.zeros(6), abs=1e-6)


def test_mass_of_a_uniform_random_map_is_the_area_fraction() -> None:
    amap = torch.rand(64, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    for mask in (square_mask(), disjoint_mask(), centre_mask(SIZE, SIZE)):
        frac = mask.float().mean().item()
        assert mass_in_region(amap, mask).mean().item() == pytest.approx(frac, abs=0.02)


def test_mass_in_region_signs_and_degenerate_maps() -> None:
    mask = square_mask()
    amap = torch.where(mask, 1.0, -3.0).unsqueeze(0)
    n_in, n_out = mask.sum().item(), (~mask).sum().item()
    assert mass_in_region(amap, mask).item() == pytest.approx(1.0)
    assert mass_in_region(amap, mask, positive_only=False).item() == pytest.approx(n_in / (n_in + 3 * n_out))
    assert mass_in_region(-amap.abs(), mask).isnan().all(), "no positive mass: undefined"
    # mask layouts: [H, W], [B, H, W], [B, 1, H, W] (a data set's masks), float in [0, 1]
    for m in (mask, mask[None], mask[None, None], mask[None, None].float()):
        assert mass_in_region(amap, m).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(1, 24, 24\)"):
        mass_in_region(amap, torch.ones(1, 10, 10))
    with pytest.raises(ValueError, match="attribution_map"):
        mass_in_region(amap[None], mask)


def test_pointing_game_ties_tolerance_and_empty_masks() -> None:
    mask = square_mask()
    assert not pointing_game(torch.ones(1, SIZE, SIZE), mask).item(), "a constant map points nowhere"
    amap = torch.zeros(1, SIZE, SIZE)
    amap[0, 4, 11] = 1.0  # one pixel left of the square
    assert not pointing_game(amap, mask).item()
    assert pointing_game(amap, mask, tolerance=1).item()
    amap[0, 5, 13] = 1.0  # a tie, inside: still a miss, since a maximiser lies outside
    assert not pointing_game(amap, mask).item()
    assert not pointing_game(torch.rand(1, SIZE, SIZE), torch.zeros(SIZE, SIZE)).item()


def test_centre_mask() -> None:
    m = centre_mask(96, 96)
    assert m.shape == (96, 96) and m.dtype == torch.bool and m.sum().item() == 32 * 32
    assert m[32:64, 32:64].all() and not m[31].any() and not m[64].any() and not m[:, 31].any()
    assert centre_mask(48, 48)[16:32, 16:32].all() and centre_mask(48, 48).sum().item() == 256
    assert centre_mask(224, 224).sum().item() == 75 * 75
    rect = centre_mask(48, 96)
    assert rect.sum(0).max().item() == 16 and rect.sum(1).max().item() == 32
    with pytest.raises(ValueError, match="frac"):
        centre_mask(96, 96, frac=1.5)
    with pytest.raises(ValueError, match="0x96"):
        centre_mask(0, 96)


# --------------------------------------------------------------------------------------------
# deletion / insertion
# --------------------------------------------------------------------------------------------
def test_deletion_insertion_rank_a_true_map_above_a_random_one() -> None:
    model, x = SquareEvidence(), images(8)
    target = torch.ones(8, dtype=torch.long)
    true_map = attribution_map(saliency(model, x, target)) + 1e-3 * torch.rand(8, SIZE, SIZE)  # break ties at random
    random_map = torch.rand(8, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    good = deletion_insertion_auc(model, x, true_map, target, steps=16)
    bad = deletion_insertion_auc(model, x, random_map, 1, steps=16)
    assert (good["deletion"] < good["insertion"]).all()
    assert (good["deletion"] < 0.1).all() and (good["insertion"] > 0.9).all()
    assert (bad["deletion"] > good["deletion"] + 0.3).all()
    assert (bad["insertion"] < good["insertion"] - 0.3).all()
    # curve ends: the image itself and the baseline
    with torch.no_grad():
        p_x = torch.softmax(model(x), 1)[:, 1]
        p_0 = torch.softmax(model(torch.zeros_like(x)), 1)[:, 1]
    assert good["deletion_curve"][:, 0] == pytest.approx(p_x) and good["deletion_curve"][:, -1] == pytest.approx(p_0)
    assert good["insertion_curve"][:, 0] == pytest.approx(p_0) and good["insertion_curve"][:, -1] == pytest.approx(p_x)
    assert good["fractions"][0] == 0 and good["fractions"][-1] == 1 and good["deletion_curve"].shape == (8, 17)


def test_deletion_insertion_baselines_and_model_state() -> None:
    model = tiny_cnn(0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, amap = images(4), torch.rand(4, SIZE, SIZE)
    for baseline in ("black", "blur", "noise", "mean", torch.full((3, 1, 1), 0.5)):
        out = deletion_insertion_auc(model, x, amap, 0, steps=4, baseline=baseline)
        assert out["deletion"].shape == (4,) and ((out["deletion"] >= 0) & (out["deletion"] <= 1)).all()
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="baseline"):
        deletion_insertion_auc(model, x, amap, 0, baseline="white")
    with pytest.raises(ValueError, match="target"):
        deletion_insertion_auc(model, x, amap, torch.zeros(3, dtype=torch.long))


def test_deletion_blur_is_rises() -> None:
    """The fully deleted image under ``baseline="blur"`` is RISE's blur (torchvision, kernel 11, σ 5), not
    IG's stronger default blur baseline."""
    model, x = Texture(), images(3)
    out = deletion_insertion_auc(model, x, torch.rand(3, SIZE, SIZE), 1, steps=2, baseline="blur")
    with torch.no_grad():
        rise = torch.softmax(model(gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])), 1)[:, 1]
        ig_blur = torch.softmax(model(make_baseline(x, "blur")), 1)[:, 1]
    assert out["deletion_curve"][:, -1] == pytest.approx(rise, abs=1e-5)
    assert out["insertion_curve"][:, 0] == pytest.approx(rise, abs=1e-5)
    assert not torch.allclose(rise, ig_blur, atol=1e-3)


# --------------------------------------------------------------------------------------------
# infidelity and sensitivity
# --------------------------------------------------------------------------------------------
def test_infidelity_is_zero_for_exact_attributions_of_a_linear_model() -> None:
    model = Linear()
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 0, 1, 0])

    def grad_x_input(m: nn.Module, inp: Tensor, tgt: Tensor) -> Tensor:
        return InputXGradient(m).attribute(inp, target=tgt)

    pattern = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(9)) * 0.05

    def noise(m: nn.Module, inp: Tensor, tgt: Tensor) -> Tensor:  # the same wrong map for every input
        return pattern.expand_as(inp)

    exact = infidelity_and_sensitivity(model, x, grad_x_input, t, PerturbationConfig(multiply_by_inputs=True))
    exact_grad = infidelity_and_sensitivity(model, x, saliency, t, PerturbationConfig(multiply_by_inputs=False))
    wrong = infidelity_and_sensitivity(model, x, noise, t, PerturbationConfig(multiply_by_inputs=True))
    assert exact["infidelity"].shape == (5,) and exact["sensitivity_max"].shape == (5,)
    assert exact["infidelity"].max().item() < 1e-10
    assert exact_grad["infidelity"].max().item() < 1e-10
    assert wrong["infidelity"].min().item() > 1e-5  # > 10^5 x the exact maps' (float rounding)
    assert exact_grad["sensitivity_max"].max().item() < 1e-6, "a linear model's gradient does not move"
    assert wrong["sensitivity_max"].min().item() == 0.0, "a map that ignores its input is insensitive"


def test_infidelity_and_sensitivity_on_a_cnn_are_seeded_and_leave_state_alone() -> None:
    model = tiny_cnn(0).train()
    x = images(4)
    rng = torch.get_rng_state()
    saliency_cfg = PerturbationConfig(n_perturb=4, multiply_by_inputs=False, seed=1)
    a = infidelity_and_sensitivity(model, x, saliency, 1, saliency_cfg)
    b = infidelity_and_sensitivity(model, x, saliency, 1, saliency_cfg)
    c = infidelity_and_sensitivity(model, x, integrated_gradients, 1, PerturbationConfig(n_perturb=4, max_batch=8))
    assert torch.equal(rng, torch.get_rng_state())
    assert torch.equal(a["infidelity"], b["infidelity"]) and torch.equal(a["sensitivity_max"], b["sensitivity_max"])
    assert (a["sensitivity_max"] > 0).all() and (c["infidelity"] >= 0).all() and c["sensitivity_max"].shape == (4,)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="n_perturb must be >= 1"):
        infidelity_and_sensitivity(model, x, saliency, 1, PerturbationConfig(n_perturb=0))


# --------------------------------------------------------------------------------------------
# randomisation sanity check
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("explain", [saliency, integrated_gradients], ids=["saliency", "ig"])
def test_randomisation_changes_the_maps_of_a_cnn(explain) -> None:  # noqa: ANN001 - a test parameter
    model = tiny_cnn(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = randomisation_check(model, images(8), explain, 0, seed=1)
    assert out["spearman"].shape == (8,) and out["n_reset"] > 5
    assert out["mean_spearman"] < 0.6, out["spearman"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the original was modified"


def test_randomisation_exposes_a_model_independent_explanation() -> None:
    """An 'explanation' that only looks at the image (here: the image itself) survives randomisation."""
    out = randomisation_check(tiny_cnn(0), images(4), lambda m, x, t: x.detach(), 0, seed=1)
    assert out["spearman"] == pytest.approx(torch.ones(4))


def test_randomised_copy_refuses_to_reproduce_the_weights() -> None:
    model = tiny_cnn(0)
    twin, n = randomised_copy(model, seed=1)
    assert n > 5 and not torch.equal(twin.encoder[0][0].weight, model.encoder[0][0].weight)
    with pytest.raises(ValueError, match="seed=0"):
        randomised_copy(model, seed=0)  # built from torch.manual_seed(0): the same draw


def test_spearman() -> None:
    a = torch.rand(3, 5, 5)
    assert spearman_per_image(a, a * 2 + 1) == pytest.approx(torch.ones(3))
    assert spearman_per_image(a, -a) == pytest.approx(-torch.ones(3))
    assert spearman_per_image(a, torch.ones(3, 5, 5)).isnan().all()
