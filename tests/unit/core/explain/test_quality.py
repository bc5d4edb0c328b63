"""Attribution scores: known answers on models whose evidence is planted in a known square (localisation,
normalised deletion / insertion against random orders), exact infidelity for linear models (IG from a
non-black baseline included), closed-form cascading randomisation of a linear network, the plain
gradient, and the randomisation sanity checks on a real small CNN."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from robustdx.core.config import ModelConfig
from robustdx.core.explain import ig
from robustdx.core.explain.baselines import make_baseline
from robustdx.core.explain.maps import attribution_map
from robustdx.core.explain.quality import (
    DeletionConfig,
    PerturbationConfig,
    cascading_randomisation,
    centre_mask,
    deletion_insertion_auc,
    gradient_map,
    infidelity_and_sensitivity,
    mass_in_region,
    pointing_game,
    randomisation_check,
    randomisation_stages,
    randomised_copy,
    spearman_per_image,
)
from robustdx.core.models import RobustDxNet, build_model
from robustdx.core.util import epoch_seed

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


class Constant(nn.Module):
    """Ignores its input: the same logits (class-1 probability ~0.38) for every image."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tensor([0.25, -0.25]).to(x).expand(x.shape[0], 2) + 0.0 * x.mean()


class TwoLinear(nn.Module):
    """``f(x) = B (A x)``: the input gradient of class ``t`` is ``Aᵀ B[t]``, the same for every image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(123)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6))
        self.classifier = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.encoder(x))


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
def _trapezoid(f: Tensor, y: Tensor) -> Tensor:
    return torch.trapezoid(y, f, dim=-1)


def test_deletion_insertion_of_the_true_map_exactly_and_against_random_orders() -> None:
    """The square's 36 pixels are 1/16 of the image: after the first step of a map that ranks them first,
    deletion has left the black-square probability ``p0`` and insertion the image's ``p(x)``, so both
    normalised AUCs are known exactly. A random order removes a fraction ``f`` of the square on average,
    so its curves approach ``σ(20(m(1 − f) − 0.25)) / p(x)`` and ``σ(20(m f − 0.25)) / p(x)``, ``m`` the
    square's mean."""
    model, x = SquareEvidence(), images(8)
    target = torch.ones(8, dtype=torch.long)
    true_map = square_mask().float().expand(8, SIZE, SIZE)
    out = deletion_insertion_auc(model, x, true_map, target, DeletionConfig(steps=16, n_random=8, seed=5))
    with torch.no_grad():
        p_x = torch.softmax(model(x), 1)[:, 1]
        r = torch.softmax(model(torch.zeros_like(x)), 1)[:, 1] / p_x
    assert out["p_clean"] == pytest.approx(p_x)
    assert out["deletion"] == pytest.approx((1 + r) / 32 + 15 / 16 * r, abs=1e-5)
    assert out["insertion"] == pytest.approx((r + 1) / 32 + 15 / 16, abs=1e-5)
    fine = torch.linspace(0, 1, 2001)
    m = x[:, :, ROWS, COLS].mean((1, 2, 3)).view(-1, 1)
    expect_del = _trapezoid(fine, torch.sigmoid(20 * (m * (1 - fine) - 0.25))) / p_x
    expect_ins = _trapezoid(fine, torch.sigmoid(20 * (m * fine - 0.25))) / p_x
    assert out["deletion_random"].mean().item() == pytest.approx(expect_del.mean().item(), abs=0.05)
    assert out["insertion_random"].mean().item() == pytest.approx(expect_ins.mean().item(), abs=0.05)
    assert (out["deletion_diff"] < -0.3).all() and (out["insertion_diff"] > 0.3).all()
    assert torch.equal(out["deletion_diff"], out["deletion"] - out["deletion_random"])
    # the normalised curves: deletion starts and insertion ends at 1; the other ends are p0 / p(x)
    for kind in ("deletion_curve", "deletion_random_curve"):
        assert out[kind][:, 0] == pytest.approx(torch.ones(8)) and out[kind][:, -1] == pytest.approx(r)
    for kind in ("insertion_curve", "insertion_random_curve"):
        assert out[kind][:, 0] == pytest.approx(r) and out[kind][:, -1] == pytest.approx(torch.ones(8))
    assert out["fractions"][0] == 0 and out["fractions"][-1] == 1 and out["deletion_curve"].shape == (8, 17)


