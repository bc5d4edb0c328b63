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
from torch.nn.utils.fusion import fuse_conv_bn_eval

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


def _fold_into_convs(module: nn.Module) -> None:
    """Fold every BatchNorm2d that directly follows a Conv2d, in place, recursively.

    Two patterns are recognised: consecutive ``(Conv2d, BatchNorm2d)`` entries of an
    ``nn.Sequential`` (``test_cnn``, ResNet downsample branches) and sibling attributes
    ``convN`` / ``bnN`` (torchvision ResNet stems and blocks, whose forward applies ``bnN`` right
    after ``convN``). No tracing: torch.fx patches ``nn.Module.__call__`` process-wide while it
    traces, which broke concurrent requests in the service.
    """
    for child in module.children():
        _fold_into_convs(child)
    mods = module._modules
    if isinstance(module, nn.Sequential):
        names = list(mods)
        for a, b in zip(names, names[1:], strict=False):
            if isinstance(mods[a], nn.Conv2d) and isinstance(mods[b], nn.BatchNorm2d):
                mods[a] = fuse_conv_bn_eval(mods[a], mods[b])
                mods[b] = nn.Identity()
    for name in list(mods):
        if name.startswith("conv") and name[4:].isdigit() and f"bn{name[4:]}" in mods:
            conv, bn = mods[name], mods[f"bn{name[4:]}"]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                mods[name] = fuse_conv_bn_eval(conv, bn)
                mods[f"bn{name[4:]}"] = nn.Identity()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A twin of a frozen, eval-mode ``model`` whose encoder has BatchNorm folded into the convolutions.

    Why: an eval-mode attack sees BatchNorm as a fixed affine map, so folding it removes a memory-bound
    op from each of the attack's forward and backward passes (a measured speed-up on the CPU; see
    benchmarks/train_throughput.py) without changing the function. The twin shares every other
    module with ``model``; its encoder is a copy built per call from the current weights (tens of
    ms). A model without an ``encoder`` (or in train mode) is returned unchanged. Thread-safe: no
    global state is touched.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or model.training or not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules()):
        return model
    fused = copy.deepcopy(encoder)
    _fold_into_convs(fused)
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


