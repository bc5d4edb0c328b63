"""L∞ attacks in pixel space: PGD (Madry et al. 2018) and FGSM with random start (Wong et al. 2020).

Why this shape: the paper's attack runs in train mode, on normalised tensors, with parameter
gradients accumulating and no clamp (SCIENCE.md, weaknesses 1-2). Here every attack

* works on [0, 1] images (normalisation is inside the model) and clamps to [0, 1];
* runs the model in eval mode with parameter ``requires_grad`` off and differentiates w.r.t. the
  input only (``torch.autograd.grad``), restoring the model's state afterwards;
* starts from a uniform point in the ε-ball (optional), projects after every step, and keeps the
  worst case per image over restarts.

One generic routine, :func:`pgd`, maximises any per-sample loss; CE and the paper's two-view SupCon
attack (Alg. 2) are thin closures over it. ``AttackConfig.paper()`` reproduces the authors'
normalised-space settings for comparison.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from robustdx.core.config import AttackConfig, AttackSpace
from robustdx.core.losses import cross_entropy, supcon_loss

LossFn = Callable[[Tensor], Tensor]


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


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A twin of a frozen, eval-mode ``model`` whose encoder has BatchNorm folded into the convolutions.

    Why: an eval-mode attack sees BatchNorm as a fixed affine map, so folding it removes a memory-bound
    op from each of the attack's forward and backward passes (a measured speed-up on the CPU; see
    benchmarks/train_throughput.py) without changing the function. The twin shares every other
    module with ``model``; it is built per attack call from the current weights (tens of ms). A
    model without an fx-traceable ``encoder`` is returned unchanged.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or model.training or not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules()):
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        fused = fuse(encoder, inplace=False)
    except Exception:  # noqa: BLE001 - untraceable encoders simply run unfused
        return model
    twin = copy.copy(model)
    twin._modules = dict(model._modules)
    twin._modules["encoder"] = fused
    return twin


def _scale(model: nn.Module, cfg: AttackConfig, x: Tensor) -> Tensor | None:
    """Pixel-per-unit factor of the perturbation: ``None`` in pixel space, the model's per-channel
    std in normalised space (so ε=0.2 there is 0.2·std ≈ 11.5/255 in pixels)."""
    if cfg.space == AttackSpace.PIXEL:
        return None
    std = getattr(getattr(model, "normalize", None), "std", None)
    if std is None:
        raise ValueError("space='normalized' needs a model with a Normalize layer at .normalize")
    return std.to(x.dtype).view(*([1] * (x.ndim - 3)), -1, 1, 1)


def pgd(loss_fn: LossFn, x: Tensor, cfg: AttackConfig, scale: Tensor | None = None) -> Tensor:
    """Maximise ``loss_fn`` (one loss per sample, shape ``[B]``) within the L∞ ball around ``x``.

    Args:
        loss_fn: maps a perturbed batch to per-sample losses; called with the model already frozen.
        x: clean inputs in [0, 1]; any shape with the batch first.
        cfg: budget, steps, step size, restarts, random start, clamp.
        scale: pixel units per perturbation unit (see :func:`_scale`); ``None`` for pixel space.

    Returns:
        The adversarial batch (detached), the worst case per sample over restarts.
    """
    x = x.detach()
    eps, alpha = float(cfg.eps), float(cfg.alpha)
    if eps == 0:
        return x.clone()
    s = 1.0 if scale is None else scale
    best_x, best_loss = x.clone(), None

    def to_x(delta: Tensor) -> Tensor:
        xa = x + delta * s
        return xa.clamp(0.0, 1.0) if cfg.clamp else xa

    for _ in range(cfg.restarts):
        if cfg.random_start:
            delta = torch.empty_like(x).uniform_(-eps, eps)
            if cfg.clamp:
                delta = (to_x(delta) - x) / s
        else:
            delta = torch.zeros_like(x)
        for _ in range(cfg.steps):
            # differentiate w.r.t. the (clamped) image, not delta: clamp's zero gradient would
            # otherwise freeze every pixel that touches 0 or 1 (s > 0, so the sign is the same)
            xa = to_x(delta).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(xa).sum(), xa)
            with torch.no_grad():
                delta = (delta + alpha * grad.sign()).clamp_(-eps, eps)
                if cfg.clamp:
                    delta = (to_x(delta) - x) / s
        x_adv = to_x(delta.detach())
        if cfg.restarts == 1:
            return x_adv
        with torch.no_grad():
            loss = loss_fn(x_adv).detach()
        if best_loss is None:
            best_x, best_loss = x_adv, loss
        else:
            better = loss > best_loss
            best_x = torch.where(better.view(-1, *([1] * (x.ndim - 1))), x_adv, best_x)
            best_loss = torch.maximum(loss, best_loss)
    return best_x


def attack_ce(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig) -> Tensor:
    """Adversarial examples against the cross-entropy of ``model`` (eval mode, input gradients only).

    Example:
        >>> from robustdx.core.config import ModelConfig
        >>> from robustdx.core.models import build_model
        >>> net = build_model(ModelConfig(arch="test_cnn"))
        >>> x = torch.rand(2, 3, 16, 16); xa = attack_ce(net, x, torch.tensor([0, 1]), AttackConfig())
        >>> bool((xa - x).abs().max() <= 4 / 255 + 1e-6)
        True
    """
    with frozen_eval(model):
        net = fold_batchnorm(model)
        return pgd(lambda xa: cross_entropy(net(xa), y, reduction="none"), x, cfg, _scale(model, cfg, x))


def attack_supcon(model: nn.Module, views: Tensor, y: Tensor, cfg: AttackConfig, temperature: float) -> Tensor:
    """The paper's Alg. 2 adversary: perturb both views of each image to maximise the SupCon loss.

    Args:
        model: a network with ``project(x) -> [N, D]``.
        views: ``[B, V, C, H, W]`` augmented views in [0, 1].
        y: ``[B]`` labels.

    Returns:
        Attacked views, same shape. Every view gets its own δ (the views are attacked as one
        ``[B·V, C, H, W]`` batch in the model's memory format); the loss couples the batch, so
        restarts keep, per view, the δ with the larger anchor loss.
    """
    b, v = views.shape[:2]
    flat = channels_like(views.flatten(0, 1), model)
    with frozen_eval(model):
        net = fold_batchnorm(model)

        def loss_fn(xa: Tensor) -> Tensor:
            per_anchor = supcon_loss(net.project(xa).view(b, v, -1), y, temperature, reduction="none")
            return per_anchor.view(v, b).T.reshape(-1)  # view-major anchors -> the order of ``flat``

        return pgd(loss_fn, flat, cfg, _scale(model, cfg, flat)).view(views.shape)


def channels_like(x: Tensor, model: nn.Module) -> Tensor:
    """Give a 4-D batch the model's memory format (channels_last models run faster on it)."""
    w = next((p for p in model.parameters() if p.ndim == 4), None)
    if w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x
