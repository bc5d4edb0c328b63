"""Per-class / per-group breakdown (known answers) and the model card rendered from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robustdx.core.config import parse_config
from robustdx.core.evaluation.breakdown import breakdown
from robustdx.core.evaluation.model_card import render_model_card
from robustdx.core.evaluation.statistics import wilson_interval
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.unit


def test_breakdown_counts_each_class_and_group_and_its_attacked_items() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 0])
    groups = np.array([0, 0, 1, 1, 1, 1])
    d = breakdown(pred, labels, groups, robust_items=[0, 1, 4], robust_correct=[True, False, False], n_classes=3)
    c0, c1, c2 = d["classes"]
    assert c0["clean"]["n"] == 4 and c0["clean"]["value"] == 0.75 and c0["clean"]["ci"] == pytest.approx(wilson_interval(3, 4))
    assert c0["robust"]["n"] == 2 and c0["robust"]["value"] == 0.5
    assert c1["clean"]["value"] == 0.5 and c1["robust"] == {"n": 1, "value": 0.0, "ci": list(wilson_interval(0, 1))}
    assert c2["clean"] == {"n": 0, "value": None, "ci": None}  # an absent class is shown, not dropped
    g0, g1 = d["groups"]
    assert (g0["group"], g0["clean"]["value"], g0["robust"]["n"]) == ("0", 1.0, 2)
    assert (g1["clean"]["value"], g1["robust"]["value"]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="outcomes"):
        breakdown(pred, labels, groups, robust_items=[0, 1], robust_correct=[True])


def _metrics(with_breakdown: bool) -> dict:
    labels = np.array([0] * 30 + [1] * 10)
    pred = labels.copy()
    pred[30:38] = 0  # the minority class is mostly missed
    groups = np.arange(40) % 2
    m = {
        "test": {"acc": 0.8, "bal_acc": 0.6, "auc": 0.7, "ece": 0.05, "worst_group": "1", "worst_group_acc": 0.75},
        "val": {"acc": 0.8},
        "robust": {
            "eps": 4 / 255,
            "eps_label": "4/255",
            "attack": "pgd-20x1",
            "n": 40,
            "clean_acc": 0.8,
            "robust_acc": 0.7,
            "ci": [0.55, 0.83],
        },  # fmt: skip
        "stages": [{"regime": "adv_supcon", "best_epoch": 2}, {"regime": "finetune", "best_epoch": 1}],
    }
    if with_breakdown:
        m["breakdown"] = breakdown(pred, labels, groups, list(range(40)), list(pred == labels), n_classes=2)
    return m


CARD = {"classes": ["normal", "tumor"], "groups": ["hospital_0", "hospital_1"],
        "splits": {"test": {"n": 40, "per_class": [30, 10], "per_group": {"0": 20, "1": 20}}}}  # fmt: skip


def test_the_card_copies_the_numbers_and_names_the_weak_class(tmp_path: Path) -> None:
    cfg = parse_config(tiny_raw(tmp_path / "data" / "synthetic", tmp_path / "runs", recipe="adv_supcon_ft"))
    text = render_model_card(cfg, _metrics(True), CARD, "0123456789ab")
    assert text.startswith("# Model card: robustdx `adv_supcon_ft`") and "`0123456789ab`" in text
    for section in ("## Intended use", "## Do not use", "## Training data", "## Training", "## Results", "## Known limitations"):
        assert section in text, section
    lo, hi = wilson_interval(2, 10)
    assert f"| tumor | 20.0% [{100 * lo:.1f}, {100 * hi:.1f}] (n=10) |" in text
    assert "| hospital_1 |" in text and "| test | 40 | normal 30, tumor 10 | hospital_0 20, hospital_1 20 |" in text
    assert "class `tumor` keeps only 20% recall" in text  # the weak class is named, not averaged away
    assert "ε = 4/255" in text and "70.0% [55.0, 83.0] on 40 test images" in text
    assert "Adversarial training: PGD" in text and "**synthetic**" in text


def test_a_bundle_without_a_breakdown_says_so_instead_of_inventing_one(tmp_path: Path) -> None:
    cfg = parse_config(tiny_raw(tmp_path, tmp_path / "runs", recipe="ce"))
    text = render_model_card(cfg, _metrics(False), CARD, "0123456789ab")
    assert "were not recorded by this bundle" in text and "| class |" not in text
    assert "No adversarial training" in text
