"""Clean evaluation (core/evaluation/metrics.py): calibration and bootstrap known answers, classification
and per-group metrics, predictions, embeddings and nearest-centroid accuracy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robustdx.core.evaluation.metrics import (
    bootstrap_ci,
    calibration_bins,
    centroid_accuracy,
    classification_metrics,
    embeddings,
    expected_calibration_error,
    group_metrics,
    metric_cis,
    predict,
    roc_auc,
)
from tests.support.classifiers import tiny_model

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------
def probs_with(conf: float, n: int, n_correct: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` binary predictions of class 1 with confidence ``conf``, ``n_correct`` of them right."""
    probs = np.tile([1 - conf, conf], (n, 1))
    labels = np.array([1] * n_correct + [0] * (n - n_correct))
    return probs, labels


def test_ece_perfectly_calibrated_is_zero() -> None:
    probs, labels = probs_with(0.8, 100, 80)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("conf", "n_correct", "want"), [(1.0, 50, 0.5), (0.9, 60, 0.3), (0.6, 90, 0.3)])
def test_ece_miscalibrated_known_answers(conf: float, n_correct: int, want: float) -> None:
    probs, labels = probs_with(conf, 100, n_correct)
    assert expected_calibration_error(probs, labels) == pytest.approx(want)


def test_ece_weights_bins_by_count() -> None:
    """Half calibrated at 0.6, half over-confident (0.95 sure, 75 % right): ECE = ½·0 + ½·0.2."""
    p1, l1 = probs_with(0.6, 100, 60)
    p2, l2 = probs_with(0.95, 100, 75)
    assert expected_calibration_error(np.concatenate([p1, p2]), np.concatenate([l1, l2])) == pytest.approx(0.1)


def test_ece_matches_loop_reference() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 3, 500)
    conf, pred = probs.max(1), probs.argmax(1)
    ref = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ref += inside.mean() * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(ref)


def test_calibration_bins_edges_and_validation() -> None:
    probs = np.array([[0.5, 0.5], [0.0, 1.0], [0.3, 0.7]])
    bins = calibration_bins(probs, np.array([0, 1, 0]), n_bins=2)
    assert bins["count"].tolist() == [1, 2]  # 0.5 -> (0, 0.5]; 0.7 and 1.0 -> (0.5, 1]
    assert bins["acc"].tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="n_bins"):
        calibration_bins(probs, np.array([0, 1, 0]), n_bins=0)
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        expected_calibration_error(probs, np.array([0, 1]))


# --------------------------------------------------------------------------------------------
# bootstrap and metrics
# --------------------------------------------------------------------------------------------
def test_bootstrap_ci_contains_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 2000):
        correct = rng.random(n) < 0.7
        low, high = bootstrap_ci(lambda i, c=correct: float(c[i].mean()), n, n_boot=500, seed=1)
        assert low <= correct.mean() <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # width ~ 1/sqrt(n): 40x the items, ~6x narrower
    # normal approximation for n = 2000: 2·1.96·sqrt(0.21/2000) ≈ 0.040
    assert widths[1] == pytest.approx(0.040, rel=0.25)


def test_bootstrap_ci_is_seeded_and_skips_undefined_resamples() -> None:
    values = np.arange(30.0)

    def metric(i: np.ndarray) -> float:
        return float(values[i].mean())

    assert bootstrap_ci(metric, 30, 200, seed=3) == bootstrap_ci(metric, 30, 200, seed=3)
    assert bootstrap_ci(metric, 30, 200, seed=3) != bootstrap_ci(metric, 30, 200, seed=4)
    assert all(math.isnan(v) for v in bootstrap_ci(lambda i: float("nan"), 10, 20))
    with pytest.raises(ValueError, match="n=0"):
        bootstrap_ci(metric, 0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(metric, 10, alpha=1.5)


def test_classification_metrics_keeps_keys_and_adds_calibration_and_groups() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1, 0, 0])
    groups = np.array([0, 0, 1, 1, 2, 2])
    out = classification_metrics(probs, labels, groups)
    assert {"acc", "bal_acc", "loss", "auc", "ece", "group_acc", "group_n", "worst_group_acc", "worst_group"} <= set(out)
    assert out["acc"] == pytest.approx(4 / 6)
    assert out["group_acc"] == {"0": 1.0, "1": 0.5, "2": 0.5}
    assert out["group_n"] == {"0": 2, "1": 2, "2": 2}
    assert out["worst_group_acc"] == 0.5 and out["worst_group"] == "1"
    json.dumps(out)


