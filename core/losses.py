"""Training objectives.

SupCon follows Khosla et al. 2020 (eq. 2, "L_out": mean over positives outside the log) with the
numerical care the reference implementation lacks (SCIENCE.md, weakness 6): fp32, L2-normalised
embeddings, self-pairs masked out of the denominator, a log-sum-exp, and anchors without any
positive (a class of one with a single view) excluded instead of producing NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def supcon_loss(z: Tensor, labels: Tensor, temperature: float = 0.1, reduction: str = "mean") -> Tensor:
    """Supervised contrastive loss.

    Args:
        z: embeddings ``[B, V, D]`` (V views of each of B images) or ``[N, D]`` (one view).
        labels: ``[B]`` integer classes.
        temperature: τ.
        reduction: ``"mean"`` over anchors with a positive, or ``"none"`` for one loss per anchor
            in view-major order (``[V*B]``: all of view 0, then view 1, ...); anchors with no
            positive get 0.

    Returns:
        The loss; ``0`` (with a gradient path) when no anchor has a positive.

    Example:
        >>> z = torch.randn(4, 2, 8); y = torch.tensor([0, 0, 1, 1])
        >>> supcon_loss(z, y).ndim
        0
    """
    if z.ndim == 2:
        z = z.unsqueeze(1)
    b, v, _ = z.shape
    if labels.shape != (b,):
        raise ValueError(f"labels must have shape ({b},), got {tuple(labels.shape)}")
    feats = F.normalize(z.float(), dim=-1).transpose(0, 1).reshape(v * b, -1)
    y = labels.repeat(v)
    logits = feats @ feats.T / temperature
    self_mask = torch.eye(v * b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(1) / n_pos.clamp(min=1)
    per_anchor = per_anchor * (n_pos > 0)
    if reduction == "none":
        return per_anchor
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    valid = n_pos > 0
    if not valid.any():
        return feats.sum() * 0.0
    return per_anchor[valid].mean()


def cross_entropy(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy computed in fp32 (autocast-safe)."""
    return F.cross_entropy(logits.float(), labels, reduction=reduction)
