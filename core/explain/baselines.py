"""Baselines: the reference images that Integrated Gradients integrates from and that deletion /
insertion paste in.

Why one module: IG (:mod:`.ig`) and the faithfulness scores (:mod:`.quality`) both
replace an image by a "no information" image, and Sturmfels et al. (2020, "Visualizing the impact of
feature attribution baselines") show the choice changes the maps. One :class:`Baseline` name set, one
registry of makers (:data:`BASELINES`) and one Gaussian blur (:func:`gaussian_blur`) keep both users
on the same definitions; where they differ on purpose (the blur's width) the difference is a named
:class:`Blur` setting (:data:`RISE_BLUR`), not a second implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from robustdx.core.explain.checks import check_images
from robustdx.core.registry import Registry, parse_option

Padding = Literal["replicate", "reflect"]


class Baseline(StrEnum):
    """The reference input (Sturmfels et al. 2020 compare these choices); see :func:`make_baseline`."""

    BLACK = "black"
    BLUR = "blur"
    NOISE = "noise"
    MEAN = "mean"


@dataclass(frozen=True)
class Blur:
    """The Gaussian of the ``blur`` baseline.

    Attributes:
        sigma: standard deviation in pixels; None: a tenth of the image's shorter side, a blur strong
            enough to remove the nuclei-scale texture a pathology classifier reads.
        radius: the kernel's half-width in pixels; None: ``3σ`` rounded (at least 1), i.e. the whole
            Gaussian.
        padding: how the border is extended; ``replicate`` works for any kernel/image size ratio,
            ``reflect`` needs ``radius`` below the image's sides.
    """

    sigma: float | None = None
    radius: int | None = None
    padding: Padding = "replicate"


RISE_BLUR = Blur(sigma=5.0, radius=5, padding="reflect")
"""The blur of RISE's insertion metric (Petsiuk et al. 2018): torchvision's ``gaussian_blur`` with kernel
11 and σ 5, i.e. a Gaussian cut at one σ with reflect padding — a milder, box-like smoothing than IG's
default :class:`Blur`. :mod:`.quality` uses it so that deletion / insertion scores stay comparable with
RISE and with earlier runs of this project."""


@dataclass(frozen=True)
class BaselineParams:
    """What a baseline maker may use besides the images: the noise seed and the blur."""

    seed: int = 0
    blur: Blur = field(default_factory=Blur)


BaselineMaker = Callable[[Tensor, BaselineParams], Tensor]
"""``maker(x [B, C, H, W] in [0, 1], params) -> baseline`` of ``x``'s shape, in [0, 1]."""

BASELINES: Registry[BaselineMaker] = Registry("baseline")
"""Baseline name (a :class:`Baseline` value) -> maker."""


def gaussian_blur(x: Tensor, sigma: float, *, radius: int | None = None, padding: Padding = "replicate") -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` images, each channel on its own.

    The kernel is ``exp(−t²/2σ²)`` on ``t = −radius..radius``, normalised to sum 1, so the blur keeps
    the mean colour; ``radius`` defaults to ``3σ`` rounded (at least 1).

    >>> x = torch.zeros(1, 1, 9, 9); x[0, 0, 4, 4] = 1.0
    >>> y = gaussian_blur(x, 1.0)
    >>> tuple(y.shape), round(float(y.sum()), 4), bool(y[0, 0, 4, 4] < 1)
    ((1, 1, 9, 9), 1.0, True)
    """
    r = max(1, int(3 * sigma + 0.5)) if radius is None else int(radius)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (r, r, 0, 0), mode=padding)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode=padding)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@BASELINES.register(Baseline.BLACK.value)
def _black(x: Tensor, params: BaselineParams) -> Tensor:
    """Zeros: the original IG paper's choice for images."""
    return torch.zeros_like(x)


@BASELINES.register(Baseline.BLUR.value)
def _blur(x: Tensor, params: BaselineParams) -> Tensor:
    """The image under a strong Gaussian blur (``params.blur``): keeps colour and stain, drops texture."""
    blur = params.blur
    s = float(blur.sigma) if blur.sigma is not None else min(x.shape[-2:]) / 10
    if s <= 0:
        raise ValueError(f"blur sigma must be > 0, got {s}")
    return gaussian_blur(x, s, radius=blur.radius, padding=blur.padding).clamp(0.0, 1.0)


@BASELINES.register(Baseline.NOISE.value)
def _noise(x: Tensor, params: BaselineParams) -> Tensor:
    """Uniform noise in [0, 1], drawn on the CPU from ``params.seed`` (the same on every device)."""
    gen = torch.Generator().manual_seed(int(params.seed))
    return torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)


@BASELINES.register(Baseline.MEAN.value)
def _mean(x: Tensor, params: BaselineParams) -> Tensor:
    """Each image's per-channel mean colour, constant over the image."""
    return x.mean((2, 3), keepdim=True).expand_as(x).contiguous()


def make_baseline(
    x: Tensor, kind: Baseline | str, seed: int = 0, *, sigma: float | None = None, blur: Blur | None = None
) -> Tensor:
    """The baseline image for each image of ``x`` (``[B, C, H, W]`` in [0, 1]).

    * ``black``: zeros — the original paper's choice for images;
    * ``blur``: a strong Gaussian blur of the image (σ = ``sigma`` or a tenth of the shorter side), which
      keeps colour and stain but removes the nuclei-scale texture a pathology classifier reads;
    * ``noise``: uniform noise in [0, 1] from a generator seeded with ``seed`` (reproducible; drawn on
      the CPU so the same seed gives the same baseline on every device);
    * ``mean``: each image's per-channel mean colour.

    Args:
        sigma: shorthand for ``blur=Blur(sigma=sigma)``.
        blur: the whole blur setting (σ, kernel radius, padding), e.g. :data:`RISE_BLUR`.

    >>> make_baseline(torch.full((2, 3, 8, 8), 0.5), "mean").shape
    torch.Size([2, 3, 8, 8])
    """
    x = check_images(x)
    kind = parse_option(Baseline, kind, "baseline")
    if sigma is not None and blur is not None:
        raise ValueError(f"pass sigma={sigma} or blur={blur}, not both")
    params = BaselineParams(seed=int(seed), blur=blur if blur is not None else Blur(sigma=sigma))
    return BASELINES.get(kind)(x, params)
