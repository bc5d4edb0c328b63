"""captum's IG behind ``integrated_gradients``: completeness, the fast twin's equality with the model,
known answers on a linear model, targets, baselines, argument checks and state hygiene."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from robustdx.core.explain.baselines import Baseline, make_baseline
from robustdx.core.explain.ig import SCORING_STEPS, integrated_gradients
from tests.support.explain import calibrated_cnn, check_completeness, images

pytestmark = pytest.mark.unit

BASELINES = [b.value for b in Baseline]
FAST = pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])


def rel_l2(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


class Linear(nn.Module):
    """``f(x) = W x + c``: IG from any baseline is exactly ``(x − b) ⊙ W[t]`` for every quadrature rule."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(2, 3 * 16 * 16, generator=torch.Generator().manual_seed(4)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


@FAST
def test_captum_completeness(fast: bool) -> None:
    model, x = calibrated_cnn(), images()
    res = integrated_gradients(model, x, n_steps=128, internal_batch_size=100, fast=fast)
    assert res.attributions.shape == x.shape
    assert res.evaluations.tolist() == [128] * 4
    assert res.method == "captum:gausslegendre" and res.baseline == "black" and res.extra == {"fast": fast}
    check_completeness(model, x, res, 0.01, "black")


@pytest.mark.parametrize("baseline", BASELINES)
def test_reported_completeness_error_is_the_true_one(baseline: str) -> None:
    """At the scoring rule the delta and relative error are reported against ``f(x) − f(b)`` of the
    model itself (computed here independently), for every baseline."""
    model, x = calibrated_cnn(), images()
    res = integrated_gradients(model, x, baseline=baseline, n_steps=SCORING_STEPS)
    check_completeness(model, x, res, float(res.rel_error.max()), baseline)
    assert float(res.rel_error.max()) < 0.2  # a 64-point rule on a tiny ReLU CNN


@FAST
def test_linear_model_known_answer(fast: bool) -> None:
    model, x = Linear(), images()
    grey = torch.full((3, 16, 16), 0.3)
    res = integrated_gradients(model, x, target=1, baseline=grey, n_steps=7, fast=fast)
    exact = (x - grey) * model.fc.weight[1].detach().view(3, 16, 16)
    assert torch.allclose(res.attributions, exact, atol=1e-6)
    assert res.rel_error.max().item() < 1e-5


def test_fast_twin_gives_the_same_attributions() -> None:
    """The folded channels_last twin is the same function: the same maps within float rounding (float32
    at 1e-4 relative L2; float64 to rounding, for every baseline — a float32 difference can only come
    from a path point on a ReLU kink, where rounding picks a side)."""
    model, x = calibrated_cnn(), images()
    for baseline in ("black", "blur", "noise"):
        fast = integrated_gradients(model, x, baseline=baseline, n_steps=SCORING_STEPS, fast=True)
        plain = integrated_gradients(model, x, baseline=baseline, n_steps=SCORING_STEPS, fast=False)
        assert (rel_l2(fast.attributions, plain.attributions) < 1e-4).all(), baseline
        assert torch.allclose(fast.delta, plain.delta, atol=1e-4) and torch.equal(fast.target, plain.target)
    model64, x64 = calibrated_cnn().double(), images().double()
    for baseline in BASELINES:
        fast = integrated_gradients(model64, x64, baseline=baseline, n_steps=16, fast=True).attributions
        plain = integrated_gradients(model64, x64, baseline=baseline, n_steps=16, fast=False).attributions
        assert (rel_l2(fast, plain) < 1e-12).all(), baseline


def test_points_per_pass_do_not_change_the_result() -> None:
    model, x = calibrated_cnn(), images(3)
    together = integrated_gradients(model, x, n_steps=32, internal_batch_size=None).attributions
    for batch in (1, 7, 64):  # 1: captum would warn below the batch size; at least B points are used
        chunked = integrated_gradients(model, x, n_steps=32, internal_batch_size=batch).attributions
        assert torch.allclose(chunked, together, atol=1e-6)
    alone = integrated_gradients(model, x[1:2], n_steps=32).attributions
    assert torch.allclose(alone[0], together[1], atol=1e-6)


@FAST
def test_target_predicted_or_given(fast: bool) -> None:
    model, x = calibrated_cnn(), images()
    with torch.no_grad():
        pred = model(x).argmax(1)
    predicted = integrated_gradients(model, x, fast=fast)
    assert predicted.target.dtype == torch.long and torch.equal(predicted.target, pred)
    same = integrated_gradients(model, x, target=pred, fast=fast)
    assert torch.allclose(same.attributions, predicted.attributions, atol=1e-6)
    other = integrated_gradients(model, x, target=1 - pred, fast=fast)
    assert torch.equal(other.target, 1 - pred)
    assert not torch.allclose(other.attributions, predicted.attributions)
    assert torch.equal(integrated_gradients(model, x, target=1, fast=fast).target, torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        integrated_gradients(model, x, target=2, fast=fast)


@FAST
def test_custom_tensor_baseline(fast: bool) -> None:
    """A tensor baseline (one image's shape or the batch's) is used as given and reported as ``custom``."""
    model, x = calibrated_cnn(), images()
    grey = torch.full((3, 16, 16), 0.5)
    one = integrated_gradients(model, x, baseline=grey, fast=fast)
    batch = integrated_gradients(model, x, baseline=grey.expand_as(x), fast=fast)
    assert one.baseline == batch.baseline == "custom"
    assert torch.allclose(one.attributions, batch.attributions, atol=1e-6)
    assert not torch.allclose(one.attributions, integrated_gradients(model, x, fast=fast).attributions)
    named = integrated_gradients(model, x, baseline="blur", fast=fast)
    given = integrated_gradients(model, x, baseline=make_baseline(x, "blur"), fast=fast)
    assert torch.allclose(given.attributions, named.attributions)
    with pytest.raises(ValueError, match="fits neither"):
        integrated_gradients(model, x, baseline=torch.zeros(3, 8, 8), fast=fast)


def test_bad_arguments_raise_with_the_valid_ones() -> None:
    model, x = calibrated_cnn(), images(1)
    with pytest.raises(ValueError, match=r"'riemann'.*gausslegendre"):
        integrated_gradients(model, x, method="riemann")
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        integrated_gradients(model, x, n_steps=0)
    with pytest.raises(ValueError, match=r"'grey'.*black, blur, noise"):
        integrated_gradients(model, x, baseline="grey")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        integrated_gradients(model, x[0])


@FAST
def test_model_state_restored(fast: bool) -> None:
    model = calibrated_cnn().train()
    for p in model.classifier.parameters():
        p.requires_grad_(False)
    model.projector.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = images().requires_grad_(True)
    res = integrated_gradients(model, x, fast=fast)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert x.grad is None and res.attributions.is_contiguous()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.encoder.modules()), "the encoder was folded in place"
    for k, v in model.state_dict().items():  # BatchNorm statistics untouched, weights not re-laid out
        assert torch.equal(v, state[k]), k
        assert v.is_contiguous(), k
