"""Record what the convolutions of a training run really computed: dtype, memory format, device.

Why: a fast path (bf16 autocast, ``channels_last``) that silently falls back still trains and still
gives finite losses; only the activations tell whether it engaged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook


@dataclass(frozen=True)
class ConvActivation:
    """One training-mode convolution output."""

    dtype: torch.dtype
    channels_last: bool
    device: str


@contextmanager
def training_conv_activations() -> Iterator[list[ConvActivation]]:
    """Yield a list that fills with every ``Conv2d`` output computed in train mode with gradients on.

    Attacks run in eval mode on a BatchNorm-folded copy and validation under ``no_grad``, so what is
    recorded is the optimisation step's own forward passes.
    """
    seen: list[ConvActivation] = []

    def hook(module: nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> None:
        if isinstance(module, nn.Conv2d) and module.training and torch.is_grad_enabled() and out.ndim == 4:
            channels_last = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
            seen.append(ConvActivation(out.dtype, channels_last, out.device.type))

    handle = register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()
