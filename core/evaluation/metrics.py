"""Evaluation: predictions, calibrated classification metrics with bootstrap CIs, per-group metrics,
robust accuracy over an ε grid, a gradient-free cross-check and gradient-masking flags.

Why: the paper reports clean accuracy of single runs only (SCIENCE.md, weaknesses 3 and 5). Here

* robust accuracy is always reported beside clean accuracy, over an ε grid in [0, 1] pixel units,
  under PGD-50 with random restarts (Madry et al. 2018), and counts an item as robust only if it is
  classified correctly both clean and attacked (the attacker may choose δ = 0);
* a gradient-free attack (Square, Andriushchenko et al. 2020) is run on a subsample of the same items:
  if it beats PGD, or if robust accuracy does not fall as ε grows, the PGD numbers are suspect
  (gradient masking; Athalye et al. 2018, Carlini et al. 2019 "On evaluating adversarial robustness");
* every headline number comes with a seeded percentile-bootstrap 95 % CI over items (Efron &
  Tibshirani 1993), calibration is measured (ECE; Guo et al. 2017), and per-group (hospital) and
  worst-group metrics expose domain shift (Koh et al. 2021, WILDS).

All randomness is seeded and drawn from forked RNG states: the caller's global RNG is not moved by
the functions added here (``robust_accuracy`` keeps its historical ``torch.manual_seed``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from robustdx.core.attacks.pgd import attack_ce, frozen_eval, square_attack
from robustdx.core.config import AttackConfig
from robustdx.core.losses import cross_entropy

DEFAULT_EPS_GRID: tuple[float, ...] = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
"""L∞ budgets in [0, 1] pixel units at which robust accuracy is reported by default."""


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class probabilities, labels and groups of every item in ``loader`` (model in eval mode)."""
    was = model.training
    model.eval()
    probs, labels, groups = [], [], []
    for batch in loader:
        x = batch[0].to(device)
        probs.append(torch.softmax(model(x).float(), dim=1).cpu())
        labels.append(batch[1])
        groups.append(batch[2])
    model.train(was)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy(), torch.cat(groups).numpy()


