"""What every sampler shares: its catalogue entry, per-step noise, and input checks.

Signature of every sampler (k-diffusion style, VE/"Karras" parameterisation):

    sample_<name>(denoise, x, sigmas, key, **options) -> x
    denoise(x, sigma) -> x0_hat      # already conditioned and guided
    sigmas: float32 [N+1], strictly decreasing, sigmas[-1] == 0 (N = steps)
    x: the initial latent, already scaled by sigmas[0]

The step loop is one `lax.scan` over the N steps; stochastic samplers draw step i's noise
from `fold_in(key, i)` so a trajectory depends on its own key only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplerInfo:
    """A row of the sampler catalogue (`SAMPLERS`, `diffjax samplers`)."""

    fn: Callable
    nfe: Callable[[int], int]   # denoiser calls for N steps
    order: int                  # order of convergence of the deterministic solver (default options)
    stochastic: bool            # draws noise during sampling
    reference: str              # paper + algorithm it implements
    options: tuple[str, ...] = ()  # keyword options it accepts


def step_noise(key, step, like):
    """Standard normal noise for step `step`, derived only from (key, step)."""
    return jax.random.normal(jax.random.fold_in(key, step), like.shape, like.dtype)


def to_d(x, sigma, denoised):
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def check_sigmas(sigmas) -> None:
    """Reject sigma grids samplers cannot use, naming what is wrong (static shapes only)."""
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D grid of steps+1 >= 2 values, got shape "
                         f"{tuple(sigmas.shape)} (steps must be >= 1)")
    try:
        s = jnp.asarray(sigmas)
        decreasing = bool(jnp.all(s[1:] < s[:-1]))
    except jax.errors.ConcretizationTypeError:
        return  # traced inside jit: checked where the grid is made
    if not decreasing:
        raise ValueError(f"sigmas must be strictly decreasing, got {s.tolist()}")
    if float(s[-1]) < 0:
        raise ValueError(f"sigmas must end at >= 0, got last value {float(s[-1])}")
