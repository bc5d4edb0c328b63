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

from collections.abc import Callable

import torch
from torch import Tensor, nn

from robustdx.core.attacks.base import channels_like, frozen_eval, register_attack
from robustdx.core.attacks.folding import fast_twin, fold_batchnorm
from robustdx.core.attacks.outcome import Outcome, clean_outcome
from robustdx.core.config import AttackConfig, AttackSpace
from robustdx.core.losses import cross_entropy, supcon_loss

LossFn = Callable[[Tensor], Tensor]


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


def pgd_outcome(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, seed: int = 0) -> Outcome:
    """PGD on the cross-entropy *for evaluation*: the same trajectory as :func:`attack_ce` (and torchattacks'
    ``PGD``), but an item counts as broken as soon as **any** visited point is misclassified, and it leaves
    the batch there.

    Why: torchattacks keeps the final iterate only, so an item misclassified half-way and correct at the
    end counts as robust (an overestimate); and attacking items that are already broken is wasted work —
    on a 1,000-image evaluation most of the cost. Restarts attack only the survivors. The model is its
    :func:`~robustdx.core.attacks.folding.fast_twin` (BatchNorm folded, channels_last: 1.3-1.4x per step on a
    2-core CPU, the same outcomes on 128 PCam images). The random start is
    drawn on the CPU from ``seed`` (the same numbers on every device; the global RNG is untouched); each
    item's trajectory does not depend on the others (eval mode, per-item loss), so leaving the batch
    changes nothing for the rest.

    Returns:
        An :class:`~robustdx.core.attacks.outcome.Outcome` (items misclassified clean cost one forward).
    """
    if cfg.space != AttackSpace.PIXEL or not cfg.clamp:
        raise ValueError("evaluation attacks run in [0, 1] pixel space with clamping (space='pixel', clamp=true)")
    out = clean_outcome(model, x, y)
    eps = float(cfg.eps)
    if eps == 0:
        return out
    gen = torch.Generator().manual_seed(seed)
    with frozen_eval(model):
        run = _PgdRun(fast_twin(model), x.detach(), y, cfg, out)
        for _ in range(cfg.restarts):
            idx = (~out.fooled).nonzero().flatten()
            if idx.numel() == 0:
                break
            start = torch.empty(x[idx].shape).uniform_(-eps, eps, generator=gen) if cfg.random_start else None
            run.restart(idx, start)
    return out


class _PgdRun:
    """PGD restarts of :func:`pgd_outcome` on one batch, recording into ``out`` as items break."""

    def __init__(self, net: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, out: Outcome) -> None:
        self.net, self.x, self.y, self.out = net, x, y, out
        self.eps, self.alpha, self.steps = float(cfg.eps), float(cfg.alpha), cfg.steps

    def restart(self, idx: Tensor, start: Tensor | None) -> None:
        """One restart on the items ``idx`` (not yet broken), from ``start`` (None: the clean images)."""
        x0, y0, out = self.x.index_select(0, idx), self.y.index_select(0, idx), self.out
        xa = x0.clone() if start is None else (x0 + start.to(x0)).clamp(0.0, 1.0)
        for step in range(self.steps + 1):  # ``steps`` gradient steps, then the final point is checked too
            last = step == self.steps
            xa = channels_like(xa.detach(), self.net).requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                logits = self.net(xa)
            out.evaluations.index_add_(0, idx, torch.ones_like(idx))
            wrong = logits.argmax(1) != y0
            out.x_adv.index_copy_(0, idx, xa.detach())  # the latest point of every survivor (the broken one for the rest)
            out.fooled.index_fill_(0, idx[wrong], True)
            if last or bool(wrong.all()):
                return
            (grad,) = torch.autograd.grad(cross_entropy(logits, y0, reduction="none").sum(), xa)
            keep = ~wrong
            idx, x0, y0 = idx[keep], x0[keep], y0[keep]
            with torch.no_grad():
                delta = (xa[keep] + self.alpha * grad[keep].sign() - x0).clamp_(-self.eps, self.eps)
                xa = (x0 + delta).clamp_(0.0, 1.0)


@register_attack("pgd")
@register_attack("fgsm_rs")  # one PGD step of 1.25·ε from a random start (AttackConfig.alpha)
def _ce_attack(cfg: AttackConfig) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    return lambda model, x, y: attack_ce(model, x, y, cfg)

