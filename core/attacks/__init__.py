"""Adversarial attacks in [0, 1] pixel space, behind one interface (:class:`Attack`) and a registry
(:func:`create_attack` by ``AttackConfig.name``).

* :mod:`.base` — the interface, the registry, the frozen eval-mode model, memory formats;
* :mod:`.pgd` — PGD and FGSM-RS on the cross-entropy (training and evaluation), and the paper's two-view
  SupCon attack (Alg. 2);
* :mod:`.apgd` — APGD (AutoAttack's step-size-free gradient attack), for evaluation;
* :mod:`.square` — the gradient-free Square attack (the gradient-masking check);
* :mod:`.outcome` — what an evaluation attack returns per item (broken or not, where, at what cost);
* :mod:`.folding` — BatchNorm folded into convolutions for cheaper eval-mode gradients.
"""

from robustdx.core.attacks.apgd import ApgdSettings, apgd_outcome
from robustdx.core.attacks.base import Attack, channels_like, create_attack, frozen_eval, list_attacks, register_attack
from robustdx.core.attacks.folding import fold_batchnorm
from robustdx.core.attacks.outcome import Outcome, clean_outcome, merge
from robustdx.core.attacks.pgd import attack_ce, attack_supcon, pgd, pgd_outcome
from robustdx.core.attacks.square import margin_loss, square_attack, square_outcome, square_p_schedule

__all__ = [
    "ApgdSettings",
    "Attack",
    "Outcome",
    "apgd_outcome",
    "attack_ce",
    "attack_supcon",
    "channels_like",
    "clean_outcome",
    "create_attack",
    "fold_batchnorm",
    "frozen_eval",
    "list_attacks",
    "margin_loss",
    "merge",
    "pgd",
    "pgd_outcome",
    "register_attack",
    "square_attack",
    "square_outcome",
    "square_p_schedule",
]
