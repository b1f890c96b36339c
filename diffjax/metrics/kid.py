"""Kernel Inception Distance (Bińkowski et al. 2018) as torch-fidelity computes it.

KID is the unbiased estimate of the squared MMD between two feature sets under the cubic
polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over `subsets` random subsets of
`subset_size` rows of each set (torch-fidelity's defaults: 100 subsets of 1,000, seed 2020).
Unlike FID it is unbiased in the number of samples, so small sample counts compare fairly.
The subsets are drawn exactly as torch-fidelity draws them (`np.random.RandomState(seed)`,
`choice(n, size, replace=False)` for set 1 then set 2, per subset), so the same features
give the same number; the sums run in float64.
"""

from __future__ import annotations

import numpy as np

SUBSETS = 100
SUBSET_SIZE = 1000
SEED = 2020


def polynomial_kernel(x, y, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """(gamma x.y + coef0)^degree, gamma defaulting to 1 / d."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx, k_xy, k_yy) -> float:
    """Unbiased MMD^2 of m x m kernel matrices: the diagonals of k_xx and k_yy are left out
    (U-statistics), the cross term is the full mean (torch-fidelity's "unbiased")."""
    m = k_xx.shape[0]
    xx = k_xx.sum() - np.trace(k_xx)
    yy = k_yy.sum() - np.trace(k_yy)
    return float((xx + yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kid(features_1, features_2, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE,
        seed: int = SEED, degree: int = 3, gamma: float | None = None,
        coef0: float = 1.0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over `subsets` subsets (torch-fidelity's KID)."""
    f1 = np.asarray(features_1, np.float64)
    f2 = np.asarray(features_2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"kid: features {f1.shape} and {f2.shape} must be [N, D] of one D")
    if min(len(f1), len(f2)) < subset_size or subset_size < 2:
        raise ValueError(f"kid: subset size {subset_size} needs at least that many features "
                         f"in each set (have {len(f1)} and {len(f2)}) and >= 2")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = f1[rng.choice(len(f1), subset_size, replace=False)]
        b = f2[rng.choice(len(f2), subset_size, replace=False)]
        k = lambda x, y: polynomial_kernel(x, y, degree, gamma, coef0)  # noqa: E731
        mmds[i] = mmd2_unbiased(k(a, a), k(a, b), k(b, b))
    return float(mmds.mean()), float(mmds.std())
