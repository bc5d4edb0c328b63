"""Statistics for the science report: intervals on proportions, stratified-bootstrap intervals on
balanced accuracy and AUC, paired tests between regimes, multiple-comparison correction, and the
"better than chance" flag.

Why: the paper reports single numbers without intervals and compares regimes without tests
(SCIENCE.md, weakness 5). Here

* a proportion (accuracy, robust accuracy, a class's recall) gets a Wilson score interval (Wilson 1927)
  or the exact Clopper-Pearson interval (Clopper & Pearson 1934). Unlike a percentile bootstrap, which
  collapses to ``[0, 0]`` when no item is correct, both stay honest at 0/n and n/n (Brown, Cai &
  DasGupta 2001 recommend Wilson for small n);
* balanced accuracy and ROC-AUC get a percentile bootstrap (Efron & Tibshirani 1993, ch. 13) that
  resamples *within each class*, so every resample holds every class in its original count: the
  statistic stays defined on imbalanced sets such as BUSI, and the class mix is held fixed as in the
  test set;
* two regimes scored on the SAME items are compared with the exact sign test (Dixon & Mood 1946),
  which on 0/1 scores is the exact McNemar test (McNemar 1947), plus a paired-bootstrap interval on
  the mean difference;
* a family of p-values is corrected with Holm's step-down procedure (Holm 1979), which controls the
  family-wise error rate with no assumption on their dependence.

Every resampling uses a private NumPy generator seeded by the caller: an interval depends on its seed
only, and the global random state is not moved. NumPy and SciPy only.

>>> [round(v, 4) for v in wilson_interval(5, 10)]
[0.2366, 0.7634]
>>> holm([0.01, 0.04, 0.03])
([0.03, 0.06, 0.06], [True, False, False])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from scipy.stats import beta, binomtest, norm, rankdata
from scipy.stats import t as student_t

from robustdx.core.registry import parse_option


class IntervalMethod(StrEnum):
    """Confidence interval of a binomial proportion (see :func:`proportion`)."""

    WILSON = "wilson"
    CLOPPER_PEARSON = "clopper_pearson"


# --------------------------------------------------------------------------------------- proportions


def _check_counts(k: int, n: int) -> None:
    """``0 <= k <= n`` integers with ``n >= 1``; the error says which value is wrong."""
    if int(n) != n or int(k) != k:
        raise ValueError(f"k and n must be whole counts, got k={k!r}, n={n!r}")
    if n < 1:
        raise ValueError(f"a proportion needs at least one item, got n={n!r}; report the metric as undefined instead")
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n={n}], got k={k!r}")


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95, got {confidence!r}")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) of the proportion ``k / n``.

    The interval inverts the score test, so it is never empty and not degenerate at ``k = 0`` or
    ``k = n``: 0/10 gives about ``[0, 0.2775]``, 10/10 about ``[0.7225, 1]``.

    Raises:
        ValueError: ``n < 1``, ``k`` outside ``[0, n]`` or ``confidence`` outside ``(0, 1)``.
    """
    _check_counts(k, n)
    _check_confidence(confidence)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def clopper_pearson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (conservative) Clopper-Pearson interval of ``k / n`` from Beta quantiles; 0/10 gives
    about ``[0, 0.3085]``, 5/10 about ``[0.1871, 0.8129]``.

    Raises:
        ValueError: as :func:`wilson_interval`.
    """
    _check_counts(k, n)
    _check_confidence(confidence)
    alpha = 1 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


_INTERVALS: dict[IntervalMethod, Callable[[int, int, float], tuple[float, float]]] = {
    IntervalMethod.WILSON: wilson_interval,
    IntervalMethod.CLOPPER_PEARSON: clopper_pearson_interval,
}


@dataclass(frozen=True)
class Proportion:
    """A proportion ``k / n`` with its confidence interval.

    ``value``, ``lo`` and ``hi`` are ``None`` only when the proportion is undefined (``n = 0``, e.g.
    the recall of a class absent from the test set); ``reason`` then says why.
    """

    k: int  # items counted (e.g. correct, robust)
    n: int  # items in all
    value: float | None  # k / n
    lo: float | None  # lower end of the interval
    hi: float | None  # upper end of the interval
    method: str  # an IntervalMethod value
    confidence: float = 0.95  # coverage of [lo, hi]
    reason: str | None = None  # why the proportion is undefined, when it is

    @property
    def defined(self) -> bool:
        """Whether there was at least one item."""
        return self.n > 0

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (undefined values are ``None``)."""
        return asdict(self)


