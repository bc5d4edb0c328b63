"""captum's IG and what both IG methods share: completeness, targets, argument checks, state hygiene."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from robustdx.core.explain.adaptive import fast_integrated_gradients
from robustdx.core.explain.ig import Attribution, integrated_gradients
from tests.support.explain import calibrated_cnn, check_completeness, images

pytestmark = pytest.mark.unit

IGFunction = Callable[..., Attribution]


def test_captum_completeness() -> None:
    model, x = calibrated_cnn(), images()
    res = integrated_gradients(model, x, n_steps=128, internal_batch_size=100)
    assert res.attributions.shape == x.shape
    assert res.evaluations.tolist() == [128] * 4
    assert res.method == "captum:gausslegendre" and res.baseline == "black"
    check_completeness(model, x, res, 0.01, "black")


@pytest.mark.parametrize("fn", [integrated_gradients, fast_integrated_gradients])
def test_target_predicted_or_given(fn: IGFunction) -> None:
    model, x = calibrated_cnn(), images()
    with torch.no_grad():
        pred = model(x).argmax(1)
    predicted = fn(model, x)
    assert predicted.target.dtype == torch.long and torch.equal(predicted.target, pred)
    same = fn(model, x, target=pred)
    assert torch.allclose(same.attributions, predicted.attributions, atol=1e-6)
    other = fn(model, x, target=1 - pred)
    assert torch.equal(other.target, 1 - pred)
    assert not torch.allclose(other.attributions, predicted.attributions)
    assert torch.equal(fn(model, x, target=1).target, torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        fn(model, x, target=2)


@pytest.mark.parametrize("fn", [integrated_gradients, fast_integrated_gradients])
def test_custom_tensor_baseline(fn: IGFunction) -> None:
    """A tensor baseline (one image's shape or the batch's) is used as given and reported as ``custom``."""
    model, x = calibrated_cnn(), images()
    grey = torch.full((3, 16, 16), 0.5)
    one = fn(model, x, baseline=grey)
    batch = fn(model, x, baseline=grey.expand_as(x))
    assert one.baseline == batch.baseline == "custom"
    assert torch.allclose(one.attributions, batch.attributions, atol=1e-6)
    assert not torch.allclose(one.attributions, fn(model, x).attributions)
    with pytest.raises(ValueError, match="fits neither"):
        fn(model, x, baseline=torch.zeros(3, 8, 8))


def test_bad_method_raises_with_the_valid_ones() -> None:
    model, x = calibrated_cnn(), images(1)
    with pytest.raises(ValueError, match=r"'riemann'.*gausslegendre"):
        integrated_gradients(model, x, method="riemann")
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        integrated_gradients(model, x, n_steps=0)


@pytest.mark.parametrize("fn", [integrated_gradients, fast_integrated_gradients])
def test_model_state_restored(fn: IGFunction) -> None:
    model = calibrated_cnn().train()
    for p in model.classifier.parameters():
        p.requires_grad_(False)
    model.projector.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = images().requires_grad_(True)
    fn(model, x)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert x.grad is None
    for k, v in model.state_dict().items():  # BatchNorm statistics untouched, weights not re-laid out
        assert torch.equal(v, state[k]), k
        assert v.is_contiguous(), k
