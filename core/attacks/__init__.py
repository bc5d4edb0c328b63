"""Adversarial attacks in [0, 1] pixel space: PGD and FGSM-RS (:mod:`.pgd`), the two-view SupCon attack of the
paper's Alg. 2, the gradient-free Square attack, BatchNorm folding for fast eval-mode attacks."""
