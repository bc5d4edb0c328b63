"""Robust accuracy over an ε grid, a gradient-free cross-check and gradient-masking flags.

Why: the paper reports clean accuracy only (SCIENCE.md, weaknesses 3 and 5). Here

* robust accuracy is reported beside clean accuracy, over an ε grid in [0, 1] pixel units, under
  PGD with random restarts (Madry et al. 2018), and counts an item as robust only if it is
  classified correctly both clean and attacked (the attacker may choose δ = 0);
* a gradient-free attack (Square, Andriushchenko et al. 2020) is run on a subsample of the same items:
  if it beats PGD, or if robust accuracy does not fall as ε grows, the PGD numbers are suspect
  (gradient masking; Athalye et al. 2018, Carlini et al. 2019 "On evaluating adversarial robustness");
* every robust accuracy comes with a seeded percentile-bootstrap 95 % CI over items.

How much is attacked, and how hard, is one :class:`EvalConfig`. All randomness is seeded and drawn
inside forked RNG states: the caller's global RNG is not moved, and a number depends on the seed only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from robustdx.core.attacks import attack_ce, frozen_eval, square_attack
from robustdx.core.config import AttackConfig, PixelBudget
from robustdx.core.evaluation.metrics import bootstrap_ci, classification_metrics, group_metrics, metric_cis, predict

DEFAULT_EPS_GRID: tuple[float, ...] = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
"""L∞ budgets in [0, 1] pixel units at which robust accuracy is reported by default."""

Outcomes = tuple[np.ndarray, np.ndarray]
"""Per-item clean and robust correctness, as :func:`attack_outcomes` returns them."""


class EvalConfig(BaseModel):
    """How a classifier's robustness is evaluated: the ε grid and PGD budget, the Square cross-check,
    which items (a seeded subsample), and the bootstrap. Functions read only the fields they need."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eps_grid: tuple[PixelBudget, ...] = Field(DEFAULT_EPS_GRID, description="L∞ budgets in [0, 1] pixel units ('4/255' allowed).")
    steps: int = Field(50, ge=1, le=1000, description="PGD steps per restart.")
    restarts: int = Field(2, ge=1, le=100, description="PGD random restarts; an item must survive all of them.")
    max_n: int | None = Field(256, ge=1, description="Items attacked with PGD, a seeded random subsample; None for all.")
    square_eps: tuple[PixelBudget, ...] | None = Field(
        None, description="Budgets of the Square cross-check; None: the largest ε of the grid when it is above 0."
    )
    square_n: int | None = Field(
        100, ge=1, description="Items attacked with Square: the first of PGD's subsample (same seed); None for all."
    )
    square_queries: int = Field(1000, ge=1, description="Model queries per item of the Square attack.")
    square_p_init: float = Field(0.8, gt=0, le=1, description="Initial fraction of pixels Square changes per query.")
    batch_size: int = Field(64, ge=1, description="Items per attacked batch (Square seeds batch k with seed + k).")
    n_boot: int = Field(1000, ge=1, description="Bootstrap resamples of every confidence interval.")
    seed: int = Field(0, ge=0, description="Seed of the subsample, the attacks' random starts and the bootstrap.")
    tol: float = Field(0.02, ge=0, le=1, description="Accuracy difference the gradient-masking flags tolerate.")


def eps_label(eps: float) -> str:
    """``4/255``-style label of a pixel-unit budget (``0.0314`` when it is not a whole number of levels)."""
    levels = eps * 255
    return f"{round(levels):d}/255" if math.isclose(levels, round(levels), abs_tol=1e-6) else f"{eps:.4g}"


def subsample(n_total: int, max_n: int | None, seed: int) -> np.ndarray:
    """The first ``max_n`` items of a seeded permutation of ``range(n_total)`` (all of it when ``max_n``
    is None). Prefixes of one permutation are nested, so a smaller subsample with the same seed (the
    Square check) is a subset of a larger one (the PGD curve) and the two can be compared item by item."""
    if max_n is not None and max_n < 1:
        raise ValueError(f"max_n must be >= 1 or None, got {max_n!r}")
    perm = np.random.default_rng(seed).permutation(n_total)
    return perm if max_n is None else perm[:max_n]


