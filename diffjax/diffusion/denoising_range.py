"""Part of a denoising run: where SDXL's `denoising_end` / `denoising_start` cut the sigma
grid (`split_index`), and a sampler run continued from given latents (`continue_latents`):
the "ensemble of experts" hand-over from a base model to a refiner
(`diffjax.base_refiner`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def split_index(sigmas, train_sigmas, fraction: float, num_train_timesteps: int) -> int:
    """Where `denoising_end` = fraction stops a run (and `denoising_start` = fraction
    starts one) on the sigma grid: the number of steps whose starting sigma has timestep
    t(sigma) >= round(T - fraction * T), T = num_train_timesteps.

    This is diffusers' rule (it keeps the discrete timesteps >= that cutoff for the base
    and those below it for the refiner) with each sigma's timestep taken as the continuous
    t of `schedules.sigma_to_t` (log-sigma interpolation, exact at the training sigmas):
    for diffusers' own discrete grids (leading, trailing, linspace) it is the same cut,
    and it puts any other grid (karras, exponential, ...) at the same noise level, so
    every sampler can hand over. Steps are whole sampler steps (for Heun-type samplers
    diffusers' +1 rule on doubled timesteps gives the same cut)."""
    s = np.asarray(sigmas, np.float64)[:-1]
    log_train = np.log(np.asarray(train_sigmas, np.float64))
    t = np.interp(np.log(np.maximum(s, 1e-10)), log_train, np.arange(log_train.shape[0]))
    cutoff = int(round(num_train_timesteps - fraction * num_train_timesteps))
    return int(np.sum(t >= cutoff - 1e-3))     # integer timesteps up to float32 rounding


def continue_latents(denoise, latents, seeds, sampler: str, sigmas, cond, options,
                     spmd_axis_name=None):
    """Run `sampler` over `sigmas` from given per-seed latents (a refiner after its base:
    diffusers adds no noise with denoising_start). Each seed's per-step noise comes from
    its own key, folded apart from the base's (`diffusion.sample.seed_keys`)."""
    from diffjax.diffusion.samplers import get_sampler
    from diffjax.diffusion.sample import seed_keys
    info = get_sampler(sampler)
    sigmas = jnp.asarray(sigmas)

    def one(seed, x, c):
        key = jax.random.fold_in(seed_keys(seed)[1], 1)
        return info.fn(lambda y, s: denoise(y, s, c), x, sigmas, key, **options)

    return jax.vmap(one, spmd_axis_name=spmd_axis_name)(
        jnp.asarray(seeds, jnp.uint32), latents.astype(sigmas.dtype), cond)