def proportion(k: int, n: int, method: IntervalMethod | str = IntervalMethod.WILSON, confidence: float = 0.95) -> Proportion:
    """``k / n`` with a ``method`` interval (``wilson`` or ``clopper_pearson``).

    >>> round(proportion(0, 10).hi, 4)
    0.2775

    Raises:
        ValueError: ``n = 0`` (nothing to estimate; use :func:`undefined_proportion`), ``k`` outside
            ``[0, n]``, or an unknown ``method``.
    """
    how = parse_option(IntervalMethod, method, "interval method")
    lo, hi = _INTERVALS[how](k, n, confidence)
    return Proportion(int(k), int(n), k / n, lo, hi, how.value, confidence)


def undefined_proportion(
    reason: str, method: IntervalMethod | str = IntervalMethod.WILSON, confidence: float = 0.95
) -> Proportion:
    """A proportion with no item (``0 / 0``): no value, no interval, and the ``reason``."""
    how = parse_option(IntervalMethod, method, "interval method")
    return Proportion(0, 0, None, None, None, how.value, confidence, reason)


# ------------------------------------------------------------------------------------ class metrics


def _check_predictions(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``labels`` as 1-D integer arrays of one length with values in ``[0, n_classes)``."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.ndim != 1 or pred.shape != labels.shape or pred.size == 0:
        raise ValueError(
            f"pred and labels must be non-empty 1-D arrays of one length, got shapes {pred.shape} and "
            f"{labels.shape}; pass class indices (e.g. probs.argmax(1)), not probabilities"
        )
    for name, arr in (("pred", pred), ("labels", labels)):
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= n_classes:
            raise ValueError(f"{name} must be integer class indices in [0, {n_classes}), got values {np.unique(arr)}")
    return pred, labels


def _class_counts(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: items predicted correctly and items in all."""
    correct = np.bincount(labels[pred == labels], minlength=n_classes)
    return correct, np.bincount(labels, minlength=n_classes)


def per_class_recall(pred: np.ndarray, labels: np.ndarray, n_classes: int, confidence: float = 0.95) -> list[Proportion]:
    """Recall (sensitivity) of each class ``0 .. n_classes - 1`` with its Wilson interval.

    A class with no item in ``labels`` gets an undefined :class:`Proportion` (``n = 0``, values ``None``)
    whose ``reason`` names the class, instead of an error.
    """
    pred, labels = _check_predictions(pred, labels, n_classes)
    correct, total = _class_counts(pred, labels, n_classes)
    return [
        proportion(int(k), int(n), confidence=confidence)
        if n
        else undefined_proportion(f"no item of class {c} in labels", confidence=confidence)
        for c, (k, n) in enumerate(zip(correct, total, strict=True))
    ]


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``labels`` (``sklearn.metrics.balanced_accuracy_score``),
    by counting, fast enough for bootstrap loops. Chance level is ``1 / n_classes``."""
    pred, labels = _check_predictions(pred, labels, n_classes)
    correct, total = _class_counts(pred, labels, n_classes)
    present = total > 0
    return float(np.mean(correct[present] / total[present]))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Binary ROC-AUC of the positive-class ``scores`` (``sklearn.metrics.roc_auc_score``), from the
    Mann-Whitney rank sum (ties count one half), ~20x faster than sklearn inside a bootstrap.

    Raises:
        ValueError: ``labels`` not 0/1, one class missing, or shapes that differ.
    """
    scores, labels = _check_binary(scores, labels)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _check_binary(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must be 1-D of one length, got shapes {scores.shape} and {labels.shape}; "
            "pass the positive-class score, e.g. probs[:, 1]"
        )
    if not np.isin(labels, (0, 1)).all() or np.unique(labels).size != 2:
        raise ValueError(f"AUC needs 0/1 labels with both classes present, got label values {np.unique(labels)}")
    return scores, labels


# ---------------------------------------------------------------------------------------- bootstrap


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Central percentile interval of the finite ``values``; ``(nan, nan)`` when none is finite."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def stratified_bootstrap_ci(
    stat: Callable[[np.ndarray], float],
    labels: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``stat``, resampling item indices with replacement *within
    each class* of ``labels``, so every resample holds every class in its original count.

    Args:
        stat: maps an index array (into the items, classes concatenated) to a number, e.g.
            ``lambda i: balanced_accuracy(pred[i], labels[i], 3)``. Non-finite values are left out.
        labels: the stratum of each item (one stratum = the ordinary bootstrap).
        n_boot: number of resamples.
        seed: seed of a private NumPy generator.
        confidence: 0.95 gives the 2.5 and 97.5 percentiles.

    Returns:
        ``(lo, hi)``; ``(nan, nan)`` when no resample gives a finite value.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array (one stratum per item), got shape {labels.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1 (2000 is usual), got {n_boot!r}")
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    values = np.array([stat(_resample(rng, strata)) for _ in range(n_boot)], dtype=float)
    return _percentile_interval(values, confidence)


def _resample(rng: np.random.Generator, strata: list[np.ndarray]) -> np.ndarray:
    """One stratified resample: each stratum's indices drawn with replacement, its size kept."""
    return np.concatenate([s[rng.integers(0, s.size, s.size)] for s in strata])


def balanced_accuracy_ci(
    pred: np.ndarray, labels: np.ndarray, n_classes: int, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Stratified-bootstrap interval (:func:`stratified_bootstrap_ci`) of :func:`balanced_accuracy`."""
    pred, labels = _check_predictions(pred, labels, n_classes)
    return stratified_bootstrap_ci(lambda i: balanced_accuracy(pred[i], labels[i], n_classes), labels, n_boot, seed, confidence)


def auc_ci(
    scores: np.ndarray, labels: np.ndarray, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Stratified-bootstrap interval (:func:`stratified_bootstrap_ci`) of the binary :func:`auc`."""
    scores, labels = _check_binary(scores, labels)
    return stratified_bootstrap_ci(lambda i: auc(scores[i], labels[i]), labels, n_boot, seed, confidence)


# ------------------------------------------------------------------------------------- paired tests


def _check_paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"paired scores must be non-empty 1-D arrays of one length (one score per item, the same "
            f"items in the same order), got shapes {a.shape} and {b.shape}"
        )
    return a, b


def paired_difference_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Paired-bootstrap interval of ``mean(a) - mean(b)``: items are resampled together, so the
    per-item correlation between the two regimes is kept. Identical scores give ``(0, 0)``."""
    a, b = _check_paired(a, b)
    diff = a - b
    return stratified_bootstrap_ci(lambda i: float(diff[i].mean()), np.zeros(diff.size), n_boot, seed, confidence)


def exact_sign_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Two-sided exact sign test of paired per-item scores of regimes A and B on the same items.

    Ties are dropped; under H0 each discordant item favours A with probability 1/2, so the p-value is
    ``binomtest(a_better, a_better + b_better, 0.5)`` (1 when nothing is discordant). With 0/1 scores
    (e.g. robust or not) this is the exact McNemar test.

    Returns:
        ``n``, ``a_better``, ``b_better``, ``ties``, ``p_value``, ``mean_a``, ``mean_b``, the effect
        ``difference = mean_a - mean_b`` and its :func:`paired_difference_ci` as ``difference_ci``
        ``[lo, hi]``.
    """
    a, b = _check_paired(a, b)
    a_better, b_better = int((a > b).sum()), int((b > a).sum())
    discordant = a_better + b_better
    p = 1.0 if discordant == 0 else float(binomtest(a_better, discordant, 0.5).pvalue)
    return {
        "n": int(a.size),
        "a_better": a_better,
        "b_better": b_better,
        "ties": int(a.size - discordant),
        "p_value": p,
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "difference": float(a.mean() - b.mean()),
        "difference_ci": list(paired_difference_ci(a, b, n_boot, seed, confidence)),
    }


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of a few replicates (e.g. one difference per training seed).

    Why t and not a bootstrap: with 2-5 replicates a bootstrap has almost nothing to resample and is far too
    narrow; the t interval is honest about how little a handful of seeds says (with 3 it is the mean
    ± 2.48 standard deviations). Identical values give a zero-width interval.

    Raises:
        ValueError: fewer than two values.
    """
    _check_confidence(confidence)
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"a t interval needs at least two replicates, got {v.size}")
    half = float(student_t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return float(v.mean() - half), float(v.mean() + half)


# ----------------------------------------------------------------------------- multiple comparisons


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[list[float], list[bool]]:
    """Holm-Bonferroni step-down correction (Holm 1979) of a family of p-values.

    The i-th smallest of ``m`` p-values is multiplied by ``m - i + 1``; the adjusted values are made
    non-decreasing in that order and capped at 1. A hypothesis is rejected when its adjusted p-value is
    ``<= alpha``, which is the step-down rule (stop at the first ``p_(i) > alpha / (m - i + 1)``).

    Returns:
        ``(adjusted, rejected)``, both in the input order.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"p_values must be a flat list of numbers in [0, 1], got {p_values!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), e.g. 0.05, got {alpha!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return [float(v) for v in adjusted], [bool(v <= alpha) for v in adjusted]


def better_than_chance(lo: float, chance: float = 0.5) -> bool:
    """Whether the lower end ``lo`` of a balanced-accuracy interval lies above ``chance`` (``1 /
    n_classes``). An undefined ``lo`` (NaN) is not better than chance."""
    if not 0 < chance < 1:
        raise ValueError(f"chance must lie in (0, 1), e.g. 1 / n_classes, got {chance!r}")
    return bool(lo > chance)