def _rng_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG state :func:`torch.random.fork_rng` must save for ``device``."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _batches(data: Subset, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches of ``data`` in order, on ``device``. The loader gets its own generator, so
    iterating it does not draw from the global RNG the attacks are seeded with."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    for batch in loader:
        yield batch[0].to(device), batch[1].to(device)


def attack_outcomes(
    model: nn.Module,
    data: Subset,
    attack: Callable[[Tensor, Tensor, int], Tensor],
    cfg: EvalConfig,
    *,
    device: torch.device,
) -> Outcomes:
    """Per-item clean and robust correctness of ``model`` on ``data`` (the items to attack, as a
    ``Subset`` of the data set), in batches of ``cfg.batch_size``.

    ``attack(x, y, batch_index)`` returns adversarial images. An item is robust when it is correct
    both clean and attacked (the worst case over the ball includes the clean point), so robust
    accuracy never exceeds clean accuracy. The global RNG is seeded with ``cfg.seed`` inside a forked
    state (the caller's state is restored), so the result depends on ``cfg.seed`` only.
    """
    clean: list[np.ndarray] = []
    robust: list[np.ndarray] = []
    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(cfg.seed)
        for k, (x, y) in enumerate(_batches(data, cfg.batch_size, device)):
            xa = attack(x, y, k)
            with frozen_eval(model), torch.no_grad():
                ok = model(x).argmax(1) == y
                ok_adv = model(xa).argmax(1) == y
            clean.append(ok.cpu().numpy())
            robust.append((ok & ok_adv).cpu().numpy())
    if not clean:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    return np.concatenate(clean), np.concatenate(robust)


def _accuracy_record(eps: float, attack: str, items: np.ndarray, outcomes: Outcomes, cfg: EvalConfig) -> dict[str, Any]:
    """The JSON-ready record of one (attack, ε) evaluation; ``items``/``robust_correct`` allow paired comparisons."""
    clean, robust = outcomes
    n = len(items)
    return {
        "eps": float(eps),
        "eps_label": eps_label(eps),
        "attack": attack,
        "n": n,
        "clean_acc": float(clean.mean()) if n else float("nan"),
        "robust_acc": float(robust.mean()) if n else float("nan"),
        "ci": list(bootstrap_ci(lambda i: float(robust[i].mean()), n, cfg.n_boot, cfg.seed)) if n else [float("nan")] * 2,
        "items": [int(i) for i in items],
        "robust_correct": [bool(r) for r in robust],
    }


def _pgd(model: nn.Module, cfg: AttackConfig) -> Callable[[Tensor, Tensor, int], Tensor]:
    """An :func:`attack_outcomes` attack: PGD on the cross-entropy with ``cfg``."""
    return lambda x, y, _k: attack_ce(model, x, y, cfg)


def robustness_curve(
    model: nn.Module, dataset: Dataset, cfg: EvalConfig = EvalConfig(), *, device: torch.device | str = "cpu"
) -> list[dict[str, Any]]:
    """Robust accuracy under PGD-``cfg.steps`` with ``cfg.restarts`` random restarts at each ε of ``cfg.eps_grid``.

    Why: one ε says little, and robust accuracy that does not fall with ε is a symptom of a broken
    evaluation (Carlini et al. 2019, Sec. 5). The attack is :func:`robustdx.core.attacks.pgd.attack_ce`
    with ``AttackConfig(eps, steps, restarts)`` (step 2.5·ε/steps, random start, clamp to [0, 1]).

    Args:
        model: classifier on [0, 1] images, already on ``device``; its mode and flags are restored.
        dataset: yields ``(image, label, ...)``.
        cfg: the grid, the PGD budget, the subsample (``max_n`` items, :func:`subsample`), the
            batch size and the bootstrap. Each ε is attacked from ``torch.manual_seed(cfg.seed)`` so
            a number does not depend on the rest of the grid.
        device: where the model is.

    Returns:
        One record per ε (in grid order): ``eps``, ``eps_label``, ``attack``, ``n``, ``clean_acc``,
        ``robust_acc``, ``ci`` (95 % bootstrap CI of robust accuracy), ``items`` (dataset indices)
        and ``robust_correct`` (per item).
    """
    return [
        robust_accuracy(model, dataset, AttackConfig(eps=eps, steps=cfg.steps, restarts=cfg.restarts), cfg, device=device)
        for eps in cfg.eps_grid
    ]