def test_group_metrics_worst_group() -> None:
    labels = np.array([0, 1] * 30)
    pred = labels.copy()
    groups = np.repeat([0, 1, 2], 20)
    pred[20:26] = 1 - pred[20:26]  # group 1: 14/20 right
    pred[40:42] = 1 - pred[40:42]  # group 2: 18/20 right
    probs = np.eye(2)[pred] * 0.9 + 0.05
    out = group_metrics(probs, labels, groups)
    assert out["worst_group"] == "1"
    assert out["worst_group_acc"] == pytest.approx(0.7)
    assert {g: v["acc"] for g, v in out["groups"].items()} == pytest.approx({"0": 1.0, "1": 0.7, "2": 0.9})
    assert all(v["n"] == 20 for v in out["groups"].values())
    cis = metric_cis(probs, labels, n_boot=200)
    assert cis["acc"][0] <= float((pred == labels).mean()) <= cis["acc"][1]
    with pytest.raises(ValueError, match="groups"):
        group_metrics(probs, labels, groups[:10])


# --------------------------------------------------------------------------------------------
# AUC, predictions, embeddings and centroids
# --------------------------------------------------------------------------------------------
def test_roc_auc_binary_multiclass_and_undefined() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    assert roc_auc(probs, np.array([0, 1, 1, 0])) == 1.0
    assert roc_auc(probs, np.array([1, 0, 0, 1])) == 0.0
    assert math.isnan(roc_auc(probs, np.array([1, 1, 1, 1])))  # one class: undefined
    three = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert roc_auc(three, np.array([0, 1, 2])) == 1.0
    assert math.isnan(roc_auc(three, np.array([0, 1, 1])))  # class 2 absent: one-vs-rest undefined


class _Fixed(nn.Module):
    """Logits are the first two pixels of channel 0; records the mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x[:, 0, 0, :2]


def test_predict_returns_probs_labels_groups_in_eval_mode_and_restores_the_mode() -> None:
    x = torch.zeros(5, 1, 1, 2)
    x[:, 0, 0, 1] = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    y, g = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([3, 3, 4, 4, 4])
    model = _Fixed().train()
    probs, labels, groups = predict(model, DataLoader(TensorDataset(x, y, g), batch_size=2), torch.device("cpu"))
    assert probs.shape == (5, 2) and np.allclose(probs.sum(1), 1)
    assert probs[:, 1].tolist() == pytest.approx(torch.sigmoid(x[:, 0, 0, 1]).tolist())
    assert labels.tolist() == y.tolist() and groups.tolist() == g.tolist()
    assert model.modes == [False] * 3 and model.training


def test_embeddings_take_the_first_max_n_items_and_restore_the_mode() -> None:
    model = tiny_model(0).train()
    x = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ds = TensorDataset(x, torch.arange(10) % 2, torch.zeros(10, dtype=torch.long))
    feats, labels = embeddings(model, ds, torch.device("cpu"), batch_size=4, max_n=7)
    assert model.training
    assert labels.tolist() == (torch.arange(7) % 2).tolist()
    with torch.no_grad():
        want = model.eval().embed(x[:7])
    assert torch.allclose(feats, want, atol=1e-6)


def test_centroid_accuracy_known_answer() -> None:
    train = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    train_labels = torch.tensor([0, 0, 1, 1])
    feats = torch.tensor([[5.0, 0.5], [0.2, 4.0], [3.0, 0.0], [1.0, 1.2]])
    assert centroid_accuracy(train, train_labels, feats, torch.tensor([0, 1, 0, 1])) == 1.0
    assert centroid_accuracy(train, train_labels, feats, torch.tensor([1, 1, 0, 0])) == 0.5
