"""From a network to the denoiser D(x, sigma) every sampler calls.

SD networks are trained in VP form: given x_vp = sqrt(abar) y + sqrt(1 - abar) n and the
timestep t, they predict n (eps), v = sqrt(abar) n - sqrt(1 - abar) y, or y (x0). Samplers
work in VE form, x = x_vp / sqrt(abar) = y + sigma n. The wrapper converts (Karras et al.
2022, Table 1): c_in = 1 / sqrt(1 + sigma^2), t = t(sigma), and
    eps: D = x - sigma * eps
    v:   D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v
    x0:  D = x0
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from diffjax.diffusion.guidance import convert_uncond
from diffjax.diffusion.schedules import sigma_to_t

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def vp_denoiser(model: Callable, train_sigmas, prediction_type: str = "epsilon",
                grid=None) -> Callable:
    """Wrap `model(x_in, t, *cond) -> prediction` into `D(x, sigma, *cond) -> x0_hat`.

    The network runs in its own dtype; the VE<->VP arithmetic runs in float32 (or the
    sigma dtype), so bf16 networks do not corrupt the sampler state.

    grid: a `diffusers_schedule.ModelGrid` (schedule="model"): wherever sigma equals one of
    its sigmas the network gets that point's timestep (diffusers' integer or rounded t),
    elsewhere (a sampler's intermediate sigmas) the continuous t(sigma). sigma = inf (a
    zero-terminal-SNR first step, alpha_bar = 0) takes x as the VP sample itself (pure
    noise) and returns the limit: v-prediction D = -v, sample-prediction D = x0;
    epsilon-prediction has none (NaN, as diffusers' division by sqrt(alpha_bar) = 0).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of "
                         f"{PREDICTION_TYPES}")

    def timestep(sigma):
        t = sigma_to_t(sigma, train_sigmas)
        if grid is None:
            return t
        on = jnp.asarray(grid.sigmas[:-1], sigma.dtype) == sigma
        return jnp.where(on.any(), (on * jnp.asarray(grid.timesteps, t.dtype)).sum(), t)

    def denoise(x, sigma, *cond):
        sigma = jnp.asarray(sigma, x.dtype)
        inf = jnp.isinf(sigma)
        s = jnp.where(inf, 1.0, sigma)
        c_in = jnp.where(inf, 1.0, 1.0 / jnp.sqrt(1.0 + s ** 2))

        def to_x0(out):
            out = out.astype(x.dtype)
            if prediction_type == "epsilon":
                return jnp.where(inf, jnp.nan, x - s * out)
            if prediction_type == "v_prediction":
                return jnp.where(inf, -out, x / (1.0 + s ** 2) - s * c_in * out)
            return out
        x0 = to_x0(model(x * c_in, timestep(sigma), *cond))
        convert_uncond(to_x0)   # CFG++ samplers: the unconditional x0 too (guidance.py)
        return x0

    return denoise
