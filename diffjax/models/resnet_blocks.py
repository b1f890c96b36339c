"""The convolutional blocks the UNet and the VAE share: diffusers' ResnetBlock2D,
Downsample2D and Upsample2D.

Numerically diffusers', with module names mirroring theirs (`resnets_0/conv1`) so weights
map key by key. Activations are NHWC; normalisations run in float32 and the result is cast
back to the compute dtype before each convolution.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.axes import CONV_OUT, EMBED
from diffjax.models.convolution import conv
from diffjax.models.dense import dense
from diffjax.models.normalization import group_norm


class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D: GN-SiLU-conv, + projected time embedding, GN-SiLU-conv,
    1x1 shortcut when the channel count changes. temb=None for the VAE."""
    out_channels: int
    groups: int = 32
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None):
        h = nn.silu(group_norm(self.groups, self.eps, "norm1")(x)).astype(self.dtype)
        h = conv(self.out_channels, dtype=self.dtype, name="conv1")(h)
        if temb is not None:
            t = dense(self.out_channels, (EMBED, CONV_OUT), dtype=self.dtype,
                      name="time_emb_proj")(nn.silu(temb))
            h = h + t[:, None, None, :]
        h = nn.silu(group_norm(self.groups, self.eps, "norm2")(h)).astype(self.dtype)
        h = conv(self.out_channels, dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, padding=0, dtype=self.dtype, name="conv_shortcut")(x)
        return x + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv. padding=1 (UNet) or 0 with a (0,1) pad first (VAE encoder)."""
    channels: int
    padding: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(self.channels, 3, 2, self.padding, self.dtype, name="conv")(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""
    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(self.channels, dtype=self.dtype, name="conv")(x)
