"""Integrated Gradients: completeness, agreement with captum, targets, baselines, state hygiene, pictures."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from robustdx.core.config import AttackConfig, ModelConfig
from robustdx.core.explain.ig import (
    Attribution,
    Baseline,
    attribution_map,
    fast_integrated_gradients,
    heatmap_png,
    integrated_gradients,
    make_baseline,
    save_attack_grid,
    save_overlay,
)
from robustdx.core.models import RobustDxNet, build_model

pytestmark = pytest.mark.unit

BASELINES = [b.value for b in Baseline]
IGFunction = Callable[..., Attribution]


def tiny_model(seed: int = 0) -> RobustDxNet:
    """A tiny CNN whose BatchNorm statistics come from one batch of images, so that (unlike at
    initialisation) its logits depend clearly on the input and ``f(x) − f(b)`` is well away from 0."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="test_cnn", proj_dim=8, head_hidden=8))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: one pass sets the statistics
    with torch.no_grad():
        model.train()(torch.rand(64, 3, 16, 16))
    return model.eval()


def images(b: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1000 + seed))  # never a noise baseline


def target_logit(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).gather(1, t[:, None]).squeeze(1).double()


def check_completeness(model: nn.Module, x: torch.Tensor, res: Attribution, tol: float, baseline: str) -> None:
    """``Σ attr`` against ``f(x) − f(b)`` computed here, and the reported delta/rel_error against both."""
    diff = target_logit(model, x, res.target) - target_logit(model, make_baseline(x, baseline), res.target)
    total = res.attributions.flatten(1).sum(1, dtype=torch.float64)
    own = (total - diff).abs() / diff.abs()
    assert (own <= tol + 1e-5).all(), own
    assert torch.allclose(res.delta.double(), total - diff, atol=1e-4, rtol=1e-3)
    assert torch.allclose(res.rel_error.double(), own, atol=1e-4)
    assert bool(res.converged(tol).all())


def total_variation(t: torch.Tensor) -> torch.Tensor:
    return (t[..., 1:, :] - t[..., :-1, :]).abs().mean()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.corrcoef(torch.stack([u, v]))[0, 1] for u, v in zip(a.flatten(1), b.flatten(1), strict=True)])


# --------------------------------------------------------------------------------------------
# completeness and accuracy
# --------------------------------------------------------------------------------------------
def test_captum_completeness() -> None:
    model, x = tiny_model(), images()
    res = integrated_gradients(model, x, n_steps=128, internal_batch_size=100)
    assert res.attributions.shape == x.shape
    assert res.evaluations.tolist() == [128] * 4
    assert res.method == "captum:gausslegendre" and res.baseline == "black"
    check_completeness(model, x, res, 0.01, "black")


@pytest.mark.parametrize("baseline", BASELINES)
def test_fast_completeness(baseline: str) -> None:
    model, x = tiny_model(), images()
    res = fast_integrated_gradients(model, x, baseline=baseline, tol=0.01)
    assert res.attributions.shape == x.shape
    assert res.baseline == baseline and res.method == "fast:trapezoid"
    assert (res.evaluations >= 9).all() and (res.evaluations <= 256).all()  # 8 initial panels = 9 points
    check_completeness(model, x, res, 0.01, baseline)


@pytest.mark.parametrize("stop", ["completeness", "panelwise"])
def test_fast_completeness_tight_tolerance(stop: str) -> None:
    model, x = tiny_model(1), images(2, seed=1)
    res = fast_integrated_gradients(model, x, tol=0.002, rule="simpson", stop=stop)
    check_completeness(model, x, res, 0.002, "black")


def test_fast_on_a_fixed_grid_is_the_trapezoid_rule() -> None:
    """With a tolerance it meets at once, fast IG is the uniform trapezoid rule on 17 points, through the
    BatchNorm-folded channels_last twin. captum's ``riemann_trapezoid`` uses steps of 1/n (weights
    summing to (n−1)/n), so its attributions equal ours times (n−1)/n."""
    model, x = tiny_model(), images()
    fast = fast_integrated_gradients(model, x, tol=0.99, initial_panels=16)
    ref = integrated_gradients(model, x, n_steps=17, method="riemann_trapezoid")
    assert fast.evaluations.tolist() == [17] * 4
    scale = ref.attributions.abs().max()
    assert torch.allclose(fast.attributions * 16 / 17, ref.attributions, atol=1e-5 * float(scale))


def test_fast_agrees_with_captum_at_high_steps() -> None:
    model, x = tiny_model(), images()
    ref = integrated_gradients(model, x, n_steps=256).attributions
    default = fast_integrated_gradients(model, x).attributions
    assert (correlation(default, ref) > 0.99).all()
    assert (rel_l2(default, ref) < 0.15).all()  # completeness at 1 % bounds the sum, not every pixel
    fine = fast_integrated_gradients(model, x, tol=0.002, initial_panels=64).attributions
    assert (correlation(fine, ref) > 0.999).all()
    assert (rel_l2(fine, ref) < 0.03).all()


