"""The paper's training regimes as strategies of the one training engine, behind a registry.

A :class:`Strategy` says which passes an epoch has (clean, adversarial or both), how a batch becomes
a loss, which parameters are trained and how an epoch is validated; :class:`~.trainer.Trainer` does
everything else. Regimes (``Regime``): ``ce``, ``adv_ce`` (Alg. 1), ``supcon``, ``adv_supcon``
(Alg. 2) and ``finetune`` (``full`` | ``linear`` | ``adversarial``, classifier head re-initialised).

Classifier regimes weight their training cross-entropy by inverse class frequency of the training split
when ``StageConfig.class_weights='balanced'`` (BUSI is 1:3 malignant; unweighted, a model can reach 75 %
accuracy by never predicting malignant).

Why strategies: the five models of the paper differ only in these few decisions, so one engine with
exact resume, best-by-validation and callbacks serves them all, and a new regime is one registered
class (:func:`create_strategy`, :func:`list_regimes`) instead of another branch in the training loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from robustdx.core.attacks import attack_ce, attack_supcon, channels_like
from robustdx.core.config import AdversarialSchedule, AttackConfig, FinetuneMode, Regime, StageConfig
from robustdx.core.data import Splits, dataset_labels
from robustdx.core.evaluation.metrics import centroid_accuracy, classification_metrics, embeddings, predict
from robustdx.core.losses import cross_entropy, supcon_loss
from robustdx.core.registry import Registry


@dataclass
class StepContext:
    """What a strategy needs besides the batch: the stage, the training attack and the per-class weights of
    the training cross-entropy (None: unweighted; see :meth:`Strategy.class_weights`)."""

    stage: StageConfig
    attack: AttackConfig
    class_weights: Tensor | None = None


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> Tensor:
    """Inverse class frequency ``n / (k · n_c)`` of ``labels`` (sklearn's "balanced"): 1 for every class of a
    balanced set, above 1 for a minority class.

    Raises:
        ValueError: a class has no item (its weight would be infinite), naming the class and the counts.

    Example:
        >>> balanced_class_weights(np.array([0, 0, 0, 1, 1, 1, 1, 1, 1]), 2).tolist()
        [1.5, 0.75]
    """
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes)
    if len(counts) > num_classes or (counts == 0).any():
        raise ValueError(
            f"class_weights='balanced' needs every one of {num_classes} classes in the training split; "
            f"got counts {counts.tolist()}. Use a larger training split or class_weights='none'"
        )
    return torch.as_tensor(counts.sum() / (num_classes * counts), dtype=torch.float32)


def weighted_cross_entropy(logits: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
    """Cross-entropy (fp32), weighted per class when ``weights`` is given: ``Σ w_y·ℓ / Σ w_y``, as torch's
    ``F.cross_entropy(weight=...)`` averages."""
    if weights is None:
        return cross_entropy(logits, y)
    w = weights.to(logits.device)[y]
    return (cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()


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

    def class_weights(self, train: Dataset, num_classes: int) -> Tensor | None:
        """Per-class weights of the training loss from the labels of the ``train`` split (``stage.class_weights``);
        None when unweighted. Regimes without a cross-entropy ignore the setting."""
        return None

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
        """Cross-entropy of the batch (attacked first when ``adversarial``; the attack's own loss is unweighted),
        weighted by ``ctx.class_weights``."""
        if adversarial:
            x = attack_ce(model, x, y, ctx.attack)
        return weighted_cross_entropy(model(x), y, ctx.class_weights)

    def class_weights(self, train: Dataset, num_classes: int) -> Tensor | None:
        if self.stage.class_weights == "none":
            return None
        return balanced_class_weights(dataset_labels(train), num_classes)


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