def robust_accuracy(
    model: nn.Module,
    dataset: Dataset,
    attack: AttackConfig,
    cfg: EvalConfig = EvalConfig(),
    *,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Robust accuracy under one attack configuration (e.g. a run's ``eval_attack``) on a seeded subsample
    (``cfg.max_n``, ``cfg.batch_size``, ``cfg.seed``, ``cfg.n_boot``; the grid and PGD fields are not read).

    Returns the record of :func:`robustness_curve` (``eps``, ``n``, ``clean_acc``, ``robust_acc``, ``ci``, ...).
    """
    device = torch.device(device)
    items = subsample(len(dataset), cfg.max_n, cfg.seed)
    outcomes = attack_outcomes(model, Subset(dataset, items.tolist()), _pgd(model, attack), cfg, device=device)
    return _accuracy_record(attack.eps, f"{attack.name}-{attack.steps}x{attack.restarts}", items, outcomes, cfg)


def square_robust_accuracy(
    model: nn.Module, dataset: Dataset, eps: float, cfg: EvalConfig = EvalConfig(), *, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Robust accuracy at ``eps`` under the gradient-free Square attack (:func:`robustdx.core.attacks.square_attack`).

    Why: a cross-check of PGD that gradient masking cannot fool (Andriushchenko et al. 2020). It is
    query-hungry, so it runs on a subsample: with the same ``cfg.seed`` its ``cfg.square_n`` items are
    the first of :func:`robustness_curve`'s, and :func:`gradient_masking_flags` compares the two item
    by item. Batch ``k`` is attacked with seed ``cfg.seed + k`` (``cfg.square_queries`` queries per item).

    Returns:
        A record as in :func:`robustness_curve` (``attack`` = ``square-<n_queries>``) plus ``n_queries``.
    """
    device = torch.device(device)
    items = subsample(len(dataset), cfg.square_n, cfg.seed)
    n_queries = cfg.square_queries

    def attack(x: Tensor, y: Tensor, k: int) -> Tensor:
        return square_attack(model, x, y, float(eps), n_queries=n_queries, p_init=cfg.square_p_init, seed=cfg.seed + k)

    outcomes = attack_outcomes(model, Subset(dataset, items.tolist()), attack, cfg, device=device)
    return {**_accuracy_record(eps, f"square-{n_queries}", items, outcomes, cfg), "n_queries": n_queries}


def _paired_pgd_accuracy(pgd: dict[str, Any], other: dict[str, Any]) -> tuple[float, int]:
    """PGD's robust accuracy on ``other``'s items (and how many of them PGD evaluated); PGD's overall
    number when the records carry no per-item outcomes or share no item."""
    if "items" in pgd and "robust_correct" in pgd and "items" in other:
        outcome = dict(zip(pgd["items"], pgd["robust_correct"], strict=True))
        shared = [outcome[i] for i in other["items"] if i in outcome]
        if shared and len(shared) == len(other["items"]):
            return float(np.mean(shared)), len(shared)
    return float(pgd["robust_acc"]), int(pgd.get("n", 0))


def _rising_flags(points: list[dict[str, Any]], tol: float) -> list[str]:
    """Points (sorted by ε) whose robust accuracy exceeds the worst at a smaller ε by more than ``tol``."""
    flags: list[str] = []
    for prev, cur in zip(points, points[1:], strict=False):
        worst_before = min(float(r["robust_acc"]) for r in points if float(r["eps"]) <= float(prev["eps"]))
        if float(cur["robust_acc"]) > worst_before + tol:
            flags.append(
                f"robust accuracy rises with eps: {float(cur['robust_acc']):.3f} at eps={eps_label(cur['eps'])} "
                f"> {worst_before:.3f} at a smaller eps (a correct attack is monotone in eps; suspect gradient masking)"
            )
    return flags


def _above_clean_flags(points: list[dict[str, Any]], tol: float) -> list[str]:
    """Points whose robust accuracy exceeds their clean accuracy by more than ``tol``."""
    return [
        f"robust accuracy {float(r['robust_acc']):.3f} exceeds clean accuracy {float(r['clean_acc']):.3f} "
        f"at eps={eps_label(r['eps'])} (the attack is broken)"
        for r in points
        if "clean_acc" in r and float(r["robust_acc"]) > float(r["clean_acc"]) + tol
    ]


def _square_flags(points: list[dict[str, Any]], square_results: Sequence[dict[str, Any]], tol: float) -> list[str]:
    """Square records that beat PGD at the same ε (on the same items where possible) by more than ``tol``."""
    flags: list[str] = []
    for sq in square_results:
        pgd = next((r for r in points if math.isclose(float(r["eps"]), float(sq["eps"]), rel_tol=1e-6, abs_tol=1e-9)), None)
        if pgd is None:
            continue
        pgd_acc, n = _paired_pgd_accuracy(pgd, sq)
        if float(sq["robust_acc"]) < pgd_acc - tol:
            flags.append(
                f"gradient-free {sq.get('attack', 'square')} beats {pgd.get('attack', 'PGD')} at eps={eps_label(sq['eps'])}: "
                f"robust accuracy {float(sq['robust_acc']):.3f} < {pgd_acc:.3f} on the same {n} items "
                f"(PGD's gradients are masked or obfuscated; its robust accuracy overstates robustness)"
            )
    return flags


def gradient_masking_flags(
    curve: Sequence[dict[str, Any]], square_results: Sequence[dict[str, Any]] = (), tol: float = 0.02
) -> list[str]:
    """Reasons to distrust a PGD robustness curve (empty when none), after Athalye et al. 2018 and
    Carlini et al. 2019's checklist:

    * a gradient-free attack (Square) reaches a lower robust accuracy than PGD at the same ε, by more
      than ``tol``, on the same items where the records allow it (PGD should be the stronger attack;
      if not, its gradients are masked or obfuscated);
    * robust accuracy rises with ε by more than ``tol`` (a larger ball contains the smaller one, so a
      correct attack cannot do worse there);
    * robust accuracy exceeds clean accuracy by more than ``tol``.

    Args:
        curve: records with ``eps`` and ``robust_acc`` (optionally ``clean_acc``, ``items``,
            ``robust_correct``), e.g. from :func:`robustness_curve`.
        square_results: records of :func:`square_robust_accuracy`; an ε absent from ``curve`` is skipped.
        tol: tolerated difference in accuracy (fraction of items).
    """
    points = sorted(curve, key=lambda r: float(r["eps"]))
    return _rising_flags(points, tol) + _above_clean_flags(points, tol) + _square_flags(points, square_results, tol)


def evaluate_classifier(
    model: nn.Module, dataset: Dataset, cfg: EvalConfig = EvalConfig(), *, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """The full evaluation of a classifier on one data set (items ``(image, label, group, ...)``), as a
    JSON-ready dict (NaN where a metric is undefined, e.g. the AUC of a one-class group).

    Keys: ``clean`` (:func:`~.metrics.classification_metrics` on every item, with ``ci`` from
    :func:`~.metrics.metric_cis` and ``groups`` from :func:`~.metrics.group_metrics`), ``robustness``
    (:func:`robustness_curve`), ``square`` (:func:`square_robust_accuracy` at each of ``cfg.square_eps``;
    default: the largest ε of the grid), ``flags`` (:func:`gradient_masking_flags`) and ``suspicious``
    (any flag).
    """
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, generator=torch.Generator())
    probs, labels, groups = predict(model, loader, device)
    clean = classification_metrics(probs, labels, groups)
    clean["ci"] = metric_cis(probs, labels, cfg.n_boot, cfg.seed)
    clean["groups"] = group_metrics(probs, labels, groups)
    curve = robustness_curve(model, dataset, cfg, device=device)
    square_eps = cfg.square_eps
    if square_eps is None:
        square_eps = (max(cfg.eps_grid),) if cfg.eps_grid and max(cfg.eps_grid) > 0 else ()
    square = [square_robust_accuracy(model, dataset, e, cfg, device=device) for e in square_eps]
    flags = gradient_masking_flags(curve, square, cfg.tol)
    return {"clean": clean, "robustness": curve, "square": square, "flags": flags, "suspicious": bool(flags)}
