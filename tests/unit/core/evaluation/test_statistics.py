"""Report statistics (core/evaluation/statistics.py): known answers for the Wilson and Clopper-Pearson
intervals, per-class recall and balanced accuracy, the stratified bootstrap, AUC, the exact sign /
McNemar test, Holm's correction and the chance flag. References: closed forms, SciPy and sklearn."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
from scipy.stats import binom, binomtest, norm
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from robustdx.core.evaluation.metrics import bootstrap_ci
from robustdx.core.evaluation.statistics import (
    IntervalMethod,
    Proportion,
    auc,
    auc_ci,
    balanced_accuracy,
    balanced_accuracy_ci,
    better_than_chance,
    clopper_pearson_interval,
    exact_sign_test,
    holm,
    paired_difference_ci,
    per_class_recall,
    proportion,
    stratified_bootstrap_ci,
    undefined_proportion,
    wilson_interval,
)

pytestmark = pytest.mark.unit

Z95 = float(norm.ppf(0.975))


# --------------------------------------------------------------------------------------- proportions


@pytest.mark.parametrize(("k", "expected"), [(0, (0.0, 0.2775)), (5, (0.2366, 0.7634)), (10, (0.7225, 1.0))])
def test_wilson_known_answers(k: int, expected: tuple[float, float]) -> None:
    assert wilson_interval(k, 10) == pytest.approx(expected, abs=5e-5)


def test_wilson_closed_form_at_zero_and_n() -> None:
    # k = 0: [0, z^2 / (n + z^2)]; k = n mirrors it: [n / (n + z^2), 1]
    n = 37
    assert wilson_interval(0, n) == pytest.approx((0.0, Z95**2 / (n + Z95**2)), abs=1e-12)
    assert wilson_interval(n, n) == pytest.approx((n / (n + Z95**2), 1.0), abs=1e-12)


@pytest.mark.parametrize(("k", "expected"), [(0, (0.0, 0.3085)), (5, (0.1871, 0.8129)), (10, (0.6915, 1.0))])
def test_clopper_pearson_known_answers(k: int, expected: tuple[float, float]) -> None:
    assert clopper_pearson_interval(k, 10) == pytest.approx(expected, abs=5e-5)


def test_clopper_pearson_closed_form_at_zero() -> None:
    # k = 0: the upper end solves (1 - p)^n = alpha / 2
    n = 23
    assert clopper_pearson_interval(0, n, 0.9) == pytest.approx((0.0, 1 - 0.05 ** (1 / n)), abs=1e-12)


@pytest.mark.parametrize(("fn", "scipy_method"), [(wilson_interval, "wilson"), (clopper_pearson_interval, "exact")])
@pytest.mark.parametrize(("k", "n", "confidence"), [(0, 1, 0.95), (3, 7, 0.95), (17, 40, 0.9), (99, 100, 0.99)])
def test_intervals_agree_with_scipy(fn, scipy_method: str, k: int, n: int, confidence: float) -> None:
    ref = binomtest(k, n).proportion_ci(confidence, scipy_method)
    assert fn(k, n, confidence) == pytest.approx((ref.low, ref.high), abs=1e-10)


@pytest.mark.parametrize("fn", [wilson_interval, clopper_pearson_interval])
@pytest.mark.parametrize(
    ("k", "n", "confidence", "match"),
    [
        (0, 0, 0.95, "at least one item"),
        (11, 10, 0.95, "k must lie"),
        (-1, 10, 0.95, "k must lie"),
        (1.5, 10, 0.95, "whole counts"),
        (1, 10, 1.0, "confidence"),
    ],
)
def test_intervals_reject_bad_input(fn, k, n, confidence, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(k, n, confidence)


def test_wilson_does_not_collapse_where_the_percentile_bootstrap_does() -> None:
    # 0 of 20 correct: every bootstrap resample is 0/20, so the percentile interval is [0, 0]
    zeros = np.zeros(20)
    assert stratified_bootstrap_ci(lambda i: float(zeros[i].mean()), zeros, n_boot=200) == (0.0, 0.0)
    assert wilson_interval(0, 20)[1] > 0.15


def test_proportion_builds_value_interval_and_json() -> None:
    p = proportion(5, 10, method="clopper_pearson")
    assert (p.k, p.n, p.value, p.method, p.confidence, p.reason) == (5, 10, 0.5, "clopper_pearson", 0.95, None)
    assert (p.lo, p.hi) == clopper_pearson_interval(5, 10)
    assert p.defined
    assert json.loads(json.dumps(p.to_json())) == dataclasses.asdict(p)
    assert proportion(3, 4).method == IntervalMethod.WILSON
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.k = 6  # type: ignore[misc]


def test_proportion_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="n=0"):
        proportion(0, 0)
    with pytest.raises(ValueError, match="Did you mean 'wilson'"):
        proportion(1, 2, method="wilsn")


def test_undefined_proportion_has_no_value_and_a_reason() -> None:
    p = undefined_proportion("no item of class 2")
    assert (p.n, p.value, p.lo, p.hi, p.reason, p.defined) == (0, None, None, None, "no item of class 2", False)
    assert json.loads(json.dumps(p.to_json()))["value"] is None


# ------------------------------------------------------------------------------------ class metrics

LABELS = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 1, 1, 0, 2])


def test_per_class_recall_hand_computed() -> None:
    recalls = per_class_recall(PRED, LABELS, 3)
    assert all(isinstance(r, Proportion) for r in recalls)
    assert [(r.k, r.n) for r in recalls] == [(2, 3), (1, 2), (1, 1)]
    assert [r.value for r in recalls] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert [(r.lo, r.hi) for r in recalls] == [wilson_interval(2, 3), wilson_interval(1, 2), wilson_interval(1, 1)]


def test_per_class_recall_marks_an_absent_class_undefined() -> None:
    recalls = per_class_recall(PRED, LABELS, 4)
    assert [r.defined for r in recalls] == [True, True, True, False]
    assert recalls[3].value is None and "class 3" in (recalls[3].reason or "")


def test_balanced_accuracy_hand_computed() -> None:
    assert balanced_accuracy(PRED, LABELS, 3) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, 60, p=[0.55, 0.3, 0.15, 0.0])  # class 3 absent from labels, present in pred
    pred = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 4, 60))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that pred holds a class labels lack
        ref = balanced_accuracy_score(labels, pred)
    assert balanced_accuracy(pred, labels, 4) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(
    ("pred", "labels", "match"),
    [
        (np.ones((4, 2)), np.zeros(4, int), "class indices"),
        (np.array([0, 3]), np.array([0, 1]), r"\[0, 3\)"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "integer"),
        (np.array([0]), np.array([0, 1]), "one length"),
    ],
)
def test_class_metrics_reject_bad_input(pred, labels, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        balanced_accuracy(pred, labels, 3)


def test_auc_hand_computed_and_with_ties() -> None:
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75  # sklearn's docs example
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5  # a tie counts one half


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(80) < 0.3).astype(int)
    scores = np.round(rng.random(80) * 0.6 + 0.4 * labels, 1)  # rounded: many ties
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize(
    ("labels", "match"), [(np.array([1, 1, 1]), "both classes"), (np.array([0, 2, 1]), "0/1"), (np.array([0, 1]), "1-D")]
)
def test_auc_rejects_bad_labels(labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        auc(np.array([0.2, 0.5, 0.9]), labels)


# ---------------------------------------------------------------------------------------- bootstrap


def test_stratified_bootstrap_keeps_every_class_count() -> None:
    labels = np.array([0] * 50 + [1] * 3 + [2] * 7)  # imbalanced, like BUSI
    seen: list[np.ndarray] = []

    def record(i: np.ndarray) -> float:
        seen.append(np.bincount(labels[i], minlength=3))
        return 0.0

    stratified_bootstrap_ci(record, labels, n_boot=300, seed=1)
    assert len(seen) == 300
    assert all(c.tolist() == [50, 3, 7] for c in seen)


def test_one_stratum_is_the_ordinary_bootstrap_of_metrics() -> None:
    # one stratum draws rng.integers(0, n, n) like metrics.bootstrap_ci, so the same seed gives the same interval
    x = np.random.default_rng(3).random(45)
    mine = stratified_bootstrap_ci(lambda i: float(x[i].mean()), np.zeros(45), n_boot=500, seed=7, confidence=0.9)
    ref = bootstrap_ci(lambda i: float(x[i].mean()), 45, n_boot=500, seed=7, alpha=0.1)
    assert mine == pytest.approx(ref, abs=1e-15)


def test_bootstrap_of_a_proportion_matches_binomial_quantiles() -> None:
    # resampled mean of 30 ones among 100 is Binomial(100, 0.3) / 100: its 2.5 / 97.5 % points are 0.21 / 0.39
    x = np.array([1.0] * 30 + [0.0] * 70)
    lo, hi = stratified_bootstrap_ci(lambda i: float(x[i].mean()), np.zeros(100), n_boot=20000, seed=0)
    ref = binom.ppf([0.025, 0.975], 100, 0.3) / 100
    assert (lo, hi) == pytest.approx(tuple(ref), abs=0.0101)


def test_bootstrap_rejects_bad_arguments_and_drops_nan() -> None:
    labels = np.zeros(5)
    with pytest.raises(ValueError, match="n_boot"):
        stratified_bootstrap_ci(lambda i: 0.0, labels, n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        stratified_bootstrap_ci(lambda i: 0.0, labels, confidence=95)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        stratified_bootstrap_ci(lambda i: 0.0, np.zeros((2, 2)))
    lo, hi = stratified_bootstrap_ci(lambda i: float("nan"), labels, n_boot=10)
    assert math.isnan(lo) and math.isnan(hi)


def _noisy(seed: int, n: int = 90) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imbalanced binary labels, positive-class scores and the predictions they imply."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.25).astype(int)
    scores = np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.2, n), 0, 1)
    return labels, scores, (scores > 0.5).astype(int)


def test_perfect_predictor_gives_one_one() -> None:
    labels, _, _ = _noisy(0)
    assert balanced_accuracy_ci(labels, labels, 2, n_boot=200) == (1.0, 1.0)
    assert auc_ci(labels + 0.1, labels, n_boot=200) == (1.0, 1.0)


def test_intervals_are_seeded_and_contain_the_estimate() -> None:
    labels, scores, pred = _noisy(1)
    ba = balanced_accuracy_ci(pred, labels, 2, n_boot=500, seed=4)
    assert ba == balanced_accuracy_ci(pred.copy(), labels.copy(), 2, n_boot=500, seed=4)
    assert ba != balanced_accuracy_ci(pred, labels, 2, n_boot=500, seed=5)
    assert ba[0] <= balanced_accuracy(pred, labels, 2) <= ba[1] and ba[0] < ba[1]
    a = auc_ci(scores, labels, n_boot=500, seed=4)
    assert a == auc_ci(scores, labels, n_boot=500, seed=4)
    assert a[0] <= auc(scores, labels) <= a[1] and a[0] < a[1]


def test_wider_confidence_gives_a_wider_interval() -> None:
    labels, _, pred = _noisy(2)
    lo90, hi90 = balanced_accuracy_ci(pred, labels, 2, n_boot=500, confidence=0.9)
    lo99, hi99 = balanced_accuracy_ci(pred, labels, 2, n_boot=500, confidence=0.99)
    assert lo99 < lo90 and hi90 < hi99


# ------------------------------------------------------------------------------------- paired tests


def test_exact_mcnemar_known_answer() -> None:
    # b = 10 items robust only under A, c = 2 robust only under B, 8 concordant: p = 2 * (1 + 12 + 66) / 2^12
    a = np.array([1] * 10 + [0] * 2 + [1] * 5 + [0] * 3)
    b = np.array([0] * 10 + [1] * 2 + [1] * 5 + [0] * 3)
    out = exact_sign_test(a, b, n_boot=300)
    assert (out["n"], out["a_better"], out["b_better"], out["ties"]) == (20, 10, 2, 8)
    assert out["p_value"] == pytest.approx(158 / 4096, abs=1e-12)
    assert exact_sign_test(b, a, n_boot=10)["p_value"] == pytest.approx(out["p_value"], abs=1e-12)
    assert out["difference"] == pytest.approx(0.4)
    lo, hi = out["difference_ci"]
    assert lo <= 0.4 <= hi
    json.dumps(out)


def test_sign_test_on_counts_and_without_discordant_items() -> None:
    # seeds (of 3) in which each item is robust: all 6 discordant items favour A -> p = 2 / 2^6
    a, b = [3, 2, 3, 1, 2, 3, 0, 1], [1, 0, 2, 0, 1, 2, 0, 1]
    out = exact_sign_test(a, b, n_boot=100)
    assert (out["a_better"], out["b_better"], out["ties"]) == (6, 0, 2)
    assert out["p_value"] == pytest.approx(1 / 32, abs=1e-12)
    same = exact_sign_test([1, 0, 1], [1, 0, 1], n_boot=100)
    assert (same["p_value"], same["difference"], same["difference_ci"]) == (1.0, 0.0, [0.0, 0.0])


def test_paired_difference_ci_of_a_constant_shift_is_that_shift() -> None:
    b = np.random.default_rng(0).random(30)
    assert paired_difference_ci(b + 0.25, b, n_boot=200) == pytest.approx((0.25, 0.25), abs=1e-12)


def test_paired_inputs_must_match() -> None:
    with pytest.raises(ValueError, match="same items"):
        exact_sign_test([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="same items"):
        paired_difference_ci([], [])


# ----------------------------------------------------------------------------- multiple comparisons


@pytest.mark.parametrize(
    ("p", "adjusted", "rejected"),
    [
        ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06], [True, False, False]),
        ([0.01, 0.02, 0.04], [0.03, 0.04, 0.04], [True, True, True]),
        ([0.6, 0.5], [1.0, 1.0], [False, False]),  # capped at 1
        ([0.02, 0.02], [0.04, 0.04], [True, True]),  # ties
        ([0.025, 0.05], [0.05, 0.05], [True, True]),  # adjusted p equal to alpha is rejected
        ([0.04], [0.04], [True]),
        ([], [], []),
    ],
)
def test_holm_known_answers(p: list[float], adjusted: list[float], rejected: list[bool]) -> None:
    adj, rej = holm(p)
    assert adj == pytest.approx(adjusted, abs=1e-12)
    assert rej == rejected


def _step_down(p: list[float], alpha: float) -> list[bool]:
    """Holm's rule as he stated it: reject in ascending order while p_(i) <= alpha / (m - i + 1)."""
    reject = [False] * len(p)
    for i, j in enumerate(sorted(range(len(p)), key=lambda j: p[j])):
        if p[j] > alpha / (len(p) - i):
            break
        reject[j] = True
    return reject


