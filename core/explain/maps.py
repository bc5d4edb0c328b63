"""Attribution maps: input-shaped attributions ``[B, C, H, W]`` folded into one value per pixel ``[B, H, W]``.

Why one function: the pictures (:mod:`.plots`), the service's heatmap, the experiment's localisation
and faithfulness scores (:mod:`.quality`) all rank or draw *pixels*, so they must fold the colour
channels the same way; :func:`attribution_map` is that one fold.
"""

from __future__ import annotations

from enum import StrEnum

from torch import Tensor

from robustdx.core.registry import parse_option


class Reduce(StrEnum):
    """How :func:`attribution_map` folds the colour channels."""

    SUM = "sum"
    ABS = "abs"


def attribution_map(attr: Tensor, reduce: Reduce | str = Reduce.SUM) -> Tensor:
    """``[B, H, W]`` map from channel attributions ``[B, C, H, W]``; a ``[B, H, W]`` map is taken as is.

    ``sum`` keeps the sign (evidence for vs against the target, and the map still sums to
    ``f(x) − f(b)``); ``abs`` sums magnitudes over channels, so opposite channel signs do not cancel
    (for a map given as ``[B, H, W]``: its ``abs``). The result is detached.

    >>> import torch
    >>> attr = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    >>> attribution_map(attr).flatten().tolist(), attribution_map(attr, "abs").flatten().tolist()
    ([-0.5], [3.5])
    """
    how = parse_option(Reduce, reduce, "reduce")
    if attr.ndim not in (3, 4):
        raise ValueError(f"attributions must be [B, C, H, W] or a map [B, H, W], got shape {tuple(attr.shape)}")
    a = attr.detach()
    if how == Reduce.ABS:
        a = a.abs()
    return a if a.ndim == 3 else a.sum(1)
