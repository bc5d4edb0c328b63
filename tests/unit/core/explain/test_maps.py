"""Attribution maps: channels folded by sum or magnitude, a map taken as is, bad shapes and names refused."""

from __future__ import annotations

import pytest
import torch

from robustdx.core.explain.maps import Reduce, attribution_map

pytestmark = pytest.mark.unit


def test_attribution_map() -> None:
    attr = torch.randn(2, 3, 8, 10)
    signed = attribution_map(attr)
    assert signed.shape == (2, 8, 10) and torch.allclose(signed, attr.sum(1))
    mag = attribution_map(attr, "abs")
    assert torch.allclose(mag, attr.abs().sum(1)) and (mag >= signed.abs() - 1e-6).all()
    assert attribution_map(attr[:1])[0].shape == (8, 10)
    with pytest.raises(ValueError, match=r"'max'.*sum, abs"):
        attribution_map(attr, "max")


def test_known_values_and_shapes() -> None:
    attr = torch.tensor([[[[1.0]], [[-2.0]], [[0.5]]]])
    assert attribution_map(attr).item() == pytest.approx(-0.5)
    assert attribution_map(attr, Reduce.ABS).item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match="shape"):
        attribution_map(torch.ones(2, 3))


def test_a_map_is_taken_as_is() -> None:
    """``[B, H, W]`` is already a map (e.g. from an explainer without channels): kept, or its ``abs``."""
    amap = torch.randn(4, 6, 6)
    assert torch.equal(attribution_map(amap), amap)
    assert torch.equal(attribution_map(amap, "abs"), amap.abs())
    folded = attribution_map(torch.randn(4, 3, 6, 6))
    assert torch.equal(attribution_map(folded), folded)  # folding twice changes nothing


def test_the_map_is_detached() -> None:
    attr = torch.randn(1, 3, 4, 4, requires_grad=True)
    assert not attribution_map(attr).requires_grad and not attribution_map(attr[:, 0], "abs").requires_grad