def test_a_map_that_ranks_the_evidence_last_scores_below_random() -> None:
    """The reverse ranking: the curves stay at 1 (deletion) and ``p0 / p(x)`` (insertion) until the last
    sixteenth, the exact mirror of the true map's AUCs, and worse than random orders on both."""
    model, x = SquareEvidence(), images(8)
    reverse = (~square_mask()).float().expand(8, SIZE, SIZE)
    out = deletion_insertion_auc(model, x, reverse, 1, DeletionConfig(steps=16))
    with torch.no_grad():
        r = torch.softmax(model(torch.zeros_like(x)), 1)[:, 1] / torch.softmax(model(x), 1)[:, 1]
    assert out["deletion"] == pytest.approx(15 / 16 + (1 + r) / 32, abs=1e-5)
    assert out["insertion"] == pytest.approx(15 / 16 * r + (r + 1) / 32, abs=1e-5)
    assert (out["deletion_diff"] > 0.3).all() and (out["insertion_diff"] < -0.3).all()


def test_a_constant_model_scores_one_and_no_better_than_random() -> None:
    """Raw probabilities would give this model AUC ≈ 0.38 on both curves (best on deletion, worst on
    insertion); normalised, every curve is 1 and the map is exactly as good as random."""
    x, amap = images(3), torch.rand(3, SIZE, SIZE)
    out = deletion_insertion_auc(Constant(), x, amap, 1, DeletionConfig(steps=8, n_random=2))
    for key in ("deletion", "insertion", "deletion_random", "insertion_random"):
        assert out[key] == pytest.approx(torch.ones(3), abs=1e-6), key
    for key in ("deletion_diff", "insertion_diff"):
        assert out[key] == pytest.approx(torch.zeros(3), abs=1e-6), key


def test_random_orders_are_seeded_and_leave_the_global_rng_alone() -> None:
    model, x, amap = SquareEvidence(), images(4), torch.rand(4, SIZE, SIZE)
    rng = torch.get_rng_state()
    a = deletion_insertion_auc(model, x, amap, 1, DeletionConfig(steps=8, seed=1))
    b = deletion_insertion_auc(model, x, amap, 1, DeletionConfig(steps=8, seed=1))
    c = deletion_insertion_auc(model, x, amap, 1, DeletionConfig(steps=8, seed=2))
    assert torch.equal(rng, torch.get_rng_state())
    assert torch.equal(a["deletion_random"], b["deletion_random"]) and torch.equal(a["deletion"], c["deletion"])
    assert not torch.equal(a["deletion_random"], c["deletion_random"])


def test_deletion_insertion_baselines_and_model_state() -> None:
    model = tiny_cnn(0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, amap = images(4), torch.rand(4, SIZE, SIZE)
    for baseline in ("black", "blur", "noise", "mean", torch.full((3, 1, 1), 0.5)):
        out = deletion_insertion_auc(model, x, amap, 0, DeletionConfig(steps=4, baseline=baseline, n_random=1))
        assert out["deletion"].shape == (4,) and (out["deletion"] >= 0).all() and out["insertion"].isfinite().all()
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="baseline"):
        deletion_insertion_auc(model, x, amap, 0, DeletionConfig(baseline="white"))
    with pytest.raises(ValueError, match="target"):
        deletion_insertion_auc(model, x, amap, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="n_random must be >= 1"):
        deletion_insertion_auc(model, x, amap, 0, DeletionConfig(n_random=0))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        deletion_insertion_auc(model, x, amap, 0, DeletionConfig(steps=0))


