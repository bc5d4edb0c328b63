"""Image transforms (torchvision.transforms.v2).

Outputs are float tensors in [0, 1]; normalisation is the model's first layer. Geometric
transforms apply to BUSI lesion masks too (``tv_tensors.Mask``), colour transforms leave them alone.
The paper's augmentations: flips, colour jitter, random greyscale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2


def eval_transform(size: int) -> v2.Compose:
    """Resize to ``size``×``size`` and convert to a float tensor in [0, 1]."""
    return v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)])


def train_transform(size: int, augment: bool = True) -> v2.Compose:
    """Training transform: the eval transform plus flips, colour jitter and greyscale."""
    if not augment:
        return eval_transform(size)
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((size, size), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


class TwoViews:
    """Apply a random transform twice: the two augmented views SupCon contrasts.

    Returns a ``[2, C, H, W]`` tensor (extra targets such as masks are taken from the first view).
    """

    def __init__(self, transform: Callable[..., Any]) -> None:
        self.transform = transform

    def __call__(self, image: Any, *extra: Any) -> Any:
        first = self.transform(image, *extra)
        second = self.transform(image, *extra)
        if extra:
            return (torch.stack([first[0], second[0]]), *first[1:])
        return torch.stack([first, second])

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"