def test_batching_does_not_change_the_result() -> None:
    model, x = tiny_model(), images(3)
    together = fast_integrated_gradients(model, x, internal_batch_size=7)
    for i in range(3):
        alone = fast_integrated_gradients(model, x[i : i + 1], internal_batch_size=64)
        assert alone.evaluations.item() == together.evaluations[i].item()
        assert torch.allclose(alone.attributions[0], together.attributions[i], atol=1e-6)


def test_budget_exhaustion_is_reported_not_hidden() -> None:
    model, x = tiny_model(), images()
    res = fast_integrated_gradients(model, x, tol=1e-6, initial_panels=2, max_evaluations=5)
    assert (res.evaluations <= 5).all()
    assert not bool(res.converged(1e-6).all())
    assert (res.rel_error > 1e-6).any()


# --------------------------------------------------------------------------------------------
# targets, baselines, arguments
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [integrated_gradients, fast_integrated_gradients])
def test_target_predicted_or_given(fn: IGFunction) -> None:
    model, x = tiny_model(), images()
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


def test_baselines_shape_range_and_seed() -> None:
    x = images(2, 24)
    black = make_baseline(x, "black")
    assert black.shape == x.shape and black.abs().sum() == 0
    blur = make_baseline(x, Baseline.BLUR)
    assert blur.shape == x.shape and blur.min() >= 0 and blur.max() <= 1
    assert total_variation(blur) < 0.1 * total_variation(x)  # strongly smoothed
    assert torch.allclose(blur.mean((2, 3)), x.mean((2, 3)), atol=0.05)  # keeps the colour
    noise = make_baseline(x, "noise", seed=3)
    assert noise.shape == x.shape and noise.min() >= 0 and noise.max() <= 1
    assert torch.equal(noise, make_baseline(x, "noise", seed=3))
    assert not torch.equal(noise, make_baseline(x, "noise", seed=4))


def test_bad_names_raise_with_the_valid_ones() -> None:
    model, x = tiny_model(), images(1)
    with pytest.raises(ValueError, match=r"'grey'.*black, blur, noise"):
        make_baseline(x, "grey")
    with pytest.raises(ValueError, match=r"'grey'.*black, blur, noise"):
        fast_integrated_gradients(model, x, baseline="grey")
    with pytest.raises(ValueError, match=r"'simpsons'.*trapezoid, simpson"):
        fast_integrated_gradients(model, x, rule="simpsons")
    with pytest.raises(ValueError, match=r"'riemann'.*gausslegendre"):
        integrated_gradients(model, x, method="riemann")
    with pytest.raises(ValueError, match=r"tol must be in \(0, 1\), got 0.0"):
        fast_integrated_gradients(model, x, tol=0.0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        fast_integrated_gradients(model, x[0])


@pytest.mark.parametrize("fn", [integrated_gradients, fast_integrated_gradients])
def test_model_state_restored(fn: IGFunction) -> None:
    model = tiny_model().train()
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


# --------------------------------------------------------------------------------------------
# maps and pictures
# --------------------------------------------------------------------------------------------
def test_attribution_map() -> None:
    attr = torch.randn(2, 3, 8, 10)
    signed = attribution_map(attr)
    assert signed.shape == (2, 8, 10) and torch.allclose(signed, attr.sum(1))
    mag = attribution_map(attr, "abs")
    assert torch.allclose(mag, attr.abs().sum(1)) and (mag >= signed.abs() - 1e-6).all()
    assert attribution_map(attr[0]).shape == (8, 10)
    with pytest.raises(ValueError, match=r"'max'.*sum, abs"):
        attribution_map(attr, "max")


@pytest.mark.parametrize("reduce", ["sum", "abs"])
def test_save_overlay_png(tmp_path: Path, reduce: str) -> None:
    model, x = tiny_model(), images(1, 32)
    amap = attribution_map(fast_integrated_gradients(model, x).attributions, reduce)[0]
    out = save_overlay(x[0], amap, tmp_path / "sub" / "overlay.png", title="test overlay")
    assert out == tmp_path / "sub" / "overlay.png" and out.stat().st_size > 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 50


def test_heatmap_png_bytes() -> None:
    amap = torch.randn(12, 20)
    data = heatmap_png(amap)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (20, 12) and im.mode == "RGB"
    with Image.open(io.BytesIO(heatmap_png(amap.abs()))) as im:
        assert im.size == (20, 12)


def test_save_attack_grid_png(tmp_path: Path) -> None:
    models = {"ce": tiny_model(0), "adv_ce": tiny_model(1)}
    x, y = images(2, 16), torch.tensor([0, 1])
    out = save_attack_grid(models, x, y, AttackConfig(eps=8 / 255, steps=2), tmp_path / "grid.png", baseline="blur")
    assert out.stat().st_size > 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100  # 2 rows x (2 images x 4 panels)
    assert all(not m.training for m in models.values())
    with pytest.raises(ValueError, match="models is empty"):
        save_attack_grid({}, x, y, AttackConfig(), tmp_path / "empty.png")
