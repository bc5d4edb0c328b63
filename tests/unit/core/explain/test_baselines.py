"""Baselines: the registry covers every name, each baseline fits the image and stays in [0, 1], the one
Gaussian blur gives both IG's blur and RISE's, and bad names list the valid ones."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur as torchvision_blur

from robustdx.core.explain.baselines import BASELINES, RISE_BLUR, Baseline, Blur, gaussian_blur, make_baseline
from tests.support.explain import images

pytestmark = pytest.mark.unit


def total_variation(t: torch.Tensor) -> torch.Tensor:
    return (t[..., 1:, :] - t[..., :-1, :]).abs().mean()


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
    mean = make_baseline(x, "mean")
    assert torch.allclose(mean, x.mean((2, 3), keepdim=True).expand_as(x)) and mean.is_contiguous()


def test_every_baseline_name_is_registered() -> None:
    assert BASELINES.list() == sorted(b.value for b in Baseline)


@pytest.mark.parametrize("kind", BASELINES.list())
def test_each_registered_baseline_fits_the_image_and_stays_in_range(kind: str) -> None:
    """Images at the range's ends and inside it, square and not: the baseline keeps shape, dtype,
    device and [0, 1]."""
    batches = [images(3, 20), torch.ones(2, 3, 12, 30), torch.zeros(1, 1, 9, 9), images(2, 24).double()]
    for x in batches:
        b = make_baseline(x, kind)
        assert b.shape == x.shape and b.dtype == x.dtype and b.device == x.device, kind
        assert b.min() >= 0 and b.max() <= 1, kind
        assert not b.requires_grad


def test_unknown_baseline_lists_the_valid_ones_with_a_suggestion() -> None:
    x = images(1)
    with pytest.raises(ValueError, match=r"'grey'.*black, blur, noise"):
        make_baseline(x, "grey")
    with pytest.raises(ValueError, match=r"unknown baseline 'blurr'; valid: black, blur, noise, mean\. Did you mean 'blur'\?"):
        make_baseline(x, "blurr")
    with pytest.raises(KeyError, match=r"unknown baseline 'maen'\. Did you mean 'mean'\? Valid: black, blur, mean, noise"):
        BASELINES.get("maen")


def test_rise_blur_is_torchvisions_kernel_11_sigma_5() -> None:
    """Deletion / insertion's blur (RISE) on the shared blur: torchvision's result to float rounding."""
    x = images(3, 24)
    rise = make_baseline(x, "blur", blur=RISE_BLUR)
    assert (rise - torchvision_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])).abs().max() < 1e-6
    assert not torch.allclose(rise, make_baseline(x, "blur", sigma=5.0), atol=1e-3)  # the whole Gaussian blurs more


def test_gaussian_blur_keeps_constants_and_mass() -> None:
    flat = torch.full((1, 3, 10, 10), 0.3)
    for padding in ("replicate", "reflect"):
        assert torch.allclose(gaussian_blur(flat, 1.5, radius=3, padding=padding), flat)
    dot = torch.zeros(1, 1, 31, 31)
    dot[0, 0, 15, 15] = 1.0
    spread = gaussian_blur(dot, 2.0)
    assert spread.sum().item() == pytest.approx(1.0, abs=1e-5) and spread.max() < 0.1
    assert torch.allclose(spread, spread.flip(-1)) and torch.allclose(spread, spread.transpose(-1, -2))
    assert gaussian_blur(torch.rand(1, 1, 8, 8), 5.0).shape == (1, 1, 8, 8)  # radius 15 > side: replicate copes


def test_blur_settings_are_checked() -> None:
    x = images(1)
    assert torch.equal(make_baseline(x, "blur", sigma=2.0), make_baseline(x, "blur", blur=Blur(sigma=2.0)))
    with pytest.raises(ValueError, match="not both"):
        make_baseline(x, "blur", sigma=2.0, blur=Blur(sigma=3.0))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        make_baseline(x, "blur", sigma=0.0)
