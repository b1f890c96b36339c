"""The convolutional blocks the UNet and the VAE share: diffusers' ResnetBlock2D,
Downsample2D and Upsample2D.

Numerically diffusers', with module names mirroring theirs (`resnets_0/conv1`) so weights
map key by key. Activations are NHWC; normalisations run in float32 and the result is cast
back to the compute dtype before each convolution.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffjax.models.activations import activation
from diffjax.models.axes import CONV_OUT, EMBED
from diffjax.models.convolution import conv
from diffjax.models.dense import dense
from diffjax.models.normalization import group_norm


class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D: GN-SiLU-conv, + projected time embedding, GN-SiLU-conv,
    1x1 shortcut when the channel count changes. temb=None for the VAE.

    `act` is diffusers' `resnet_act_fn` (the config's `act_fn`), applied after both norms
    and to the time embedding; the sum is divided by `output_scale_factor` (the UNet's
    `mid_block_scale_factor` in its mid block, 1 elsewhere)."""
    out_channels: int
    groups: int = 32
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    act: str = "silu"
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, x, temb=None):
        act = activation(self.act)
        h = act(group_norm(self.groups, self.eps, "norm1")(x)).astype(self.dtype)
        h = conv(self.out_channels, dtype=self.dtype, name="conv1")(h)
        if temb is not None:
            t = dense(self.out_channels, (EMBED, CONV_OUT), dtype=self.dtype,
                      name="time_emb_proj")(act(temb))
            h = h + t[:, None, None, :]
        h = act(group_norm(self.groups, self.eps, "norm2")(h)).astype(self.dtype)
        h = conv(self.out_channels, dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, padding=0, dtype=self.dtype, name="conv_shortcut")(x)
        if self.output_scale_factor != 1:
            return (x + h) / self.output_scale_factor
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


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """The source rows torch's `interpolate(mode="nearest", size=...)` reads on CPU:
    floor(i * (in/out)) with the scale in float32, clipped to the input (aten's
    `nearest_idx`). Static: sizes are Python ints at trace time."""
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv.

    `size` (h, w): upsample to that size instead, as diffusers does with `upsample_size`
    when the latent is not a multiple of the UNet's downsampling factor (a 5-row skip
    connection under a 3-row input: rows 0,0,1,1,2)."""
    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, size=None):
        h, w = x.shape[1:3]
        if size is None or tuple(size) == (2 * h, 2 * w):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            x = jnp.take(x, nearest_indices(h, size[0]), axis=1)
            x = jnp.take(x, nearest_indices(w, size[1]), axis=2)
        return conv(self.channels, dtype=self.dtype, name="conv")(x)
