"""Validation scores that decide between models (core/evaluation/scoring.py): the sweep objective, the
label region per data set, the scoring settings, and the attribution score's known answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from robustdx.core.config import parse_config
from robustdx.core.evaluation.scoring import (
    REPORT_KEYS,
    SCORE_KEYS,
    ScoringSettings,
    attribution_score,
    objective_score,
    region_name,
)
from tests.support.classifiers import tiny_model
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.unit


def test_objective_score() -> None:
    scores = {"clean_acc": 0.9, "robust_acc": 0.5}
    assert objective_score(scores) == pytest.approx(0.7)
    assert objective_score(scores, "robust_mean") == pytest.approx(0.7)
    assert objective_score(scores, "clean") == 0.9
    assert objective_score(scores, "robust") == 0.5


@pytest.mark.parametrize(("dataset", "region"), [("busi", "lesion"), ("camelyon17", "centre"), ("pcam", "centre")])
def test_region_name(dataset: str, region: str, tmp_path: Path) -> None:
    raw = tiny_raw(tmp_path, tmp_path)
    raw["data"]["dataset"] = dataset
    assert region_name(parse_config(raw)) == region


def test_gated_scores_are_reported() -> None:
    assert set(SCORE_KEYS) <= set(REPORT_KEYS)


def test_scoring_settings_defaults_and_bounds() -> None:
    s = ScoringSettings(eps="4/255")
    assert (s.eps, s.n_robust, s.n_attr, s.steps) == (4 / 255, 256, 16, None)
    with pytest.raises(ValidationError, match="8/255"):
        ScoringSettings(eps=8)
    for bad in ({"n_robust": 0}, {"n_attr": -1}, {"steps": 0}, {"typo": 1}):
        with pytest.raises(ValidationError):
            ScoringSettings(eps=0.01, **bad)
    with pytest.raises(ValidationError):
        ScoringSettings()  # the ε is always explicit: gates compare models at the serving ε


def test_attribution_score_skips_images_without_a_region() -> None:
    model = tiny_model(0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert attribution_score(model, x, torch.zeros(2, 16, 16, dtype=torch.bool)) is None
    everywhere = attribution_score(model, x, torch.ones(2, 16, 16, dtype=torch.bool))
    assert everywhere == pytest.approx(1.0)  # all positive mass lies inside a full-image region