def test_deletion_blur_is_rises() -> None:
    """The fully deleted image under ``baseline="blur"`` is RISE's blur (torchvision, kernel 11, σ 5), not
    IG's stronger default blur baseline."""
    model, x = Texture(), images(3)
    out = deletion_insertion_auc(model, x, torch.rand(3, SIZE, SIZE), 1, DeletionConfig(steps=2, baseline="blur"))
    with torch.no_grad():
        p_x = torch.softmax(model(x), 1)[:, 1]
        rise = torch.softmax(model(gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])), 1)[:, 1]
        ig_blur = torch.softmax(model(make_baseline(x, "blur")), 1)[:, 1]
    assert out["deletion_curve"][:, -1] == pytest.approx(rise / p_x, abs=1e-5)
    assert out["insertion_curve"][:, 0] == pytest.approx(rise / p_x, abs=1e-5)
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

    exact = infidelity_and_sensitivity(model, x, grad_x_input, t, baseline="black")
    exact_grad = infidelity_and_sensitivity(model, x, saliency, t, baseline=None)
    own_grad = infidelity_and_sensitivity(model, x, gradient_map, t, baseline=None)
    wrong = infidelity_and_sensitivity(model, x, noise, t, baseline="black")
    assert exact["infidelity"].shape == (5,) and exact["sensitivity_max"].shape == (5,)
    assert exact["infidelity"].max().item() < 1e-10
    assert exact_grad["infidelity"].max().item() < 1e-10 and own_grad["infidelity"].max().item() < 1e-10
    assert wrong["infidelity"].min().item() > 1e-5  # > 10^5 x the exact maps' (float rounding)
    assert exact_grad["sensitivity_max"].max().item() < 1e-6, "a linear model's gradient does not move"
    assert wrong["sensitivity_max"].min().item() == 0.0, "a map that ignores its input is insensitive"


@pytest.mark.parametrize("kind", ["tensor", "named"])
def test_infidelity_of_exact_ig_from_a_non_black_baseline_is_zero(kind: str) -> None:
    """IG of ``f = w·x`` from a baseline ``b`` is exactly ``(x − b) ⊙ w``. With the perturbation
    ``I = (x − b) ⊙ noise`` its infidelity is 0; the black-baseline perturbation ``I = x ⊙ noise`` misses
    ``Σ noise ⊙ b ⊙ w`` and scores it as unfaithful."""
    model = Linear(seed=2)
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    b = torch.full((3, 8, 8), 0.5) if kind == "tensor" else "mean"
    b_img = b if kind == "tensor" else make_baseline(x, "mean")

    def exact_ig(m: nn.Module, inp: Tensor, tgt: Tensor) -> Tensor:
        ref = b if isinstance(b, Tensor) else make_baseline(inp.detach(), b)
        return ig.integrated_gradients(m, inp, target=tgt, baseline=ref, n_steps=4).attributions

    t = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        closed_form = (x - b_img) * model.fc.weight[t].view(5, 3, 8, 8)
    assert torch.allclose(exact_ig(model, x, t), closed_form, atol=1e-6)
    cfg = PerturbationConfig(n_perturb=16)
    aware = infidelity_and_sensitivity(model, x, exact_ig, t, cfg, baseline=b)
    black = infidelity_and_sensitivity(model, x, exact_ig, t, cfg, baseline="black")
    assert aware["infidelity"].max().item() < 1e-10
    assert black["infidelity"].min().item() > 1e-6  # 10^4 x rounding


def test_infidelity_and_sensitivity_on_a_cnn_are_seeded_and_leave_state_alone() -> None:
    model = tiny_cnn(0).train()
    x = images(4)
    rng = torch.get_rng_state()
    saliency_cfg = PerturbationConfig(n_perturb=4, seed=1)
    a = infidelity_and_sensitivity(model, x, saliency, 1, saliency_cfg, baseline=None)
    b = infidelity_and_sensitivity(model, x, saliency, 1, saliency_cfg, baseline=None)
    ig_cfg = PerturbationConfig(n_perturb=4, max_batch=8)
    c = infidelity_and_sensitivity(model, x, integrated_gradients, 1, ig_cfg, baseline="black")
    assert torch.equal(rng, torch.get_rng_state())
    assert torch.equal(a["infidelity"], b["infidelity"]) and torch.equal(a["sensitivity_max"], b["sensitivity_max"])
    assert (a["sensitivity_max"] > 0).all() and (c["infidelity"] >= 0).all() and c["sensitivity_max"].shape == (4,)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="n_perturb must be >= 1"):
        infidelity_and_sensitivity(model, x, saliency, 1, PerturbationConfig(n_perturb=0), baseline=None)
    with pytest.raises(ValueError, match="'white'"):
        infidelity_and_sensitivity(model, x, saliency, 1, baseline="white")


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


# --------------------------------------------------------------------------------------------
# cascading randomisation
# --------------------------------------------------------------------------------------------
def test_randomisation_stages_run_from_the_head_down() -> None:
    assert randomisation_stages(tiny_cnn(0)) == ["classifier", "encoder.2", "encoder.1", "encoder.0"]
    torch.manual_seed(0)
    resnet = build_model(ModelConfig(arch="resnet18", proj_dim=8, head_hidden=8))
    assert randomisation_stages(resnet) == [
        "classifier",
        *(f"encoder.layer{i}" for i in (4, 3, 2, 1)),
        "encoder.bn1",
        "encoder.conv1",
    ]
    assert randomisation_stages(TwoLinear()) == ["classifier", "encoder.1"]
    assert randomisation_stages(Linear()) == ["fc"]


