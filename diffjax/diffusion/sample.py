"""The seeds front end: each output depends on its own seed only.

`sample` draws each seed's initial noise from `fold_in(key(seed), 0)` and gives the sampler
`fold_in(key(seed), 1)` for its per-step noise, then vmaps over seeds (and over per-seed
conditioning). Nothing is drawn for the batch as a whole, so an image is the same at
batch 1 and batch 8, at any position, on any number of devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.samplers import check_options, get_sampler
from diffjax.diffusion.samplers.base import check_sigmas


def seed_keys(seed):
    """(noise key, sampler key) of one seed (a scalar uint32/int32 array or int)."""
    key = jax.random.key(jnp.asarray(seed, jnp.uint32))
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def initial_noise(seed, shape, sigma_max, init_scale="ve", dtype=jnp.float32):
    """x_T for one seed: N(0, I) * sigma_max ("ve", k-diffusion) or * sqrt(1 + sigma_max^2)
    ("vp": x_T ~ N(0, I) in the network's VP space, as diffusers starts SD)."""
    if init_scale not in ("ve", "vp"):
        raise ValueError(f"init_scale must be 've' or 'vp', got {init_scale!r}")
    noise_key, _ = seed_keys(seed)
    scale = sigma_max if init_scale == "ve" else jnp.sqrt(1.0 + sigma_max ** 2)
    return jax.random.normal(noise_key, shape, dtype) * scale.astype(dtype)


def sample(denoise, shape, seeds, sampler: str, sigmas, *, cond=None, options=None,
           init_scale: str = "ve"):
    """Samples [len(seeds), *shape], one per seed, each from its own key.

    denoise: `denoise(x, sigma)`, or `denoise(x, sigma, cond_i)` when `cond` (a pytree with
      a leading axis of len(seeds)) is given; x has the per-sample `shape`.
    sampler: a name in SAMPLERS; options: its keyword options.
    """
    options = dict(options or {})
    info = get_sampler(sampler)
    check_options(sampler, options)
    sigmas = jnp.asarray(sigmas)
    check_sigmas(sigmas)
    seeds = jnp.asarray(seeds, jnp.uint32)
    if seeds.ndim != 1:
        raise ValueError(f"seeds must be 1-D, got shape {tuple(seeds.shape)}")
    if init_scale not in ("ve", "vp"):
        raise ValueError(f"init_scale must be 've' or 'vp', got {init_scale!r}")
    if cond is not None:
        lead = {tuple(leaf.shape[:1]) for leaf in jax.tree.leaves(cond)}
        if lead != {(seeds.shape[0],)}:
            raise ValueError(f"cond must have a leading axis of len(seeds) = {seeds.shape[0]} "
                             f"on every leaf, got leading shapes {sorted(lead)}")

    def one(seed, c):
        x = initial_noise(seed, shape, sigmas[0], init_scale, sigmas.dtype)
        _, key = seed_keys(seed)
        d = denoise if c is None else (lambda x, s: denoise(x, s, c))
        return info.fn(d, x, sigmas, key, **options)

    if cond is None:
        return jax.vmap(lambda s: one(s, None))(seeds)
    return jax.vmap(one)(seeds, cond)
