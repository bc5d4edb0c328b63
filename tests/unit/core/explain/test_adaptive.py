"""Adaptive IG: completeness per image, agreement with captum, batching, budget, argument checks."""

from __future__ import annotations

import pytest
import torch

from robustdx.core.explain.adaptive import AdaptiveConfig, fast_integrated_gradients
from robustdx.core.explain.baselines import Baseline
from robustdx.core.explain.ig import integrated_gradients
from tests.support.explain import calibrated_cnn, check_completeness, images

pytestmark = pytest.mark.unit

BASELINES = [b.value for b in Baseline]


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.corrcoef(torch.stack([u, v]))[0, 1] for u, v in zip(a.flatten(1), b.flatten(1), strict=True)])


@pytest.mark.parametrize("baseline", BASELINES)
def test_fast_completeness(baseline: str) -> None:
    model, x = calibrated_cnn(), images()
    res = fast_integrated_gradients(model, x, baseline=baseline, tol=0.01)
    assert res.attributions.shape == x.shape
    assert res.baseline == baseline and res.method == "fast:trapezoid"
    assert (res.evaluations >= 9).all() and (res.evaluations <= 256).all()  # 8 initial panels = 9 points
    check_completeness(model, x, res, 0.01, baseline)


@pytest.mark.parametrize("stop", ["completeness", "panelwise"])
def test_fast_completeness_tight_tolerance(stop: str) -> None:
    model, x = calibrated_cnn(1), images(2, seed=1)
    res = fast_integrated_gradients(model, x, tol=0.002, config=AdaptiveConfig(rule="simpson", stop=stop))
    check_completeness(model, x, res, 0.002, "black")


def test_fast_on_a_fixed_grid_is_the_trapezoid_rule() -> None:
    """With a tolerance it meets at once, fast IG is the uniform trapezoid rule on 17 points, through the
    BatchNorm-folded channels_last twin. captum's ``riemann_trapezoid`` uses steps of 1/n (weights
    summing to (n−1)/n), so its attributions equal ours times (n−1)/n."""
    model, x = calibrated_cnn(), images()
    fast = fast_integrated_gradients(model, x, tol=0.99, config=AdaptiveConfig(initial_panels=16))
    ref = integrated_gradients(model, x, n_steps=17, method="riemann_trapezoid")
    assert fast.evaluations.tolist() == [17] * 4
    scale = ref.attributions.abs().max()
    assert torch.allclose(fast.attributions * 16 / 17, ref.attributions, atol=1e-5 * float(scale))


def test_fast_agrees_with_captum_at_high_steps() -> None:
    model, x = calibrated_cnn(), images()
    ref = integrated_gradients(model, x, n_steps=256).attributions
    default = fast_integrated_gradients(model, x).attributions
    assert (correlation(default, ref) > 0.99).all()
    assert (rel_l2(default, ref) < 0.15).all()  # completeness at 1 % bounds the sum, not every pixel
    fine = fast_integrated_gradients(model, x, tol=0.002, config=AdaptiveConfig(initial_panels=64)).attributions
    assert (correlation(fine, ref) > 0.999).all()
    assert (rel_l2(fine, ref) < 0.03).all()


def test_batching_does_not_change_the_result() -> None:
    model, x = calibrated_cnn(), images(3)
    together = fast_integrated_gradients(model, x, config=AdaptiveConfig(internal_batch_size=7))
    for i in range(3):
        alone = fast_integrated_gradients(model, x[i : i + 1], config=AdaptiveConfig(internal_batch_size=64))
        assert alone.evaluations.item() == together.evaluations[i].item()
        assert torch.allclose(alone.attributions[0], together.attributions[i], atol=1e-6)


def test_budget_exhaustion_is_reported_not_hidden() -> None:
    model, x = calibrated_cnn(), images()
    res = fast_integrated_gradients(model, x, tol=1e-6, config=AdaptiveConfig(initial_panels=2, max_evaluations=5))
    assert (res.evaluations <= 5).all()
    assert not bool(res.converged(1e-6).all())
    assert (res.rel_error > 1e-6).any()


def test_bad_arguments_raise_with_the_valid_ones() -> None:
    model, x = calibrated_cnn(), images(1)
    with pytest.raises(ValueError, match=r"'grey'.*black, blur, noise"):
        fast_integrated_gradients(model, x, baseline="grey")
    with pytest.raises(ValueError, match=r"'simpsons'.*trapezoid, simpson"):
        fast_integrated_gradients(model, x, config=AdaptiveConfig(rule="simpsons"))
    with pytest.raises(ValueError, match=r"tol must be in \(0, 1\), got 0.0"):
        fast_integrated_gradients(model, x, tol=0.0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        fast_integrated_gradients(model, x[0])
    with pytest.raises(ValueError, match=r"max_evaluations=5 is below the 9 points"):
        fast_integrated_gradients(model, x, config=AdaptiveConfig(max_evaluations=5))
