"""The shared argument checks: option names with the valid ones and a suggestion, image batches."""

from __future__ import annotations

import pytest
import torch

from robustdx.core.explain.baselines import Baseline
from robustdx.core.explain.checks import check_images
from robustdx.core.registry import parse_option

pytestmark = pytest.mark.unit


def test_parse_option_accepts_members_and_their_values() -> None:
    assert parse_option(Baseline, "blur", "baseline") is Baseline.BLUR
    assert parse_option(Baseline, Baseline.NOISE, "baseline") is Baseline.NOISE


def test_parse_option_names_the_value_lists_the_valid_ones_and_suggests() -> None:
    with pytest.raises(ValueError, match=r"^unknown baseline 'noize'; valid: black, blur, noise, mean\. Did you mean 'noise'\?$"):
        parse_option(Baseline, "noize", "baseline")
    with pytest.raises(ValueError, match=r"^unknown baseline 'zzz'; valid: black, blur, noise, mean\.$"):
        parse_option(Baseline, "zzz", "baseline")  # nothing close: no suggestion


def test_check_images() -> None:
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    out = check_images(x)
    assert torch.equal(out, x) and not out.requires_grad
    with pytest.raises(ValueError, match=r"\[B, C, H, W\], got \(3, 4, 4\)"):
        check_images(x[0])
    with pytest.raises(ValueError, match=r"got list"):
        check_images([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float images"):
        check_images(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