@pytest.mark.parametrize("seed", range(10))
def test_holm_matches_the_step_down_rule_and_is_monotone(seed: int) -> None:
    p = (np.random.default_rng(seed).random(8) ** 3).tolist()
    adj, rej = holm(p, alpha=0.1)
    assert rej == _step_down(p, 0.1)
    order = np.argsort(p)
    assert np.all(np.diff(np.asarray(adj)[order]) >= 0) and max(adj) <= 1
    assert all(a >= q for a, q in zip(adj, p, strict=True))


def test_holm_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="p_values"):
        holm([0.1, 1.2])
    with pytest.raises(ValueError, match="alpha"):
        holm([0.1], alpha=5)


def test_better_than_chance() -> None:
    assert better_than_chance(0.51)
    assert not better_than_chance(0.5)  # strictly above
    assert not better_than_chance(float("nan"))
    assert better_than_chance(0.34, chance=1 / 3) and not better_than_chance(0.34, chance=0.5)
    with pytest.raises(ValueError, match="chance"):
        better_than_chance(0.6, chance=0)


def test_t_interval_of_a_few_seeds() -> None:
    from robustdx.core.evaluation.statistics import t_interval

    lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027: half-width 4.3027 / sqrt(3)
    assert (lo, hi) == pytest.approx((2 - 2.48418, 2 + 2.48418), abs=1e-4)
    assert t_interval([0.5, 0.5]) == (0.5, 0.5)
    assert t_interval([0.0, 1.0], confidence=0.5)[1] < t_interval([0.0, 1.0])[1]
    with pytest.raises(ValueError, match="at least two replicates"):
        t_interval([0.3])
