"""Drift statistics between a reference sample (from training) and a live window.

Pure functions shared by the service's monitoring and the flows. Implemented here rather than
imported because the maintained drift libraries do not fit (FACTS.md: alibi-detect is
BSL-licensed and pins numpy, NannyML / torchdrift are unmaintained, frouros pins numpy < 2.2).

* :func:`mmd_permutation_test` — kernel two-sample test on embeddings (Gretton et al. 2012):
  unbiased MMD² with a Gaussian kernel whose bandwidth is the median pairwise distance, p-value by
  permutation. Sensitive to any change of the embedding distribution (e.g. a new stain).
* :func:`ks_test` — two-sample Kolmogorov–Smirnov test on a 1-D score (e.g. the malignant probability).
* :func:`psi` — population stability index of a 1-D score over the reference's quantile bins
  (rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 large shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor


@dataclass(frozen=True)
class TestResult:
    """A statistic and its p-value (``nan`` where the statistic has none)."""

    statistic: float
    p_value: float


def _as_2d(x: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).double()
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"expected [N, D] samples, got shape {tuple(t.shape)}")
    return t


def median_bandwidth(z: Tensor) -> float:
    """Median heuristic: the median pairwise Euclidean distance of the pooled sample."""
    d = torch.cdist(z, z)
    off = d[~torch.eye(len(z), dtype=torch.bool)]
    med = float(off.median()) if off.numel() else 1.0
    return med if med > 0 else 1.0


def _mmd2_from_kernel(k: Tensor, n: int) -> Tensor:
    """Unbiased MMD² for the first ``n`` rows vs the rest of a pooled kernel matrix (batched over dim 0)."""
    m = k.shape[-1] - n
    kxx, kyy, kxy = k[..., :n, :n], k[..., n:, n:], k[..., :n, n:]
    sxx = (kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    syy = (kyy.sum((-1, -2)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
    return sxx + syy - 2 * kxy.mean((-1, -2))


def mmd_permutation_test(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, n_perm: int = 200, seed: int = 0, bandwidth: float | None = None
) -> TestResult:
    """Unbiased MMD² between samples ``x`` [N, D] and ``y`` [M, D] and its permutation p-value.

    The p-value is ``(1 + #{perm ≥ observed}) / (1 + n_perm)``, never 0.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> mmd_permutation_test(torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g) + 2).p_value < 0.01
        True
    """
    x2, y2 = _as_2d(x), _as_2d(y)
    if len(x2) < 2 or len(y2) < 2:
        raise ValueError(f"MMD needs at least 2 samples on each side, got {len(x2)} and {len(y2)}")
    if x2.shape[1] != y2.shape[1]:
        raise ValueError(f"feature dimensions differ: {x2.shape[1]} vs {y2.shape[1]}")
    z = torch.cat([x2, y2])
    h = bandwidth or median_bandwidth(z)
    k = torch.exp(-torch.cdist(z, z).pow(2) / (2 * h * h))
    n = len(x2)
    observed = _mmd2_from_kernel(k, n)
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(len(z), generator=g) for _ in range(n_perm)])
    permuted = _mmd2_from_kernel(k[perms[:, :, None], perms[:, None, :]], n)
    p = (1 + int((permuted >= observed).sum())) / (1 + n_perm)
    return TestResult(float(observed), p)


def ks_test(reference: np.ndarray | Tensor, live: np.ndarray | Tensor) -> TestResult:
    """Two-sample Kolmogorov–Smirnov test on 1-D scores."""
    a, b = np.asarray(reference, dtype=float).ravel(), np.asarray(live, dtype=float).ravel()
    if len(a) == 0 or len(b) == 0:
        raise ValueError("KS test needs non-empty samples")
    res = stats.ks_2samp(a, b)
    return TestResult(float(res.statistic), float(res.pvalue))


def psi(reference: np.ndarray | Tensor, live: np.ndarray | Tensor, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index ``Σ (p_live − p_ref) · ln(p_live / p_ref)`` over the reference's
    quantile bins (open-ended outer bins, so live values outside the reference range still count)."""
    a, b = np.asarray(reference, dtype=float).ravel(), np.asarray(live, dtype=float).ravel()
    if len(a) == 0 or len(b) == 0:
        raise ValueError("PSI needs non-empty samples")
    edges = np.unique(np.quantile(a, np.linspace(0, 1, bins + 1)[1:-1]))
    p_ref = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1) / len(a)
    p_live = np.bincount(np.searchsorted(edges, b, side="right"), minlength=len(edges) + 1) / len(b)
    p_ref, p_live = np.clip(p_ref, eps, None), np.clip(p_live, eps, None)
    return float(np.sum((p_live - p_ref) * np.log(p_live / p_ref)))