def classification_metrics(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, balanced accuracy, ROC-AUC (binary: positive class 1; else one-vs-rest), log-loss,
    expected calibration error (``ece``, 15 equal-width bins), and per-group / worst-group accuracy
    (``group_acc``, ``group_n``, ``worst_group_acc``, ``worst_group``) when ``groups`` is given."""
    _check_probs(probs, labels)
    pred = probs.argmax(1)
    out: dict[str, Any] = {
        "acc": float((pred == labels).mean()),
        "bal_acc": float(balanced_accuracy_score(labels, pred)),
        "loss": float(cross_entropy(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(labels))),
        "auc": roc_auc(probs, labels),
        "ece": expected_calibration_error(probs, labels),
    }
    if groups is not None:
        per = {str(int(g)): float((pred[groups == g] == labels[groups == g]).mean()) for g in np.unique(groups)}
        out["group_acc"] = per
        out["group_n"] = {str(int(g)): int((groups == g).sum()) for g in np.unique(groups)}
        out["worst_group_acc"] = min(per.values())
        out["worst_group"] = min(per, key=per.__getitem__)
    return out


def _check_probs(probs: np.ndarray, labels: np.ndarray) -> None:
    """Raise ``ValueError`` naming the shapes unless ``probs`` is ``[N, K]`` and ``labels`` ``[N]``."""
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"need probs [N, K] and labels [N]; got probs {probs.shape} and labels {labels.shape}")


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC (binary: score of class 1; more classes: macro one-vs-rest); NaN when only one class is present."""
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(present) < probs.shape[1]:  # one-vs-rest is undefined for an absent class (small resamples)
        return float("nan")
    return float(roc_auc_score(labels, probs, multi_class="ovr"))


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Reliability-diagram statistics of the top-label confidence (Guo et al. 2017, Sec. 2).

    Confidences ``max_k p_k`` fall into ``n_bins`` equal-width bins ``(b/n, (b+1)/n]`` (the first bin
    also takes 0). Returns per bin ``count``, ``acc`` (fraction correct) and ``conf`` (mean
    confidence); empty bins have NaN ``acc``/``conf``.
    """
    _check_probs(probs, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins!r}")
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(float)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return {"count": count, "acc": acc, "conf": mean_conf}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017, eq. 3) with equal-width bins.

    ``ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|`` over the bins of :func:`calibration_bins` (top-label
    confidence). 0 for a calibrated model; a model that is always 100 % sure and right half of the
    time has ECE 0.5. Why it matters here: adversarial and contrastive training change confidence
    as much as accuracy, and a diagnostic aid's probabilities are read as risks.
    """
    if len(labels) == 0:
        return float("nan")
    bins = calibration_bins(probs, labels, n_bins)
    full = bins["count"] > 0
    gap = np.abs(bins["acc"][full] - bins["conf"][full])
    return float((bins["count"][full] * gap).sum() / bins["count"].sum())


def bootstrap_ci(
    metric: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile-bootstrap ``1 - alpha`` confidence interval of a metric over ``n`` items (Efron &
    Tibshirani 1993, ch. 13).

    Args:
        metric: maps an index array (items drawn with replacement from ``range(n)``) to a number,
            e.g. ``lambda i: (pred[i] == labels[i]).mean()``. Resamples where it is not finite
            (an AUC of a one-class resample) are left out.
        n: number of items.
        n_boot: number of resamples.
        seed: seed of the resampling (a private NumPy generator).
        alpha: 0.05 gives a 95 % interval.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when no resample gives a finite value.
    """
    if n < 1:
        raise ValueError(f"bootstrap needs at least one item, got n={n!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    rng = np.random.default_rng(seed)
    values = np.array([metric(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def metric_cis(
    probs: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, list[float]]:
    """Bootstrap CIs (:func:`bootstrap_ci`, the same resamples for every metric) of ``acc``,
    ``bal_acc``, ``auc`` and ``ece``, each as ``[low, high]``."""
    _check_probs(probs, labels)
    pred = probs.argmax(1)
    fns: dict[str, Callable[[np.ndarray], float]] = {
        "acc": lambda i: float((pred[i] == labels[i]).mean()),
        "bal_acc": lambda i: _balanced_accuracy(pred[i], labels[i]),
        "auc": lambda i: roc_auc(probs[i], labels[i]),
        "ece": lambda i: expected_calibration_error(probs[i], labels[i]),
    }
    return {k: list(bootstrap_ci(f, len(labels), n_boot, seed, alpha)) for k, f in fns.items()}


def _balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels`` (sklearn's definition, without its
    warnings and ~50x faster, for bootstrap loops)."""
    classes = np.unique(labels)
    return float(np.mean([(pred[labels == c] == c).mean() for c in classes]))


def group_metrics(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Per-group ``n``, ``acc``, ``bal_acc``, ``auc`` and ``ece`` (group keys as strings, JSON-ready),
    and the worst group by accuracy and by balanced accuracy.

    Why: an average over hospitals hides the hospital the model fails on; WILDS reports the worst
    group (Koh et al. 2021; Sagawa et al. 2020).
    """
    _check_probs(probs, labels)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have the shape of labels {labels.shape}, got {groups.shape}")
    pred = probs.argmax(1)
    per: dict[str, dict[str, float]] = {}
    for g in np.unique(groups):
        m = groups == g
        per[str(int(g))] = {
            "n": int(m.sum()),
            "acc": float((pred[m] == labels[m]).mean()),
            "bal_acc": _balanced_accuracy(pred[m], labels[m]),
            "auc": roc_auc(probs[m], labels[m]),
            "ece": expected_calibration_error(probs[m], labels[m]),
        }
    worst = min(per, key=lambda g: per[g]["acc"])
    worst_bal = min(per, key=lambda g: per[g]["bal_acc"])
    return {
        "groups": per,
        "worst_group": worst,
        "worst_group_acc": per[worst]["acc"],
        "worst_group_bal_acc": per[worst_bal]["bal_acc"],
    }


@torch.no_grad()
def embeddings(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 128, max_n: int | None = None
) -> tuple[Tensor, Tensor]:
    """Encoder features and labels of (the first ``max_n`` items of) ``dataset``."""
    n = len(dataset) if max_n is None else min(len(dataset), max_n)
    was = model.training
    model.eval()
    feats, labels = [], []
    for batch in DataLoader(Subset(dataset, range(n)), batch_size=batch_size):
        feats.append(model.embed(batch[0].to(device)).float().cpu())
        labels.append(batch[1])
    model.train(was)
    return torch.cat(feats), torch.cat(labels)


def centroid_accuracy(train_feats: Tensor, train_labels: Tensor, feats: Tensor, labels: Tensor) -> float:
    """Nearest-class-centroid accuracy (cosine): how well an encoder without a head separates classes."""
    tf = torch.nn.functional.normalize(train_feats, dim=1)
    classes = torch.unique(train_labels)
    cents = torch.nn.functional.normalize(torch.stack([tf[train_labels == c].mean(0) for c in classes]), dim=1)
    pred = classes[(torch.nn.functional.normalize(feats, dim=1) @ cents.T).argmax(1)]
    return float((pred == labels).float().mean())


# --------------------------------------------------------------------------------------------
# robustness over an ε grid, a gradient-free cross-check, and gradient-masking flags
# --------------------------------------------------------------------------------------------
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


def _batches(dataset: Dataset, items: np.ndarray, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches of ``dataset[items]`` in order, on ``device``. The loader gets its own
    generator, so iterating it does not draw from the global RNG the attacks are seeded with."""
    loader = DataLoader(Subset(dataset, items.tolist()), batch_size=batch_size, shuffle=False, generator=torch.Generator())
    for batch in loader:
        yield batch[0].to(device), batch[1].to(device)


def attack_outcomes(
    model: nn.Module,
    dataset: Dataset,
    items: np.ndarray,
    attack: Callable[[Tensor, Tensor, int], Tensor],
    device: torch.device,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-item clean and robust correctness of ``model`` on ``dataset[items]``.

    ``attack(x, y, batch_index)`` returns adversarial images. An item is robust when it is correct
    both clean and attacked (the worst case over the ball includes the clean point), so robust
    accuracy never exceeds clean accuracy. The global RNG is seeded with ``seed`` inside a forked
    state (the caller's state is restored), so the result depends on ``seed`` only.
    """
    clean: list[np.ndarray] = []
    robust: list[np.ndarray] = []
    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(seed)
        for k, (x, y) in enumerate(_batches(dataset, items, batch_size, device)):
            xa = attack(x, y, k)
            with frozen_eval(model), torch.no_grad():
                ok = model(x).argmax(1) == y
                ok_adv = model(xa).argmax(1) == y
            clean.append(ok.cpu().numpy())
            robust.append((ok & ok_adv).cpu().numpy())
    if not clean:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    return np.concatenate(clean), np.concatenate(robust)


def _accuracy_record(
    eps: float, attack: str, items: np.ndarray, clean: np.ndarray, robust: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """The JSON-ready record of one (attack, ε) evaluation; ``items``/``robust_correct`` allow paired comparisons."""
    n = len(items)
    return {
        "eps": float(eps),
        "eps_label": eps_label(eps),
        "attack": attack,
        "n": n,
        "clean_acc": float(clean.mean()) if n else float("nan"),
        "robust_acc": float(robust.mean()) if n else float("nan"),
        "ci": list(bootstrap_ci(lambda i: float(robust[i].mean()), n, n_boot, seed)) if n else [float("nan")] * 2,
        "items": [int(i) for i in items],
        "robust_correct": [bool(r) for r in robust],
    }


def _pgd(model: nn.Module, cfg: AttackConfig) -> Callable[[Tensor, Tensor, int], Tensor]:
    """An :func:`attack_outcomes` attack: PGD on the cross-entropy with ``cfg``."""
    return lambda x, y, _k: attack_ce(model, x, y, cfg)


def robustness_curve(
    model: nn.Module,
    dataset: Dataset,
    eps_grid: Sequence[float] = DEFAULT_EPS_GRID,
    device: torch.device | str = "cpu",
    steps: int = 50,
    restarts: int = 2,
    max_n: int | None = 256,
    batch_size: int = 64,
    seed: int = 0,
    n_boot: int = 1000,
) -> list[dict[str, Any]]:
    """Robust accuracy under PGD-``steps`` with ``restarts`` random restarts at each ε of ``eps_grid``.

    Why: one ε says little, and robust accuracy that does not fall with ε is a symptom of a broken
    evaluation (Carlini et al. 2019, Sec. 5). The attack is :func:`robustdx.core.attacks.pgd.attack_ce`
    with ``AttackConfig(eps, steps, restarts)`` (step 2.5·ε/steps, random start, clamp to [0, 1]).

    Args:
        model: classifier on [0, 1] images, already on ``device``; its mode and flags are restored.
        dataset: yields ``(image, label, ...)``.
        eps_grid: L∞ budgets in pixel units.
        max_n: items evaluated, a seeded random subsample (:func:`subsample`); None for all.
        seed: subsample and attack seed; each ε is attacked from ``torch.manual_seed(seed)`` so a
            number does not depend on the rest of the grid.
        n_boot: bootstrap resamples of the robust-accuracy CI.

    Returns:
        One record per ε (in grid order): ``eps``, ``eps_label``, ``attack``, ``n``, ``clean_acc``,
        ``robust_acc``, ``ci`` (95 % bootstrap CI of robust accuracy), ``items`` (dataset indices)
        and ``robust_correct`` (per item).
    """
    return [
        robust_accuracy(
            model, dataset, AttackConfig(eps=eps, steps=steps, restarts=restarts), device, batch_size, max_n, seed, n_boot
        )
        for eps in eps_grid
    ]


def robust_accuracy(
    model: nn.Module,
    dataset: Dataset,
    cfg: AttackConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    max_n: int | None = 256,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Robust accuracy under one attack configuration (e.g. a run's ``eval_attack``) on a seeded subsample.

    Returns the record of :func:`robustness_curve` (``eps``, ``n``, ``clean_acc``, ``robust_acc``, ``ci``, ...).
    """
    device = torch.device(device)
    items = subsample(len(dataset), max_n, seed)
    clean, robust = attack_outcomes(model, dataset, items, _pgd(model, cfg), device, batch_size, seed)
    return _accuracy_record(cfg.eps, f"{cfg.name}-{cfg.steps}x{cfg.restarts}", items, clean, robust, n_boot, seed)


def square_robust_accuracy(
    model: nn.Module,
    dataset: Dataset,
    eps: float,
    device: torch.device | str = "cpu",
    n_queries: int = 1000,
    max_n: int | None = 100,
    batch_size: int = 64,
    seed: int = 0,
    p_init: float = 0.8,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Robust accuracy under the gradient-free Square attack (:func:`robustdx.core.attacks.pgd.square_attack`).

    Why: a cross-check of PGD that gradient masking cannot fool (Andriushchenko et al. 2020). It is
    query-hungry, so it runs on a subsample: with the same ``seed`` its items are the first ``max_n``
    of :func:`robustness_curve`'s, and :func:`gradient_masking_flags` compares the two item by item.
    Batch ``k`` is attacked with seed ``seed + k``.

    Returns:
        A record as in :func:`robustness_curve` (``attack`` = ``square-<n_queries>``) plus ``n_queries``.
    """
    device = torch.device(device)
    items = subsample(len(dataset), max_n, seed)

    def attack(x: Tensor, y: Tensor, k: int) -> Tensor:
        return square_attack(model, x, y, float(eps), n_queries=n_queries, p_init=p_init, seed=seed + k)

    clean, robust = attack_outcomes(model, dataset, items, attack, device, batch_size, seed)
    return {**_accuracy_record(eps, f"square-{n_queries}", items, clean, robust, n_boot, seed), "n_queries": n_queries}


def _paired_pgd_accuracy(pgd: dict[str, Any], other: dict[str, Any]) -> tuple[float, int]:
    """PGD's robust accuracy on ``other``'s items (and how many of them PGD evaluated); PGD's overall
    number when the records carry no per-item outcomes or share no item."""
    if "items" in pgd and "robust_correct" in pgd and "items" in other:
        outcome = dict(zip(pgd["items"], pgd["robust_correct"], strict=True))
        shared = [outcome[i] for i in other["items"] if i in outcome]
        if shared and len(shared) == len(other["items"]):
            return float(np.mean(shared)), len(shared)
    return float(pgd["robust_acc"]), int(pgd.get("n", 0))


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
    flags: list[str] = []
    points = sorted(curve, key=lambda r: float(r["eps"]))
    for prev, cur in zip(points, points[1:], strict=False):
        worst_before = min(float(r["robust_acc"]) for r in points if float(r["eps"]) <= float(prev["eps"]))
        if float(cur["robust_acc"]) > worst_before + tol:
            flags.append(
                f"robust accuracy rises with eps: {float(cur['robust_acc']):.3f} at eps={eps_label(cur['eps'])} "
                f"> {worst_before:.3f} at a smaller eps (a correct attack is monotone in eps; suspect gradient masking)"
            )
    for r in points:
        if "clean_acc" in r and float(r["robust_acc"]) > float(r["clean_acc"]) + tol:
            flags.append(
                f"robust accuracy {float(r['robust_acc']):.3f} exceeds clean accuracy {float(r['clean_acc']):.3f} "
                f"at eps={eps_label(r['eps'])} (the attack is broken)"
            )
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


def evaluate_classifier(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device | str = "cpu",
    eps_grid: Sequence[float] = DEFAULT_EPS_GRID,
    steps: int = 50,
    restarts: int = 2,
    max_n: int | None = 256,
    square_eps: Sequence[float] | None = None,
    square_n: int | None = 100,
    n_queries: int = 1000,
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    tol: float = 0.02,
) -> dict[str, Any]:
    """The full evaluation of a classifier on one data set (items ``(image, label, group, ...)``), as a
    JSON-ready dict (NaN where a metric is undefined, e.g. the AUC of a one-class group).

    Keys: ``clean`` (:func:`classification_metrics` on every item, with ``ci`` from :func:`metric_cis`
    and ``groups`` from :func:`group_metrics`), ``robustness`` (:func:`robustness_curve`), ``square``
    (:func:`square_robust_accuracy` at each of ``square_eps``; default: the largest ε of the grid),
    ``flags`` (:func:`gradient_masking_flags`) and ``suspicious`` (any flag).
    """
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    probs, labels, groups = predict(model, loader, device)
    clean = classification_metrics(probs, labels, groups)
    clean["ci"] = metric_cis(probs, labels, n_boot, seed)
    clean["groups"] = group_metrics(probs, labels, groups)
    curve = robustness_curve(model, dataset, eps_grid, device, steps, restarts, max_n, batch_size, seed, n_boot)
    if square_eps is None:
        square_eps = [max(eps_grid)] if eps_grid and max(eps_grid) > 0 else []
    square = [
        square_robust_accuracy(model, dataset, e, device, n_queries, square_n, batch_size, seed, n_boot=n_boot)
        for e in square_eps
    ]
    flags = gradient_masking_flags(curve, square, tol)
    return {"clean": clean, "robustness": curve, "square": square, "flags": flags, "suspicious": bool(flags)}