# --------------------------------------------------------------------------------------------
# Square attack: gradient-free, to catch gradient masking
# --------------------------------------------------------------------------------------------
def square_p_schedule(it: int, n_queries: int, p_init: float = 0.8) -> float:
    """Fraction of pixels a Square-attack window covers at iteration ``it`` (Andriushchenko et al. 2020,
    Sec. 3 and their code): ``p_init`` halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000
    and 8000 of a 10 000-query run, rescaled to a budget of ``n_queries``, so the search goes from
    coarse (large windows) to fine (small windows) whatever the budget."""
    t = int(it / n_queries * 10000)
    halvings = sum(t > edge for edge in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """``logit_y - max_{j≠y} logit_j`` per sample: positive while the prediction is correct. The
    Square attack minimises it (Carlini & Wagner 2017's margin, as in Andriushchenko et al. 2020)."""
    logits = logits.float()
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    return true - other


def _random_sign(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Independent ±1 entries drawn on the CPU from ``gen`` (reproducible on every device)."""
    return torch.randint(0, 2, shape, generator=gen).float().mul_(2).sub_(1)


def _window(top: Tensor, left: Tensor, side: int, h: int, w: int) -> Tensor:
    """``[K, 1, H, W]`` boolean masks of one ``side``×``side`` square per sample, at (``top``, ``left``)."""
    rows = torch.arange(h, device=top.device).view(1, h)
    cols = torch.arange(w, device=top.device).view(1, w)
    in_rows = (rows >= top.view(-1, 1)) & (rows < top.view(-1, 1) + side)
    in_cols = (cols >= left.view(-1, 1)) & (cols < left.view(-1, 1) + side)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def _square_side(p: float, h: int, w: int) -> int:
    """Side of a window covering a fraction ``p`` of the image; at least 1 px and smaller than the image."""
    side = int(round((p * h * w) ** 0.5))
    return max(1, min(side, min(h, w) - 1)) if min(h, w) > 1 else 1


def _square_candidates(x: Tensor, x_best: Tensor, eps: float, side: int, gen: torch.Generator, max_resample: int = 10) -> Tensor:
    """One random-search proposal per sample: a random square window set to ``x ± eps`` with one sign
    per channel, the rest of ``x_best`` kept. As in the authors' code, the signs are re-drawn (up to
    ``max_resample`` times) where the proposal equals ``x_best``, so no query is wasted on a no-op."""
    k, c, h, w = x.shape
    top = torch.randint(0, h - side + 1, (k,), generator=gen).to(x.device)
    left = torch.randint(0, w - side + 1, (k,), generator=gen).to(x.device)
    window = _window(top, left, side, h, w)
    sign = _random_sign((k, c, 1, 1), gen).to(x)
    cand = torch.where(window, (x + eps * sign).clamp(0.0, 1.0), x_best)
    for _ in range(max_resample):
        same = (cand == x_best).flatten(1).all(1)
        if not bool(same.any()):
            break
        sign = torch.where(same.view(-1, 1, 1, 1), _random_sign((k, c, 1, 1), gen).to(x), sign)
        cand = torch.where(window, (x + eps * sign).clamp(0.0, 1.0), x_best)
    return cand


def square_attack(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, n_queries: int = 1000, p_init: float = 0.8, seed: int = 0
) -> Tensor:
    """Square Attack, L∞ (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV; Alg. 1 with the L∞ proposal of Sec. 3.1).

    Why: PGD follows the gradient, so a model whose gradients are masked or obfuscated (Athalye et
    al. 2018) looks robust to it without being robust. Square only queries the model's scores: it
    starts from vertical stripes of ±ε, then repeatedly sets a random square window (shrinking with
    :func:`square_p_schedule`) to ``x ± ε`` with one random sign per channel and keeps the proposal
    when it lowers the margin loss (:func:`margin_loss`). A sample stops costing queries once it is
    misclassified. If Square beats PGD at the same ε, PGD's number is not to be trusted.

    Args:
        model: a classifier mapping ``[B, C, H, W]`` images in [0, 1] to logits; run in eval mode
            with parameter gradients off and its state restored afterwards (:func:`frozen_eval`).
        x: clean images in [0, 1], ``[B, C, H, W]``.
        y: true labels ``[B]``.
        eps: L∞ budget in pixel units of [0, 1] images.
        n_queries: model queries per sample, the starting point included (the paper uses 10 000).
        p_init: initial fraction of pixels changed per query (0.05 in the paper's L∞ ImageNet runs;
            0.8 in AutoAttack and torchattacks, whose schedule is rescaled to the budget).
        seed: seed of the attack's own CPU generator; the global RNG is neither used nor moved.

    Returns:
        Adversarial images (detached) within the ε-ball around ``x`` and within [0, 1].
    """
    if x.ndim != 4:
        raise ValueError(f"square_attack needs [B, C, H, W] images, got shape {tuple(x.shape)}")
    if not 0 <= eps <= 1:
        raise ValueError(f"eps must be in [0, 1] pixel units, got {eps!r} (did you mean {eps:g}/255?)")
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries!r}")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
    x = x.detach()
    if eps == 0 or x.shape[0] == 0:
        return x.clone()
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = x.shape
    with frozen_eval(model), torch.no_grad():
        net = fold_batchnorm(model)
        x_best = (x + eps * _random_sign((b, c, 1, w), gen).to(x)).clamp(0.0, 1.0)
        margin = margin_loss(net(x_best), y)
        for it in range(n_queries - 1):
            active = (margin > 0).nonzero().flatten()
            if active.numel() == 0:
                break
            side = _square_side(square_p_schedule(it, n_queries, p_init), h, w)
            # index_select / index_copy_: advanced indexing is much slower on small CPU batches
            x_act, best_act, m_act = x.index_select(0, active), x_best.index_select(0, active), margin.index_select(0, active)
            cand = _square_candidates(x_act, best_act, eps, side, gen)
            new = margin_loss(net(cand), y.index_select(0, active))
            better = new < m_act
            margin.index_copy_(0, active, torch.where(better, new, m_act))
            x_best.index_copy_(0, active, torch.where(better.view(-1, 1, 1, 1), cand, best_act))
    return x_best
