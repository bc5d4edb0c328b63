"""The drift statistics of the live window (pure tensors, no thread) and the gauges they set."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import REGISTRY

from robustdx.core import contracts as names
from robustdx.service.monitoring.drift import DriftReading, measure_drift
from robustdx.service.monitoring.metrics import metrics

pytestmark = pytest.mark.unit


def _data(shift: float) -> tuple[torch.Tensor, torch.Tensor, list[float], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(40, 4, generator=g)
    live = torch.randn(40, 4, generator=g) + shift
    ref_scores = torch.rand(40, generator=g)
    scores = (torch.rand(40, generator=g) * (1 - shift / 4)).tolist()
    return live, ref, scores, ref_scores


def test_a_shifted_window_reads_as_drift() -> None:
    same = measure_drift(*_data(0.0), n_perm=50, seed=0)
    shifted = measure_drift(*_data(2.0), n_perm=50, seed=0)
    assert shifted.mmd > same.mmd and shifted.mmd_p < 0.05 < same.mmd_p
    assert shifted.window == 40 and shifted.ks is not None and shifted.psi is not None and shifted.ks > same.ks  # type: ignore[operator]


def test_without_reference_scores_only_mmd_is_computed() -> None:
    live, ref, scores, _ = _data(0.0)
    reading = measure_drift(live, ref, scores, None, n_perm=10, seed=0)
    assert (reading.ks, reading.ks_p, reading.psi) == (None, None, None)


def test_too_small_a_window_raises() -> None:
    live, ref, scores, ref_scores = _data(0.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        measure_drift(live[:1], ref, scores[:1], ref_scores, n_perm=10, seed=0)


def test_publish_sets_the_gauges_and_leaves_score_gauges_without_scores() -> None:
    m = metrics()
    DriftReading(0.5, 0.01, 12, ks=0.3, ks_p=0.02, psi=0.4).publish(m)
    DriftReading(0.7, 0.2, 13).publish(m)
    value = REGISTRY.get_sample_value
    assert (value(names.DRIFT_MMD), value(names.DRIFT_MMD_P), value(names.DRIFT_WINDOW)) == (0.7, 0.2, 13.0)
    assert (value(names.DRIFT_KS), value(names.DRIFT_KS_P), value(names.DRIFT_PSI)) == (0.3, 0.02, 0.4)
