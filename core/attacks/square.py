"""The Square attack (Andriushchenko et al. 2020): gradient-free, so gradient masking cannot fool it.

Why it is here: PGD follows the gradient, so a model whose gradients are masked or obfuscated (Athalye et
al. 2018) looks robust to it without being robust; a score-only random search is the independent check.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import torch
from torch import Tensor, nn

from robustdx.core.attacks.base import frozen_eval
from robustdx.core.attacks.folding import fold_batchnorm
from robustdx.core.attacks.outcome import Outcome, clean_outcome


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
    with frozen_eval(model), torch.no_grad():
        budget = _Budget(float(eps), n_queries, p_init)
        x_best, _margin, _queries = _search(fold_batchnorm(model), x, y, budget, torch.Generator().manual_seed(seed))
    return x_best


@dataclass(frozen=True)
class _Budget:
    eps: float
    n_queries: int
    p_init: float


def _search(net: nn.Module, x: Tensor, y: Tensor, budget: _Budget, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """The random search of :func:`square_attack`: best images, their margins and the queries each item cost."""
    eps, n_queries, p_init = astuple(budget)
    b, c, h, w = x.shape
    x_best = (x + eps * _random_sign((b, c, 1, w), gen).to(x)).clamp(0.0, 1.0)
    margin = margin_loss(net(x_best), y)
    queries = torch.ones(b, dtype=torch.long, device=x.device)
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
        queries.index_add_(0, active, torch.ones_like(active))
    return x_best, margin, queries


def square_outcome(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, *, n_queries: int = 1000, p_init: float = 0.8, seed: int = 0
) -> Outcome:
    """:func:`square_attack` for evaluation: only the items the model gets right are searched, and an item is
    fooled when the search found a misclassified point (that point kept) — see :mod:`.outcome`."""
    out = clean_outcome(model, x, y)
    idx = (~out.fooled).nonzero().flatten()
    if eps == 0 or idx.numel() == 0:
        return out
    with frozen_eval(model), torch.no_grad():
        net = fold_batchnorm(model)
        x_s, y_s = x.detach().index_select(0, idx), y.index_select(0, idx)
        gen = torch.Generator().manual_seed(seed)
        x_best, _margin, queries = _search(net, x_s, y_s, _Budget(float(eps), n_queries, p_init), gen)
        wrong = net(x_best).argmax(1) != y_s
    out.x_adv.index_copy_(0, idx, x_best)
    out.fooled.index_copy_(0, idx, wrong)
    out.evaluations.index_add_(0, idx, queries)
    return out
