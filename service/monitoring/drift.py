"""Drift of the live stream: the sliding window of live samples against the bundle's reference.

Why separate from the monitor thread: this is the statistics (pure torch / NumPy, testable on tiny
tensors), the thread only decides when to run it. MMD with a permutation p-value between the live
embeddings and the reference embeddings, plus KS and PSI of the positive-class score against the
reference scores (:mod:`robustdx.core.drift`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from robustdx.service.monitoring.metrics import Metrics


@dataclass(frozen=True)
class DriftReading:
    """One drift computation; the score statistics are None when the bundle has no reference scores."""

    mmd: float
    mmd_p: float
    window: int
    ks: float | None = None
    ks_p: float | None = None
    psi: float | None = None

    def publish(self, m: Metrics) -> None:
        """Set the drift gauges (the score gauges only when the scores were compared)."""
        m.drift_mmd.set(self.mmd)
        m.drift_mmd_p.set(self.mmd_p)
        m.drift_window.set(self.window)
        if self.ks is not None and self.ks_p is not None and self.psi is not None:
            m.drift_ks.set(self.ks)
            m.drift_ks_p.set(self.ks_p)
            m.drift_psi.set(self.psi)


def measure_drift(
    live: Tensor, ref: Tensor, scores: list[float], ref_scores: Tensor | None, n_perm: int, seed: int
) -> DriftReading:
    """Compare the live window (embeddings ``live`` [N, D], positive-class ``scores``) with the reference.

    Raises:
        ValueError: fewer than 2 samples on a side, or embedding sizes that differ (from the MMD test).
    """
    from robustdx.core.drift import ks_test, mmd_permutation_test, psi

    res = mmd_permutation_test(live, ref, n_perm=n_perm, seed=seed)
    if ref_scores is None or not len(ref_scores):
        return DriftReading(res.statistic, res.p_value, len(live))
    ks = ks_test(ref_scores.numpy(), scores)
    return DriftReading(res.statistic, res.p_value, len(live), ks.statistic, ks.p_value, psi(ref_scores.numpy(), scores))
