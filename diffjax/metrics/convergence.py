"""Convergence error of a sampler: RMSE of its final latents against a reference solve.

The reference is a very fine deterministic solve of the same probability-flow ODE from the
same initial noise (the measure of DPM-Solver-v3's and UniPC's Stable Diffusion studies),
so the error isolates discretisation error: it goes to zero as NFE grows for a convergent
deterministic sampler, at a log-log slope of minus its order.
"""

from __future__ import annotations

import numpy as np


class ReferenceSolveError(ValueError):
    """The reference solve cannot judge the cells (coarser than them, or stochastic)."""


def rmse(x, reference) -> float:
    """Root mean square of x - reference over every sample and element (float64)."""
    x = np.asarray(x, np.float64)
    reference = np.asarray(reference, np.float64)
    if x.shape != reference.shape:
        raise ValueError(f"rmse: shapes differ, samples {x.shape} vs reference "
                         f"{reference.shape}")
    return float(np.sqrt(np.mean((x - reference) ** 2)))


def fit_loglog_slope(nfe, error, last: int = 0) -> float:
    """Least-squares slope of log(error) against log(nfe), over the `last` largest NFEs
    (0: all points). Zero or non-finite errors are dropped (log undefined); fewer than two
    usable points give nan. A convergent order-p solver gives about -p once NFE is in its
    asymptotic range, which is why the fit can be restricted to the finest cells."""
    nfe = np.asarray(nfe, np.float64)
    error = np.asarray(error, np.float64)
    if nfe.shape != error.shape or nfe.ndim != 1:
        raise ValueError(f"fit_loglog_slope: nfe {nfe.shape} and error {error.shape} must be "
                         "1-D of the same length")
    order = np.argsort(nfe)
    nfe, error = nfe[order], error[order]
    if last:
        nfe, error = nfe[-last:], error[-last:]
    ok = np.isfinite(error) & (error > 0) & (nfe > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(nfe[ok]), np.log(error[ok]), 1)[0])


def check_reference(reference_name: str, reference_nfe: int, reference_stochastic: bool,
                    cell_nfes: dict[str, int]) -> None:
    """Refuse a reference that cannot judge the cells, before any compute: it must be
    deterministic and strictly finer (more denoiser calls) than every cell it judges."""
    if reference_stochastic:
        raise ReferenceSolveError(f"reference sampler {reference_name!r} is stochastic; the "
                              "reference must be a deterministic ODE solve")
    coarse = {k: v for k, v in cell_nfes.items() if v >= reference_nfe}
    if coarse:
        worst = max(coarse, key=coarse.get)
        raise ReferenceSolveError(
            f"reference solve ({reference_name}, NFE {reference_nfe}) is not finer than "
            f"{len(coarse)} cell(s) it judges, e.g. {worst} with NFE {coarse[worst]}; raise "
            "reference.steps above every cell's NFE")
