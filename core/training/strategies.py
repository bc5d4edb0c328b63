"""The paper's training regimes as strategies of the one training engine, behind a registry.

A :class:`Strategy` says which passes an epoch has (clean, adversarial or both), how a batch becomes
a loss, which parameters are trained and how an epoch is validated; :class:`~.trainer.Trainer` does
everything else. Regimes (``Regime``): ``ce``, ``adv_ce`` (Alg. 1), ``supcon``, ``adv_supcon``
(Alg. 2) and ``finetune`` (``full`` | ``linear`` | ``adversarial``, classifier head re-initialised).

Why strategies: the five models of the paper differ only in these few decisions, so one engine with
exact resume, best-by-validation and callbacks serves them all, and a new regime is one registered
class (:func:`create_strategy`, :func:`list_regimes`) instead of another branch in the training loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from robustdx.core.attacks import attack_ce, attack_supcon, channels_like
from robustdx.core.config import AdversarialSchedule, AttackConfig, FinetuneMode, Regime, StageConfig
from robustdx.core.data import Splits
from robustdx.core.evaluation.metrics import centroid_accuracy, classification_metrics, embeddings, predict
from robustdx.core.losses import cross_entropy, supcon_loss
from robustdx.core.registry import Registry


@dataclass
class StepContext:
    """What a strategy needs besides the batch."""

    stage: StageConfig
    attack: AttackConfig


class Strategy(ABC):
    """A training regime: which passes an epoch has, how a batch becomes a loss, how to validate."""

    two_views = False
    adversarial = False
    monitor = "val_acc"

    def __init__(self, stage: StageConfig) -> None:
        self.stage = stage

    def passes(self) -> list[bool]:
        """One entry per pass over the data: ``True`` = on adversarial examples."""
        if not self.adversarial:
            return [False]
        return [True] if self.stage.schedule == AdversarialSchedule.ADVERSARIAL else [False, True]

    def prepare(self, model: nn.Module) -> list[nn.Parameter]:
        """Set up the model (freeze, re-initialise) and return the parameters to optimise."""
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())

    def train_mode(self, model: nn.Module) -> None:
        """Put ``model`` in the mode its training steps run in (before every step: validation switches it)."""
        model.train()

    @abstractmethod
    def loss(self, model: nn.Module, x: Tensor, y: Tensor, adversarial: bool, ctx: StepContext) -> Tensor:
        """The training loss of one batch; ``adversarial`` asks for the loss on attacked inputs."""

    def validate(self, model: nn.Module, splits: Splits, device: torch.device, batch_size: int) -> dict[str, Any]:
        """Validation metrics of one epoch, keys prefixed ``val_`` (classification metrics by default)."""
        loader = DataLoader(splits.val, batch_size=batch_size)
        m = classification_metrics(*predict(model, loader, device))
        return {f"val_{k}": v for k, v in m.items()}


class CEStrategy(Strategy):
    """Cross-entropy; with ``adversarial`` the paper's Alg. 1 (clean pass + PGD pass per epoch)."""

    def __init__(self, stage: StageConfig, adversarial: bool) -> None:
        super().__init__(stage)
        self.adversarial = adversarial

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, adversarial: bool, ctx: StepContext) -> Tensor:
        if adversarial:
            x = attack_ce(model, x, y, ctx.attack)
        return cross_entropy(model(x), y)


class SupConStrategy(Strategy):
    """Supervised contrastive pre-training; with ``adversarial`` the paper's Alg. 2."""

    two_views = True
    monitor = "val_centroid_acc"

    def __init__(self, stage: StageConfig, adversarial: bool) -> None:
        super().__init__(stage)
        self.adversarial = adversarial

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, adversarial: bool, ctx: StepContext) -> Tensor:
        b, v = x.shape[:2]
        if adversarial:
            x = attack_supcon(model, x, y, ctx.attack, ctx.stage.temperature)
        z = model.project(channels_like(x.flatten(0, 1), model)).view(b, v, -1)
        return supcon_loss(z, y, ctx.stage.temperature)

    def validate(self, model: nn.Module, splits: Splits, device: torch.device, batch_size: int) -> dict[str, Any]:
        """Nearest-centroid accuracy (an encoder without a head has no classification metrics)."""
        tf, tl = embeddings(model, splits.train_eval, device, batch_size, max_n=1024)
        vf, vl = embeddings(model, splits.val, device, batch_size)
        return {"val_centroid_acc": centroid_accuracy(tf, tl, vf, vl)}


class FinetuneStrategy(CEStrategy):
    """Fine-tune a pre-trained encoder with a fresh classifier head (full, linear probe, adversarial)."""

    def __init__(self, stage: StageConfig) -> None:
        super().__init__(stage, adversarial=stage.finetune_mode == FinetuneMode.ADVERSARIAL)
        self.mode = stage.finetune_mode

    def prepare(self, model: nn.Module) -> list[nn.Parameter]:
        model.reset_classifier()
        params = super().prepare(model)
        if self.mode == FinetuneMode.LINEAR:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
            params = list(model.classifier.parameters())
        return params

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if self.mode == FinetuneMode.LINEAR:
            model.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics too


_REGIMES: Registry[Callable[[StageConfig], Strategy]] = Registry("regime")
# plain-string names, so that a lookup error suggests 'adv_ce', not <Regime.ADV_CE: 'adv_ce'>
_REGIMES.register(Regime.CE.value)(lambda s: CEStrategy(s, adversarial=False))
_REGIMES.register(Regime.ADV_CE.value)(lambda s: CEStrategy(s, adversarial=True))
_REGIMES.register(Regime.SUPCON.value)(lambda s: SupConStrategy(s, adversarial=False))
_REGIMES.register(Regime.ADV_SUPCON.value)(lambda s: SupConStrategy(s, adversarial=True))
_REGIMES.register(Regime.FINETUNE.value)(FinetuneStrategy)


def create_strategy(regime: Regime | str, stage: StageConfig) -> Strategy:
    """The strategy of ``regime`` for one stage; an unknown name raises ``KeyError`` listing the valid ones."""
    return _REGIMES.get(str(regime))(stage)


def list_regimes() -> list[str]:
    """The registered regime names, sorted."""
    return _REGIMES.list()
