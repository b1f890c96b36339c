"""Fréchet distance between distributions through their means and covariances.

FD(N(m1, C1), N(m2, C2)) = |m1 - m2|^2 + tr(C1 + C2 - 2 (C1^½ C2 C1^½)^½), the distance
behind FID (Heusel et al. 2017) when computed on a feature extractor's features. On the
Gaussian-mixture benchmark the target's mean and covariance are known exactly
(`mixture_moments`), so the only estimate left is the generated samples' own moments.
Computed in float64 numpy with symmetric eigendecompositions (no scipy sqrtm: its complex
round-off is what FID code papers over with `.real`).
"""

from __future__ import annotations

import os

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, ...] (flattened per row)."""
    f = np.asarray(features, np.float64)
    if f.ndim < 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats needs features [N >= 2, ...], got shape {f.shape}")
    f = f.reshape(f.shape[0], -1)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (negative round-off -> 0)."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = mu1.shape[0]
    for name, m, c in (("1", mu1, cov1), ("2", mu2, cov2)):
        if m.shape != (d,) or c.shape != (d, d):
            raise ValueError(f"frechet_distance: mu{name} {m.shape} / cov{name} {c.shape} "
                             f"do not match dimension {d} (expected ({d},) and ({d}, {d}))")
    s1 = _sqrt_psd(cov1)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(s1 @ cov2 @ s1), 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def mixture_moments(means, stds, weights) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and covariance of sum_k w_k N(mu_k, s_k^2 I) (means [K, ...] flattened):
    m = sum w_k mu_k, C = sum w_k (s_k^2 I + mu_k mu_k^T) - m m^T."""
    mu = np.asarray(means, np.float64)
    mu = mu.reshape(mu.shape[0], -1)
    w = np.asarray(weights, np.float64)
    s2 = np.asarray(stds, np.float64) ** 2
    if w.shape != (mu.shape[0],) or s2.shape != w.shape:
        raise ValueError(f"mixture_moments: {mu.shape[0]} means but weights {w.shape} and "
                         f"stds {s2.shape}")
    m = w @ mu
    cov = np.eye(mu.shape[1]) * (w @ s2) + (mu.T * w) @ mu - np.outer(m, m)
    return m, cov


def frechet_to_mixture(samples, means, stds, weights) -> float:
    """FD between the Gaussian fit of `samples` [N, ...] and a mixture's exact moments."""
    return frechet_distance(*gaussian_stats(samples), *mixture_moments(means, stds, weights))


def check_feature_folder(path: str) -> None:
    """Named error, before any compute, when the feature extractor folder is missing."""
    if not path:
        raise FileNotFoundError("the frechet metric on a pipeline model needs a feature "
                                "extractor folder (config.feature_extractor), got ''")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"feature extractor folder {path!r} does not exist (config."
                                "feature_extractor: a local CLIP vision tower folder)")
