"""What an evaluation attack returns per item: whether it broke it, the point that did, and what it cost.

Why not just adversarial images: robust accuracy needs, per item, "was *any* point the attack visited
misclassified?" — the final PGD iterate can be correct although an earlier one was not (torchattacks keeps
only the final iterate) — and to compare attacks item by item (the worst case over PGD, APGD and Square) the
answer must be kept per item. Counting the model evaluations each item cost shows what early stopping saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustdx.core.attacks.base import frozen_eval


@dataclass
class Outcome:
    """Per-item result of an evaluation attack on a batch.

    Attributes:
        x_adv: ``[B, ...]`` a misclassified point where one was found (the clean input when the clean
            prediction is already wrong), otherwise the attack's final point; always in the ε-ball and [0, 1].
        fooled: ``[B]`` bool, the clean prediction or some visited point was misclassified.
        evaluations: ``[B]`` long, model evaluations spent on the item (a gradient step counts one).
    """

    x_adv: Tensor
    fooled: Tensor
    evaluations: Tensor

    @property
    def robust(self) -> Tensor:
        """``[B]`` bool: the item survived (correct clean and at every point the attack visited)."""
        return ~self.fooled


def clean_outcome(model: nn.Module, x: Tensor, y: Tensor) -> Outcome:
    """The starting point of every attack: items misclassified clean are fooled at no cost beyond one forward."""
    with frozen_eval(model), torch.no_grad():
        wrong = model(x).argmax(1) != y
    return Outcome(x.detach().clone(), wrong, torch.ones(len(x), dtype=torch.long, device=x.device))


def merge(first: Outcome, second: Outcome) -> Outcome:
    """The worst case of two attacks on the same items: fooled by either (the first's point kept when both)."""
    take = second.fooled & ~first.fooled
    x = torch.where(take.view(-1, *([1] * (first.x_adv.ndim - 1))), second.x_adv, first.x_adv)
    return Outcome(x, first.fooled | second.fooled, first.evaluations + second.evaluations)
