"""Evaluation attacks (PGD with per-iterate checks and early stopping, APGD): known answers and oracles."""

from __future__ import annotations

import pytest
import torch

from robustdx.core.attacks import ApgdSettings, Outcome, apgd_outcome, clean_outcome, merge, pgd_outcome
from robustdx.core.config import AttackConfig
from tests.support.classifiers import MeanIntensity, batch, mean_intensity_batch, tiny_model

pytestmark = pytest.mark.unit

EPS = 0.02


def _in_ball(out: Outcome, x: torch.Tensor, eps: float) -> bool:
    d = (out.x_adv - x).abs().amax()
    return bool(d <= eps + 1e-6) and bool(out.x_adv.min() >= 0) and bool(out.x_adv.max() <= 1)


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_finds_exactly_the_items_within_the_known_radius(random_start: bool) -> None:
    model, (x, y, means) = MeanIntensity(), mean_intensity_batch(96)
    out = pgd_outcome(model, x, y, AttackConfig(eps=EPS, steps=10, random_start=random_start))
    assert torch.equal(out.fooled, (means - 0.5).abs() <= EPS)
    assert _in_ball(out, x, EPS)
    with torch.no_grad():
        assert bool((model(out.x_adv[out.fooled]).argmax(1) != y[out.fooled]).all())


def test_apgd_finds_exactly_the_items_within_the_known_radius() -> None:
    model, (x, y, means) = MeanIntensity(), mean_intensity_batch(96, seed=1)
    out = apgd_outcome(model, x, y, ApgdSettings(eps=EPS, steps=20))
    assert torch.equal(out.fooled, (means - 0.5).abs() <= EPS)
    assert _in_ball(out, x, EPS)


def test_broken_items_stop_costing() -> None:
    model, (x, y, _means) = MeanIntensity(), mean_intensity_batch(96, seed=2)
    out = pgd_outcome(model, x, y, AttackConfig(eps=EPS, steps=20, random_start=False))
    clean_wrong = clean_outcome(model, x, y).fooled
    assert bool((out.evaluations[clean_wrong] == 1).all())
    assert bool((out.evaluations[~out.fooled] == 1 + 21).all())  # the clean check, 20 steps, the final point
    broken_by_attack = out.fooled & ~clean_wrong
    assert bool((out.evaluations[broken_by_attack] < 1 + 21).all())


def test_pgd_outcome_is_at_least_as_strong_as_torchattacks_final_iterate() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model = tiny_model(3).eval()
    for k in range(3):
        x, y = batch(20 + k, b=32, interior=True)
        cfg = AttackConfig(eps=4 / 255, step_size=1 / 255, steps=10, random_start=False)
        ref = torchattacks.PGD(model, eps=4 / 255, alpha=1 / 255, steps=10, random_start=False)(x, y)
        with torch.no_grad():
            ref_fooled = model(ref).argmax(1) != y
        out = pgd_outcome(model, x, y, cfg)
        assert bool((out.fooled | ~ref_fooled).all()), "an item torchattacks broke survived ours"
        assert _in_ball(out, x, 4 / 255)


def test_apgd_agrees_with_torchattacks_item_by_item() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model = tiny_model(4).eval()
    x, y = batch(30, b=32, interior=True)
    for eps in (1 / 255, 4 / 255):
        ref = torchattacks.APGD(model, norm="Linf", eps=eps, steps=25, n_restarts=1, seed=0, loss="ce")(x, y)
        with torch.no_grad():
            ref_fooled = model(ref).argmax(1) != y
        out = apgd_outcome(model, x, y, ApgdSettings(eps=eps, steps=25, seed=0))
        assert torch.equal(out.fooled, ref_fooled)


def test_merge_keeps_the_worst_case() -> None:
    x = torch.zeros(3, 1, 2, 2)
    a = Outcome(x.clone(), torch.tensor([True, False, False]), torch.tensor([1, 5, 5]))
    b = Outcome(x + 1, torch.tensor([True, True, False]), torch.tensor([2, 3, 9]))
    m = merge(a, b)
    assert m.fooled.tolist() == [True, True, False]
    assert m.x_adv[0].sum() == 0 and m.x_adv[1].sum() == 4 and m.x_adv[2].sum() == 0
    assert m.evaluations.tolist() == [3, 8, 14]
    assert m.robust.tolist() == [False, False, True]


def test_square_finds_the_items_within_the_known_radius_without_gradients() -> None:
    from robustdx.core.attacks import square_outcome

    model, (x, y, means) = MeanIntensity(quantise=True), mean_intensity_batch(64, seed=3)  # zero gradients everywhere
    out = square_outcome(model, x, y, EPS, n_queries=1000, seed=0)
    assert _in_ball(out, x, EPS)
    gap = (means - 0.5).abs()
    assert bool((out.fooled <= (gap <= EPS + 1 / 255)).all())  # never breaks an item out of reach
    assert bool(out.fooled[gap <= EPS / 2].all())  # every item within half the radius: a random search's sure ground
    assert int(out.fooled.sum()) >= 0.9 * int((gap <= EPS).sum())
    assert pgd_outcome(model, x, y, AttackConfig(eps=EPS, steps=10)).fooled.sum() < out.fooled.sum()  # masked for PGD
