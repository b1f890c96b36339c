"""The seeds front end: each output depends on its own seed only.

`sample` draws each seed's noise from `fold_in(key(seed), 0)` and gives the sampler
`fold_in(key(seed), 1)` for its per-step noise, then vmaps over seeds (and over per-seed
conditioning). Nothing is drawn for the batch as a whole, so an image is the same at
batch 1 and batch 8, at any position, on any number of devices. A batch of one seed runs
as two (the seed twice): XLA squeezes a size-1 batch axis and would round differently.

How a seed's run starts and ends is an initial state: `FromNoise` (x_T is the seed's noise
at the grid's first sigma: text-to-image) here, `image_conditioning.FromImage` (img2img and
inpainting) beside it. Both are built from the same noise draw, so img2img at full strength
starts where text-to-image does.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from diffjax.diffusion.samplers import check_options, get_sampler
from diffjax.diffusion.samplers.base import check_sigmas

INIT_SCALES = ("ve", "vp")


def seed_keys(seed):
    """(noise key, sampler key) of one seed (a scalar uint32/int32 array or int)."""
    key = jax.random.key(jnp.asarray(seed, jnp.uint32))
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def _check_init_scale(init_scale: str) -> None:
    if init_scale not in INIT_SCALES:
        raise ValueError(f"init_scale must be 've' or 'vp', got {init_scale!r}")


def noise_to_x_T(noise, sigma_max, init_scale: str = "ve"):
    """N(0, I) noise -> x_T: * sigma_max ("ve", k-diffusion) or * sqrt(1 + sigma_max^2)
    ("vp": x_T ~ N(0, I) in the network's VP space, as diffusers starts SD)."""
    scale = sigma_max if init_scale == "ve" else jnp.sqrt(1.0 + sigma_max ** 2)
    return noise * scale.astype(noise.dtype)


@dataclasses.dataclass(frozen=True)
class FromNoise:
    """Text-to-image: x_T is the seed's noise at sigma_max; the denoiser and the result
    are the sampler's own."""

    init_scale: str = "ve"

    def __post_init__(self):
        _check_init_scale(self.init_scale)

    def x_T(self, noise, sigma_max):
        return noise_to_x_T(noise, sigma_max, self.init_scale)

    def denoiser(self, denoise, noise):
        return denoise

    def final(self, x):
        return x


def _starts_at_infinity(sigmas) -> bool:
    """Whether the grid starts at sigma = inf (alpha_bar = 0: zero terminal SNR, diffusers'
    DDIM/DDPM, schedule="model"); False for a traced grid."""
    try:
        return bool(jnp.isinf(sigmas[0]))
    except jax.errors.ConcretizationTypeError:
        return False


def _first_step_eta(name, info, options) -> float:
    """How much fresh noise a sampler's first step from sigma = inf injects, as the limit of
    its own formula: x_1 = D + sigma_1 (sqrt(1 - eta^2) n + eta z), n the start noise, z
    fresh. ODE samplers 0 (DDIM eta = 0, Euler, DPM-Solver...); DDIM and the ancestral
    samplers their eta (capped at 1); the DPM++ SDE samplers 1 when eta > 0 (their
    transition forgets x entirely over an infinite step)."""
    if not info.stochastic:
        return 0.0
    eta = float(options.get("eta", info.options.get("eta", 1.0)))
    if name.startswith("dpmpp_") and name.endswith("sde"):
        return 1.0 if eta > 0 else 0.0
    return min(eta, 1.0)


def sample(denoise, shape, seeds, sampler: str, sigmas, *, cond=None, options=None,
           init_scale: str = "ve", initial_state=None, spmd_axis_name=None):
    """Samples [len(seeds), *shape], one per seed, each from its own key.

    denoise: `denoise(x, sigma)`, or `denoise(x, sigma, cond_i)` when `cond` (a pytree with
      a leading axis of len(seeds)) is given; x has the per-sample `shape`.
    sampler: a name in SAMPLERS; options: its keyword options.
    sigmas[0] = inf (schedule="model" on a zero-terminal-SNR DDIM/DDPM folder): the first
      step is taken here from pure noise n, as the limit of the sampler's first step:
      x_1 = D(n, inf) + sigma_1 (sqrt(1 - eta^2) n + eta z) (`_first_step_eta`), then the
      sampler runs on sigmas[1:]. D(n, inf) needs a denoiser that takes the VP sample at
      sigma = inf (`denoisers.vp_denoiser` does).
    initial_state: how each seed's run starts and ends, given the seed's N(0, I) noise:
      `x_T(noise, sigma_max)`, `denoiser(denoise, noise)` (a per-seed wrapper),
      `final(x)`. Default `FromNoise(init_scale)`.
    spmd_axis_name: the mesh axes the seeds are split over (`jax.vmap`'s), for programs
      traced under `jax.set_mesh`: a `shard_map` inside the network (the Pallas attention
      kernel) then splits the seed axis over them instead of gathering it.
    """
    options = dict(options or {})
    info = get_sampler(sampler)
    check_options(sampler, options)
    sigmas = jnp.asarray(sigmas)
    check_sigmas(sigmas)
    seeds = jnp.asarray(seeds, jnp.uint32)
    if seeds.ndim != 1:
        raise ValueError(f"seeds must be 1-D, got shape {tuple(seeds.shape)}")
    start = FromNoise(init_scale) if initial_state is None else initial_state
    if cond is not None:
        lead = {tuple(leaf.shape[:1]) for leaf in jax.tree.leaves(cond)}
        if lead != {(seeds.shape[0],)}:
            raise ValueError(f"cond must have a leading axis of len(seeds) = {seeds.shape[0]} "
                             f"on every leaf, got leading shapes {sorted(lead)}")

    pure_noise = _starts_at_infinity(sigmas)
    vmap = functools.partial(jax.vmap, spmd_axis_name=spmd_axis_name)

    def one(seed, c):
        noise_key, key = seed_keys(seed)
        noise = jax.random.normal(noise_key, shape, sigmas.dtype)
        d = start.denoiser(denoise if c is None else (lambda x, s: denoise(x, s, c)), noise)
        if pure_noise:
            eta = _first_step_eta(sampler, info, options)
            z = jax.random.normal(jax.random.fold_in(key, 0x7FFFFFFF), shape, sigmas.dtype)
            x = d(noise, sigmas[0]) + sigmas[1] * (jnp.sqrt(1 - eta ** 2) * noise + eta * z)
            return start.final(info.fn(d, x, sigmas[1:], key, **options))
        x = info.fn(d, start.x_T(noise, sigmas[0]), sigmas, key, **options)
        return start.final(x)

    if seeds.shape[0] == 1:
        # XLA compiles a batch axis of size 1 as no axis at all (other fusions, other
        # dot/convolution algorithms), so batch 1 would round differently from the same
        # seed in any larger batch (batches 2, 3, 4, 8 agree bit for bit). Batch 1 therefore
        # runs as batch 2, the seed twice, and keeps the first: twice the work at batch 1,
        # the same numbers as in every other batch.
        twice = lambda a: jnp.concatenate([a, a])  # noqa: E731
        seeds = twice(seeds)
        cond = None if cond is None else jax.tree.map(twice, cond)
        return (vmap(lambda s: one(s, None))(seeds) if cond is None
                else vmap(one)(seeds, cond))[:1]
    if cond is None:
        return vmap(lambda s: one(s, None))(seeds)
    return vmap(one)(seeds, cond)
