"""Drift statistics on distributions with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustdx.core.drift import ks_test, mmd_permutation_test, psi

pytestmark = pytest.mark.unit


def _normal(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


def test_mmd_same_distribution_is_not_flagged_and_p_is_roughly_uniform() -> None:
    ps = [mmd_permutation_test(_normal(40, 8, 0, s), _normal(40, 8, 0, 100 + s), n_perm=100, seed=s).p_value for s in range(20)]
    assert np.mean(np.array(ps) < 0.05) <= 0.2  # false-positive rate near the 5% level
    assert 0.2 < np.mean(ps) < 0.8


def test_mmd_detects_a_mean_shift_and_grows_with_it() -> None:
    small = mmd_permutation_test(_normal(60, 8, 0, 0), _normal(60, 8, 0.5, 1), n_perm=200)
    large = mmd_permutation_test(_normal(60, 8, 0, 0), _normal(60, 8, 2.0, 1), n_perm=200)
    assert large.p_value < 0.01
    assert large.statistic > small.statistic > 0


def test_mmd_unbiased_estimate_is_near_zero_for_identical_distributions() -> None:
    r = mmd_permutation_test(_normal(200, 4, 0, 0), _normal(200, 4, 0, 1), n_perm=20)
    assert abs(r.statistic) < 0.02


def test_mmd_input_errors() -> None:
    with pytest.raises(ValueError, match="dimensions differ"):
        mmd_permutation_test(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2"):
        mmd_permutation_test(torch.zeros(1, 3), torch.zeros(5, 3))


def test_ks_known_answers() -> None:
    rng = np.random.default_rng(0)
    assert ks_test(rng.normal(size=500), rng.normal(size=500)).p_value > 0.01
    shifted = ks_test(rng.normal(size=500), rng.normal(1, size=500))
    assert shifted.p_value < 1e-6 and 0.3 < shifted.statistic < 0.5  # KS distance of N(0,1) vs N(1,1) is 0.383


def test_psi_thresholds() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(size=5000)
    assert psi(ref, rng.uniform(size=5000)) < 0.02
    assert psi(ref, rng.uniform(size=5000) ** 3) > 0.25
    assert psi(ref, rng.uniform(2, 3, size=100)) > 1  # entirely outside the reference range still counts
    with pytest.raises(ValueError):
        psi(ref, [])