def test_cascading_randomisation_of_a_linear_network_has_the_closed_form() -> None:
    """The gradient map of ``B A x`` is ``Aᵀ B[t]``; stage ``i`` re-draws its layers from
    ``torch.manual_seed(epoch_seed(seed, i))``, so the expected correlations follow by hand."""
    model, x, t = TwoLinear(), images(3)[..., :8, :8], torch.tensor([1, 0, 1])
    a, b = model.encoder[1].weight.detach(), model.classifier.weight.detach()
    torch.manual_seed(epoch_seed(7, 0))
    b_rand = nn.Linear(6, 2).weight.detach()  # what classifier.reset_parameters() draws from that seed
    torch.manual_seed(epoch_seed(7, 1))
    a_rand = nn.Linear(3 * 8 * 8, 6).weight.detach()

    def grad_map(aw: Tensor, bw: Tensor) -> Tensor:
        return (bw[t] @ aw).abs().view(3, 3, 8, 8).sum(1)

    rng = torch.get_rng_state()
    out = cascading_randomisation(model, x, gradient_map, t, seed=7)
    assert torch.equal(rng, torch.get_rng_state())
    assert out["stages"] == ["classifier", "encoder.1"] and out["spearman"].shape == (2, 3)
    trained = grad_map(a, b)
    assert out["spearman"][0] == pytest.approx(spearman_per_image(trained, grad_map(a, b_rand)), abs=1e-6)
    assert out["spearman"][1] == pytest.approx(spearman_per_image(trained, grad_map(a_rand, b_rand)), abs=1e-6)
    assert out["mean_spearman"] == pytest.approx([float(r.mean()) for r in out["spearman"]])
    assert out["full"]["n_reset"] == 2 and out["full"]["spearman"].shape == (3,)
    assert torch.equal(model.classifier.weight, b) and torch.equal(model.encoder[1].weight, a), "the original is untouched"


def test_cascade_exposes_where_a_map_stops_depending_on_the_weights() -> None:
    """A map of the encoder's features survives the head's randomisation exactly and falls once the
    encoder's last block is re-drawn; a map of the image itself survives every stage."""

    def feature_gradient(m: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return torch.autograd.grad(m.embed(x).sum(), x)[0]

    model = tiny_cnn(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = cascading_randomisation(model, images(4), feature_gradient, 0, seed=1)
    assert out["spearman"][0] == pytest.approx(torch.ones(4), abs=1e-6)
    assert out["mean_spearman"][1] < 0.9
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    same = cascading_randomisation(model, images(4), lambda m, x, t: x.detach(), 0, seed=1)
    assert same["spearman"] == pytest.approx(torch.ones(4, 4)) and same["full"]["mean_spearman"] == pytest.approx(1.0)


def test_cascading_randomisation_refuses_a_model_without_weights() -> None:
    with pytest.raises(ValueError, match="no layers with weights"):
        cascading_randomisation(nn.Sequential(nn.Flatten()), images(1), lambda m, x, t: x.detach(), 0)


# --------------------------------------------------------------------------------------------
# the plain-gradient control
# --------------------------------------------------------------------------------------------
def test_gradient_map_of_a_linear_model_is_its_weight_row() -> None:
    model, x = Linear(), torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1, 0, 0, 1])
    g = gradient_map(model, x, t)
    assert g.shape == x.shape and not g.requires_grad
    assert torch.allclose(g, model.fc.weight[t].detach().view(4, 3, 8, 8))
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert torch.allclose(gradient_map(model, x), model.fc.weight[pred].detach().view(4, 3, 8, 8))


def test_gradient_map_matches_captum_and_leaves_the_model_alone() -> None:
    model = tiny_cnn(0).train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(3).requires_grad_(True)
    g = gradient_map(model, x, 1)
    model.eval()
    ref = saliency(model, x.detach(), torch.ones(3, dtype=torch.long))
    model.train()
    assert torch.allclose(g, ref, atol=1e-7)
    assert model.training and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters()) and x.grad is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        gradient_map(model, x, 5)
