"""The image-batch check shared by the explain modules (named options are checked by
:func:`robustdx.core.registry.parse_option`, the project-wide StrEnum helper)."""

from __future__ import annotations

from torch import Tensor


def check_images(x: Tensor) -> Tensor:
    """``x`` detached, after checking that it is a float batch ``[B, C, H, W]`` (images in [0, 1])."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected images of shape [B, C, H, W], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {x.dtype}")
    return x.detach()
