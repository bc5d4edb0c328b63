"""Robustness evaluation (core/evaluation/robustness.py): the PGD robustness curve (against torchattacks
and on a model whose answer is known), the Square cross-check, the gradient-masking flags (on synthetic
curves and on a model with masked gradients), and the evaluation settings (EvalConfig)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.utils.data import TensorDataset

from robustdx.core.config import AttackConfig
from robustdx.core.evaluation.robustness import (
    DEFAULT_EPS_GRID,
    EvalConfig,
    eps_label,
    evaluate_classifier,
    gradient_masking_flags,
    robust_accuracy,
    robustness_curve,
    square_robust_accuracy,
    subsample,
)
from robustdx.core.models import RobustDxNet
from tests.support.classifiers import EPS, MeanIntensity, as_dataset, colour_task, margin_images, tiny_model, train_colour_cnn

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def trained() -> RobustDxNet:
    """The tiny CNN after 60 Adam steps on :func:`colour_task` (~94 % accuracy, ~1 s)."""
    torch.set_num_threads(1)  # module fixtures are set up before the function-scoped one in conftest
    return train_colour_cnn()


# --------------------------------------------------------------------------------------------
# settings, labels and subsamples
# --------------------------------------------------------------------------------------------
def test_eval_config_defaults_bounds_and_fractions() -> None:
    cfg = EvalConfig()
    assert cfg.eps_grid == DEFAULT_EPS_GRID and (cfg.steps, cfg.restarts, cfg.max_n) == (50, 2, 256)
    assert (cfg.square_n, cfg.square_queries, cfg.batch_size, cfg.n_boot, cfg.seed) == (100, 1000, 64, 1000, 0)
    assert EvalConfig(eps_grid=["0", "4/255"]).eps_grid == (0.0, 4 / 255)
    with pytest.raises(ValidationError, match="8/255"):
        EvalConfig(eps_grid=[8])
    for bad in ({"steps": 0}, {"max_n": 0}, {"n_boot": 0}, {"batch_size": 0}, {"tol": -0.1}, {"seed": -1}, {"typo": 1}):
        with pytest.raises(ValidationError):
            EvalConfig(**bad)
    with pytest.raises(ValidationError):
        cfg.steps = 10  # frozen: one config can be shared by every call


def test_eps_label() -> None:
    assert [eps_label(e) for e in (0.0, 1 / 255, 8 / 255)] == ["0/255", "1/255", "8/255"]
    assert eps_label(0.03) == "0.03"


def test_subsample_is_seeded_and_nested() -> None:
    big, small = subsample(50, 20, seed=4), subsample(50, 8, seed=4)
    assert len(set(big.tolist())) == 20 and small.tolist() == big[:8].tolist()
    assert sorted(subsample(50, None, seed=4).tolist()) == list(range(50))
    assert subsample(50, 20, seed=5).tolist() != big.tolist()
    with pytest.raises(ValueError, match="max_n"):
        subsample(50, 0, seed=0)


def test_robust_accuracy_names_the_attack_and_leaves_the_global_rng_alone() -> None:
    x, y = margin_images([0.3, -0.5, 1.5, -2.0])
    state = torch.get_rng_state()
    out = robust_accuracy(MeanIntensity(), as_dataset(x, y), AttackConfig(eps=EPS, steps=5), EvalConfig(max_n=None, n_boot=10))
    assert torch.equal(state, torch.get_rng_state())
    assert out["attack"] == "pgd-5x1" and out["n"] == 4 and out["robust_acc"] == 0.5


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
        curve = robustness_curve(trained, ds, EvalConfig(max_n=32, batch_size=16, n_boot=200), device="cpu")
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
    (ours,) = robustness_curve(trained, ds, EvalConfig(eps_grid=(eps,), restarts=1, **kw), device="cpu")
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
    (two,) = robustness_curve(trained, ds, EvalConfig(eps_grid=(eps,), restarts=2, **kw), device="cpu")
    assert two["robust_acc"] <= ours["robust_acc"] + 1e-9


def test_pgd_curve_on_known_margins() -> None:
    """On the mean-intensity model the robust accuracy is known: items with margin > ε survive."""
    x, y = margin_images([0.3, -0.5, 1.5, -2.0, 0.7, -3.0, 0.2, 1.2])
    cfg = EvalConfig(eps_grid=(0.0, EPS), steps=10, restarts=1, max_n=None, n_boot=10)
    curve = robustness_curve(MeanIntensity(), as_dataset(x, y), cfg)
    assert curve[0]["robust_acc"] == 1.0
    assert curve[1]["robust_acc"] == pytest.approx(4 / 8)


# --------------------------------------------------------------------------------------------
# Square cross-check
# --------------------------------------------------------------------------------------------
def test_square_lowers_accuracy_of_a_cnn_and_never_raises_it(trained: RobustDxNet) -> None:
    ds = as_dataset(*colour_task(24, 3))
    out = square_robust_accuracy(trained, ds, EPS, EvalConfig(square_queries=100, square_n=24, batch_size=12, n_boot=50))
    assert out["n"] == 24 and out["n_queries"] == 100 and out["attack"] == "square-100"
    assert out["robust_acc"] < out["clean_acc"] - 0.3
    robust, items = np.array(out["robust_correct"]), np.array(out["items"])
    with torch.no_grad():
        clean = (trained(ds.tensors[0][items]).argmax(1) == ds.tensors[1][items]).numpy()
    assert not (robust & ~clean).any(), "an item misclassified clean counted as robust"
    # an untrained model's mostly wrong predictions: accuracy still cannot go up
    x = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    cfg = EvalConfig(square_queries=30, square_n=None, n_boot=10)
    out = square_robust_accuracy(tiny_model(3), as_dataset(x, torch.arange(24) % 2), EPS, cfg)
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
        MeanIntensity(quantise=True),
        ds,
        EvalConfig(eps_grid=(0.0, EPS), steps=10, restarts=1, square_queries=200, batch_size=5, n_boot=50),
    )
    assert masked["robustness"][1]["robust_acc"] == 1.0, "PGD cannot move through a zero gradient"
    assert masked["square"][0]["robust_acc"] == pytest.approx(0.2)
    assert masked["suspicious"] and any("beats pgd-10x1" in f for f in masked["flags"])
    assert masked["clean"]["acc"] == 1.0 and masked["clean"]["groups"]["worst_group_acc"] == 1.0
    assert set(masked["clean"]["ci"]) == {"acc", "bal_acc", "auc", "ece"}
    json.dumps(masked)
    cfg = EvalConfig(eps_grid=(0.0, EPS), steps=10, restarts=1, square_queries=200, n_boot=50)
    honest = evaluate_classifier(MeanIntensity(), ds, cfg)
    assert honest["robustness"][1]["robust_acc"] == pytest.approx(0.2)
    assert not honest["suspicious"], honest["flags"]
