"""What every attack shares: the model frozen in eval mode for the attack, batches in the model's memory
format, and the interface and registry attacks are looked up by.

Why eval mode and input-only gradients: the paper's attack ran in train mode, updating BatchNorm statistics
on adversarial batches and accumulating parameter gradients (SCIENCE.md, weakness 2). Here an attack sees a
fixed function of its input, and the model's modes and ``requires_grad`` flags are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor, nn

from robustdx.core.config import AttackConfig
from robustdx.core.registry import Registry


class Attack(Protocol):
    """An attack built from its configuration: adversarial examples of ``x`` (labels ``y``) against ``model``."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor: ...


ATTACKS: Registry[Callable[[AttackConfig], Attack]] = Registry("attack")
"""Attack name (``AttackConfig.name``) -> factory taking the configuration."""


def register_attack(name: str) -> Callable[[Callable[[AttackConfig], Attack]], Callable[[AttackConfig], Attack]]:
    """Register an attack factory under ``name`` (the value of ``AttackConfig.name``)."""
    return ATTACKS.register(name)


def create_attack(cfg: AttackConfig) -> Attack:
    """The attack ``cfg.name`` names, configured by ``cfg`` (unknown names list the registered ones)."""
    return ATTACKS.get(str(cfg.name))(cfg)


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.list(pattern)


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration; the previous state is restored."""
    modes = [(m, m.training) for m in model.modules()]  # per module: a frozen sub-encoder stays in eval
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def channels_like(x: Tensor, model: nn.Module) -> Tensor:
    """Give a 4-D batch the model's memory format (channels_last models run faster on it)."""
    w = next((p for p in model.parameters() if p.ndim == 4), None)
    if w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x
