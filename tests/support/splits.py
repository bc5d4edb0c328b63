"""In-memory :class:`~robustdx.core.data.Splits` of random tensors, for trainer and strategy unit tests.

No files and no transforms: items are ``(image, label, group)`` tensors, and with ``two_views`` the
training items carry two views ``[2, C, H, W]`` as SupCon's loader yields them.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from robustdx.core.data import Splits


def _items(n: int, size: int, seed: int, views: int | None = None) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, size, size) if views is None else (n, views, 3, size, size)
    x = torch.rand(shape, generator=g)
    y = torch.arange(n) % 2
    return TensorDataset(x, y, torch.arange(n) % 3)


def tensor_splits(n: int = 24, size: int = 16, seed: int = 0, two_views: bool = False) -> Splits:
    """Train / val / test / train_eval of ``n`` random images each (two classes, three groups)."""
    return Splits(
        train=_items(n, size, seed, views=2 if two_views else None),
        val=_items(n, size, seed + 1),
        test=_items(n, size, seed + 2),
        train_eval=_items(n, size, seed + 3),
        class_names=["normal", "tumour"],
        group_names=["0", "1", "2"],
    )
