"""Clean and robust results per class and per group, each with its 95% Wilson interval.

Why: an overall robust accuracy hides a model that is robust only on the majority class (a constant
predictor is perfectly "robust"); the model card and the reviewers of a medical classifier need the
recall of every class and the accuracy in every hospital or subtype, with intervals that show how
little a handful of test images can say.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from robustdx.core.evaluation.statistics import wilson_interval


def _share(correct: np.ndarray) -> dict[str, Any]:
    """``{"n", "value", "ci"}`` of a boolean array (value and ci are None when it is empty)."""
    n, k = int(correct.size), int(correct.sum())
    if n == 0:
        return {"n": 0, "value": None, "ci": None}
    return {"n": n, "value": k / n, "ci": list(wilson_interval(k, n))}


def breakdown(
    pred: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    robust_items: Sequence[int] = (),
    robust_correct: Sequence[bool] = (),
    n_classes: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Per-class recall and per-group accuracy, clean (every test item) and robust (the attacked items).

    Args:
        pred, labels, groups: ``[N]`` predictions, labels and group ids of the whole test split.
        robust_items: indices into the test split that were attacked; ``robust_correct`` whether each
            stayed correct under the attack (the records of :func:`robustdx.core.evaluation.robustness.robust_accuracy`).
        n_classes: classes to report (default: ``max(labels) + 1``), so an absent class shows as ``n = 0``.

    Returns:
        ``{"classes": [{"class", "clean", "robust"}], "groups": [{"group", "clean", "robust"}]}`` with
        ``clean`` and ``robust`` as ``{"n", "value", "ci"}``.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    items = np.asarray(robust_items, dtype=int)
    ok = np.asarray(robust_correct, dtype=bool)
    if items.size != ok.size:
        raise ValueError(f"{items.size} attacked items but {ok.size} outcomes")
    correct = pred == labels
    k = n_classes if n_classes is not None else int(labels.max(initial=-1)) + 1
    out: dict[str, list[dict[str, Any]]] = {"classes": [], "groups": []}
    for c in range(k):
        out["classes"].append({"class": c, "clean": _share(correct[labels == c]), "robust": _share(ok[labels[items] == c])})
    if groups is not None:
        groups = np.asarray(groups)
        for g in np.unique(groups):
            out["groups"].append(
                {"group": str(int(g)), "clean": _share(correct[groups == g]), "robust": _share(ok[groups[items] == g])}
            )
    return out
