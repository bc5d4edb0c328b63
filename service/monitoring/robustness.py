"""The live robustness probe: a small PGD attack on sampled live images against the model's own prediction.

Why separate from the monitor thread: this is the attack and its two readings (did the label flip,
by what logit margin), testable on a tiny model; the thread owns the queue, the private model copy
and the running windows the gauges average over.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _margin(logits: Tensor, target: Tensor) -> Tensor:
    """Logit of ``target`` minus the best other logit (negative = the prediction flipped)."""
    own = logits.gather(1, target[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, target[:, None], float("-inf"))
    return own - other.max(1).values


def probe(model: torch.nn.Module, x: Tensor, eps: float, steps: int) -> tuple[list[float], list[float]]:
    """Attack ``x`` with an L-inf PGD at ``eps`` (no attack at 0) against the model's prediction.

    Returns:
        Per image: 1.0 where the attack flipped the label else 0.0, and the predicted class's logit
        margin after the attack (negative = flipped).
    """
    from robustdx.core.attacks import attack_ce
    from robustdx.core.config import AttackConfig

    with torch.no_grad():
        pred = model(x).argmax(1)
    cfg = AttackConfig(eps=eps, steps=steps)
    x_adv = attack_ce(model, x, pred, cfg) if eps > 0 else x
    with torch.no_grad():
        logits = model(x_adv)
    margin = _margin(logits, pred)
    return (logits.argmax(1) != pred).float().tolist(), margin.tolist()
