"""The UNet's timestep embedding: a sinusoid of the timestep, then a two-layer MLP.

Numerically diffusers' `get_timestep_embedding` and `TimestepEmbedding`, with module names
mirroring theirs (`time_embedding/linear_1`) so weights map key by key.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.activations import activation
from diffjax.models.axes import EMBED, MLP
from diffjax.models.dense import dense


@functools.partial(jax.jit, static_argnames=("dim", "flip_sin_to_cos", "downscale_freq_shift",
                                             "max_period"))
def timestep_embedding(timesteps, dim: int, flip_sin_to_cos: bool = True,
                       downscale_freq_shift: float = 0.0, max_period: int = 10000):
    """Sinusoidal timestep embedding, exactly diffusers' `get_timestep_embedding`.

    SD uses flip_sin_to_cos=True, downscale_freq_shift=0 (the embedding starts with cos).
    Always float32: the timesteps reach 999 and bf16 cannot represent their phases.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
    exponent = exponent / (half - downscale_freq_shift)
    freqs = jnp.exp(exponent)
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> act -> linear_2 [-> post_act], from the sinusoid to the ResNets' `temb`
    width. `act` is the UNet config's `act_fn` for the time embedding (SiLU for SDXL's
    `add_embedding`, which diffusers builds with the default); `post_act` its
    `timestep_post_act` (None: nothing)."""
    dim: int
    dtype: jnp.dtype
    act: str = "silu"
    post_act: str | None = None

    @nn.compact
    def __call__(self, x):
        x = dense(self.dim, (EMBED, MLP), dtype=self.dtype, name="linear_1")(x)
        x = dense(self.dim, (MLP, EMBED), dtype=self.dtype, name="linear_2")(
            activation(self.act)(x))
        return x if self.post_act is None else activation(self.post_act)(x)
