"""Reference statistics in pytorch-fid's `.npz` format: `mu` [D] and `sigma` [D, D].

Published FID reference statistics (and every tool that reads them: pytorch-fid, clean-fid's
custom stats, torch-fidelity) are a numpy `.npz` holding the float64 mean `mu` and the
unbiased covariance `sigma` of the reference set's pool3 features; pytorch-fid writes them
with `np.savez_compressed(path, mu=mu, sigma=sigma)` and reads `f["mu"]`, `f["sigma"]`.
Written atomically (temp file + rename), read with pickles refused.
"""

from __future__ import annotations

import os

import numpy as np

from diffjax.metrics.frechet import frechet_distance, gaussian_stats


class StatsFileError(ValueError):
    """A statistics file is missing, not an .npz, or lacks / mis-shapes mu or sigma."""


def write_stats(path: str, mu, sigma) -> None:
    """`np.savez_compressed(path, mu=, sigma=)` as pytorch-fid's `save_fid_stats`, atomically."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise StatsFileError(f"stats: mu {mu.shape} and sigma {sigma.shape} do not match")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise StatsFileError(f"stats file {path!r} must end in .npz (pytorch-fid's format)")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, mu=mu, sigma=sigma)
    os.replace(tmp, path)


def read_stats(path: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) float64 from a pytorch-fid `.npz`; `dim` checks the feature width."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise StatsFileError(f"reference statistics {path!r} do not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("mu", "sigma") if k not in f.files]
            if missing:
                raise StatsFileError(f"{path}: no {' or '.join(missing)} in the .npz (has "
                                     f"{', '.join(f.files) or 'nothing'}); pytorch-fid "
                                     "stats hold mu and sigma")
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    except (OSError, ValueError) as e:
        if isinstance(e, StatsFileError):
            raise
        raise StatsFileError(f"{path}: not a readable .npz ({e})") from e
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise StatsFileError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
    if dim is not None and mu.shape[0] != dim:
        raise StatsFileError(f"{path}: statistics of {mu.shape[0]}-d features, but the "
                             f"feature extractor gives {dim}-d (another network?)")
    return mu, sigma


def stats_of_features(features) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) as pytorch-fid computes them: mean and np.cov(rowvar=False), float64."""
    return gaussian_stats(features)


def fid_from_features(features, ref_mu, ref_sigma) -> float:
    """FID of features [N, D] against reference statistics."""
    return frechet_distance(*stats_of_features(features), ref_mu, ref_sigma)
