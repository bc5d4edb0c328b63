"""Evaluation: calibration and bootstrap known answers, per-group metrics, the PGD robustness curve
(against torchattacks), the Square attack (against models whose answer is known) and the
gradient-masking flags (on synthetic curves and on a model with masked gradients)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from robustdx.core.attacks.pgd import square_attack, square_p_schedule
from robustdx.core.config import ModelConfig
from robustdx.core.evaluation.metrics import (
    DEFAULT_EPS_GRID,
    bootstrap_ci,
    calibration_bins,
    classification_metrics,
    evaluate_classifier,
    expected_calibration_error,
    gradient_masking_flags,
    group_metrics,
    metric_cis,
    robustness_curve,
    square_robust_accuracy,
    subsample,
)
from robustdx.core.models import RobustDxNet, build_model

pytestmark = pytest.mark.unit

EPS = 8 / 255


def tiny_model(seed: int = 0) -> RobustDxNet:
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="test_cnn", proj_dim=8, head_hidden=8)).eval()


def colour_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images, class 1 when the red channel is brighter on average than the green one. The
    difference has a std of ~6/255, so budgets of a few /255 flip a good share of the items."""
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return x, (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()


@pytest.fixture(scope="module")
def trained() -> RobustDxNet:
    """The tiny CNN after 60 Adam steps on :func:`colour_task` (~94 % accuracy, ~1 s)."""
    torch.set_num_threads(1)  # module fixtures are set up before the function-scoped one above
    model = tiny_model(0).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        x, y = colour_task(64, 100 + step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


class MeanIntensity(nn.Module):
    """Class 1 iff the mean pixel exceeds ``t``: an L∞ perturbation of ε moves the mean by at most ε,
    so an image whose mean is within ε of ``t`` can be flipped and one further away cannot (the
    robust accuracy is known exactly). ``quantise`` rounds inputs to 8-bit levels first: the same
    function up to 0.5/255, but with zero gradient everywhere (masked gradients)."""

    def __init__(self, t: float = 0.5, scale: float = 50.0, quantise: bool = False) -> None:
        super().__init__()
        self.t, self.scale, self.quantise = t, scale, quantise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantise:
            x = torch.round(x * 255) / 255
        z = (x.mean((1, 2, 3)) - self.t) * self.scale
        return torch.stack([-z, z], 1)


def margin_images(margins: list[float], size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Interior images whose mean is ``0.5 + m·ε`` exactly (labels: the side of 0.5), so no pixel can
    reach 0 or 1 within ε and the margin of :class:`MeanIntensity` is ``|m|·ε``."""
    g = torch.Generator().manual_seed(seed)
    m = torch.tensor(margins)
    noise = (torch.rand(len(margins), 3, size, size, generator=g) - 0.5) * 0.2
    x = 0.5 + m.view(-1, 1, 1, 1) * EPS + noise - noise.mean((1, 2, 3), keepdim=True)
    return x, (m > 0).long()


def as_dataset(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
    return TensorDataset(x, y, torch.zeros_like(y))


def own_label_dataset(model: nn.Module, n: int = 32, size: int = 16, seed: int = 0) -> TensorDataset:
    """Random images labelled with the model's own clean prediction (clean accuracy 1)."""
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return as_dataset(x, y)


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------
def probs_with(conf: float, n: int, n_correct: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` binary predictions of class 1 with confidence ``conf``, ``n_correct`` of them right."""
    probs = np.tile([1 - conf, conf], (n, 1))
    labels = np.array([1] * n_correct + [0] * (n - n_correct))
    return probs, labels


def test_ece_perfectly_calibrated_is_zero() -> None:
    probs, labels = probs_with(0.8, 100, 80)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("conf", "n_correct", "want"), [(1.0, 50, 0.5), (0.9, 60, 0.3), (0.6, 90, 0.3)])
def test_ece_miscalibrated_known_answers(conf: float, n_correct: int, want: float) -> None:
    probs, labels = probs_with(conf, 100, n_correct)
    assert expected_calibration_error(probs, labels) == pytest.approx(want)


def test_ece_weights_bins_by_count() -> None:
    """Half calibrated at 0.6, half over-confident (0.95 sure, 75 % right): ECE = ½·0 + ½·0.2."""
    p1, l1 = probs_with(0.6, 100, 60)
    p2, l2 = probs_with(0.95, 100, 75)
    assert expected_calibration_error(np.concatenate([p1, p2]), np.concatenate([l1, l2])) == pytest.approx(0.1)


def test_ece_matches_loop_reference() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 3, 500)
    conf, pred = probs.max(1), probs.argmax(1)
    ref = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ref += inside.mean() * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(ref)


def test_calibration_bins_edges_and_validation() -> None:
    probs = np.array([[0.5, 0.5], [0.0, 1.0], [0.3, 0.7]])
    bins = calibration_bins(probs, np.array([0, 1, 0]), n_bins=2)
    assert bins["count"].tolist() == [1, 2]  # 0.5 -> (0, 0.5]; 0.7 and 1.0 -> (0.5, 1]
    assert bins["acc"].tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="n_bins"):
        calibration_bins(probs, np.array([0, 1, 0]), n_bins=0)
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        expected_calibration_error(probs, np.array([0, 1]))


# --------------------------------------------------------------------------------------------
# bootstrap and metrics
# --------------------------------------------------------------------------------------------
def test_bootstrap_ci_contains_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 2000):
        correct = rng.random(n) < 0.7
        low, high = bootstrap_ci(lambda i, c=correct: float(c[i].mean()), n, n_boot=500, seed=1)
        assert low <= correct.mean() <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # width ~ 1/sqrt(n): 40x the items, ~6x narrower
    # normal approximation for n = 2000: 2·1.96·sqrt(0.21/2000) ≈ 0.040
    assert widths[1] == pytest.approx(0.040, rel=0.25)


def test_bootstrap_ci_is_seeded_and_skips_undefined_resamples() -> None:
    values = np.arange(30.0)

    def metric(i: np.ndarray) -> float:
        return float(values[i].mean())

    assert bootstrap_ci(metric, 30, 200, seed=3) == bootstrap_ci(metric, 30, 200, seed=3)
    assert bootstrap_ci(metric, 30, 200, seed=3) != bootstrap_ci(metric, 30, 200, seed=4)
    assert all(math.isnan(v) for v in bootstrap_ci(lambda i: float("nan"), 10, 20))
    with pytest.raises(ValueError, match="n=0"):
        bootstrap_ci(metric, 0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(metric, 10, alpha=1.5)


def test_classification_metrics_keeps_keys_and_adds_calibration_and_groups() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1, 0, 0])
    groups = np.array([0, 0, 1, 1, 2, 2])
    out = classification_metrics(probs, labels, groups)
    assert {"acc", "bal_acc", "loss", "auc", "ece", "group_acc", "group_n", "worst_group_acc", "worst_group"} <= set(out)
    assert out["acc"] == pytest.approx(4 / 6)
    assert out["group_acc"] == {"0": 1.0, "1": 0.5, "2": 0.5}
    assert out["group_n"] == {"0": 2, "1": 2, "2": 2}
    assert out["worst_group_acc"] == 0.5 and out["worst_group"] == "1"
    json.dumps(out)


def test_group_metrics_worst_group() -> None:
    labels = np.array([0, 1] * 30)
    pred = labels.copy()
    groups = np.repeat([0, 1, 2], 20)
    pred[20:26] = 1 - pred[20:26]  # group 1: 14/20 right
    pred[40:42] = 1 - pred[40:42]  # group 2: 18/20 right
    probs = np.eye(2)[pred] * 0.9 + 0.05
    out = group_metrics(probs, labels, groups)
    assert out["worst_group"] == "1"
    assert out["worst_group_acc"] == pytest.approx(0.7)
    assert {g: v["acc"] for g, v in out["groups"].items()} == pytest.approx({"0": 1.0, "1": 0.7, "2": 0.9})
    assert all(v["n"] == 20 for v in out["groups"].values())
    cis = metric_cis(probs, labels, n_boot=200)
    assert cis["acc"][0] <= float((pred == labels).mean()) <= cis["acc"][1]
    with pytest.raises(ValueError, match="groups"):
        group_metrics(probs, labels, groups[:10])


# --------------------------------------------------------------------------------------------
# PGD robustness curve
# --------------------------------------------------------------------------------------------
def test_robustness_curve_defaults_on_tiny_model(trained: RobustDxNet) -> None:
    """PGD-50 with 2 restarts over the default grid: records are complete, robust accuracy starts at
    clean accuracy, falls with ε, and the model and the global RNG are left alone."""
    ds = as_dataset(*colour_task(32, 1))
    trained.train()
    state = torch.get_rng_state()
    try:
        curve = robustness_curve(trained, ds, device="cpu", max_n=32, batch_size=16, n_boot=200)
    finally:
        trained.eval()
    assert torch.equal(state, torch.get_rng_state())
    assert all(p.requires_grad and p.grad is None for p in trained.parameters())
    assert [r["eps"] for r in curve] == pytest.approx(list(DEFAULT_EPS_GRID))
    assert [r["eps_label"] for r in curve] == ["0/255", "1/255", "2/255", "4/255", "8/255"]
    assert all(r["attack"] == "pgd-50x2" and r["n"] == 32 for r in curve)
    assert len({r["clean_acc"] for r in curve}) == 1 and curve[0]["clean_acc"] > 0.8
    accs = [r["robust_acc"] for r in curve]
    assert accs[0] == curve[0]["clean_acc"]
    assert all(b <= a + 1e-9 for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[2] < accs[0] - 0.2 and accs[-1] <= 0.1, accs
    assert all(r["ci"][0] <= r["robust_acc"] <= r["ci"][1] for r in curve)
    assert gradient_masking_flags(curve) == []
    json.dumps(curve)


def test_robustness_curve_matches_torchattacks(trained: RobustDxNet) -> None:
    """Same items, same seed, same batches: our PGD number equals torchattacks' (single restart),
    and two restarts can only be stronger."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = colour_task(48, 2)
    ds = as_dataset(x, y)
    eps, steps, seed = 2 / 255, 10, 3
    kw = {"steps": steps, "max_n": 40, "batch_size": 16, "seed": seed, "n_boot": 10}
    (ours,) = robustness_curve(trained, ds, (eps,), "cpu", restarts=1, **kw)
    items = torch.tensor(ours["items"])
    assert ours["items"] == subsample(48, 40, seed).tolist()
    torch.manual_seed(seed)
    pgd = torchattacks.PGD(trained, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    robust = []
    for chunk in items.split(16):
        xa = pgd(x[chunk], y[chunk])
        with torch.no_grad():
            robust.append((trained(x[chunk]).argmax(1) == y[chunk]) & (trained(xa).argmax(1) == y[chunk]))
    ref = torch.cat(robust).float().mean().item()
    assert ours["robust_acc"] == pytest.approx(ref, abs=1 / 40 + 1e-9)
    assert ours["robust_acc"] < ours["clean_acc"] - 0.1
    (two,) = robustness_curve(trained, ds, (eps,), "cpu", restarts=2, **kw)
    assert two["robust_acc"] <= ours["robust_acc"] + 1e-9


def test_pgd_curve_on_known_margins() -> None:
    """On the mean-intensity model the robust accuracy is known: items with margin > ε survive."""
    x, y = margin_images([0.3, -0.5, 1.5, -2.0, 0.7, -3.0, 0.2, 1.2])
    curve = robustness_curve(MeanIntensity(), as_dataset(x, y), (0.0, EPS), steps=10, restarts=1, max_n=None, n_boot=10)
    assert curve[0]["robust_acc"] == 1.0
    assert curve[1]["robust_acc"] == pytest.approx(4 / 8)


# --------------------------------------------------------------------------------------------
# Square attack
# --------------------------------------------------------------------------------------------
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


def test_square_lowers_accuracy_of_a_cnn_and_never_raises_it(trained: RobustDxNet) -> None:
    ds = as_dataset(*colour_task(24, 3))
    out = square_robust_accuracy(trained, ds, EPS, n_queries=100, max_n=24, batch_size=12, n_boot=50)
    assert out["n"] == 24 and out["n_queries"] == 100 and out["attack"] == "square-100"
    assert out["robust_acc"] < out["clean_acc"] - 0.3
    robust, items = np.array(out["robust_correct"]), np.array(out["items"])
    with torch.no_grad():
        clean = (trained(ds.tensors[0][items]).argmax(1) == ds.tensors[1][items]).numpy()
    assert not (robust & ~clean).any(), "an item misclassified clean counted as robust"
    # an untrained model's mostly wrong predictions: accuracy still cannot go up
    x = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    out = square_robust_accuracy(tiny_model(3), as_dataset(x, torch.arange(24) % 2), EPS, n_queries=30, max_n=None, n_boot=10)
    assert out["robust_acc"] <= out["clean_acc"]


# --------------------------------------------------------------------------------------------
# gradient-masking flags
# --------------------------------------------------------------------------------------------
def test_flags_fire_on_a_curve_that_rises_with_eps() -> None:
    curve = [
        {"eps": 0.0, "robust_acc": 0.9, "clean_acc": 0.9},
        {"eps": 2 / 255, "robust_acc": 0.5, "clean_acc": 0.9},
        {"eps": 4 / 255, "robust_acc": 0.7, "clean_acc": 0.9},
        {"eps": 8 / 255, "robust_acc": 0.51, "clean_acc": 0.9},
    ]
    flags = gradient_masking_flags(curve)
    assert len(flags) == 1 and "rises" in flags[0] and "4/255" in flags[0]
    assert gradient_masking_flags(curve, tol=0.25) == []
    assert any("exceeds clean" in f for f in gradient_masking_flags([{"eps": EPS, "robust_acc": 0.8, "clean_acc": 0.6}]))


def test_flags_fire_when_square_beats_pgd() -> None:
    curve = [{"eps": 0.0, "robust_acc": 0.9}, {"eps": 4 / 255, "robust_acc": 0.7}, {"eps": 8 / 255, "robust_acc": 0.6}]
    assert gradient_masking_flags(curve) == []
    flags = gradient_masking_flags(curve, [{"eps": 8 / 255, "robust_acc": 0.3, "attack": "square-1000"}])
    assert len(flags) == 1 and "square-1000" in flags[0] and "8/255" in flags[0]
    assert gradient_masking_flags(curve, [{"eps": 8 / 255, "robust_acc": 0.59}]) == []  # within tol
    assert gradient_masking_flags(curve, [{"eps": 2 / 255, "robust_acc": 0.0}]) == []  # no PGD point there


def test_flags_compare_square_with_pgd_on_the_same_items() -> None:
    """PGD is 50 % overall but 100 % on the 4 items Square attacked: Square's 75 % beats it there."""
    pgd = {"eps": EPS, "robust_acc": 0.5, "items": list(range(8)), "robust_correct": [True] * 4 + [False] * 4}
    square = {"eps": EPS, "robust_acc": 0.75, "items": [0, 1, 2, 3], "robust_correct": [True, True, True, False]}
    (flag,) = gradient_masking_flags([pgd], [square])
    assert "0.750 < 1.000 on the same 4 items" in flag


def test_evaluate_classifier_flags_masked_gradients() -> None:
    """8-bit input quantisation zeroes every gradient: PGD sees a perfectly robust model, Square
    does not, and the report says so."""
    x, y = margin_images([0.3, -0.3, 0.4, -0.4, 0.2, -0.2, 0.3, -0.3, 3.0, -3.0])
    ds = TensorDataset(x, y, torch.tensor([0, 1] * 5))
    masked = evaluate_classifier(
        MeanIntensity(quantise=True), ds, eps_grid=(0.0, EPS), steps=10, restarts=1, n_queries=200, batch_size=5, n_boot=50
    )
    assert masked["robustness"][1]["robust_acc"] == 1.0, "PGD cannot move through a zero gradient"
    assert masked["square"][0]["robust_acc"] == pytest.approx(0.2)
    assert masked["suspicious"] and any("beats pgd-10x1" in f for f in masked["flags"])
    assert masked["clean"]["acc"] == 1.0 and masked["clean"]["groups"]["worst_group_acc"] == 1.0
    assert set(masked["clean"]["ci"]) == {"acc", "bal_acc", "auc", "ece"}
    json.dumps(masked)
    honest = evaluate_classifier(MeanIntensity(), ds, eps_grid=(0.0, EPS), steps=10, restarts=1, n_queries=200, n_boot=50)
    assert honest["robustness"][1]["robust_acc"] == pytest.approx(0.2)
    assert not honest["suspicious"], honest["flags"]
