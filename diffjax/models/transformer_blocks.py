"""The attention blocks of the UNet and the VAE: diffusers' Attention (projections around
`diffjax.models.attention.attention`), BasicTransformerBlock with its GEGLU feed-forward,
and Transformer2DModel (SD's spatial transformer over H*W tokens).

Numerically diffusers', with module names mirroring theirs (`transformer_blocks_0/attn1/
to_q`) so weights map key by key. Layer and group norms run in float32; the result is
cast back to the compute dtype before each projection.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.attention import attention
from diffjax.models.axes import EMBED, HEADS, MLP
from diffjax.models.convolution import conv
from diffjax.models.dense import dense
from diffjax.models.normalization import group_norm, layer_norm


class Attention(nn.Module):
    """diffusers' Attention (to_q/to_k/to_v, to_out.0) on tokens [B, N, C]; with
    `norm_groups` it group-normalises its input first and adds a residual, as the VAE's
    mid-block attention does."""
    heads: int
    head_dim: int
    out_dim: int
    qkv_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    impl: str = "xla"
    norm_groups: int = 0

    @nn.compact
    def __call__(self, x, context=None):
        residual = x
        if self.norm_groups:
            x = group_norm(self.norm_groups, 1e-6, "group_norm")(x).astype(self.dtype)
        context = x if context is None else context
        inner = self.heads * self.head_dim
        b = x.shape[0]
        q = dense(inner, (EMBED, HEADS), self.qkv_bias, self.dtype, "to_q")(x)
        k = dense(inner, (EMBED, HEADS), self.qkv_bias, self.dtype, "to_k")(context)
        v = dense(inner, (EMBED, HEADS), self.qkv_bias, self.dtype, "to_v")(context)
        split = lambda t: t.reshape(b, t.shape[1], self.heads, self.head_dim)  # noqa: E731
        out = attention(split(q), split(k), split(v), impl=self.impl)
        out = out.reshape(b, x.shape[1], inner)
        out = dense(self.out_dim, (HEADS, EMBED), True, self.dtype, "to_out_0")(out)
        return out + residual if self.norm_groups else out


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, GEGLU feed-forward; pre-LN with residuals."""
    dim: int
    heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    impl: str = "xla"

    @nn.compact
    def __call__(self, x, context):
        attn = lambda name: Attention(self.heads, self.head_dim, self.dim,  # noqa: E731
                                      dtype=self.dtype, impl=self.impl, name=name)
        x = x + attn("attn1")(layer_norm(1e-5, "norm1")(x).astype(self.dtype))
        x = x + attn("attn2")(layer_norm(1e-5, "norm2")(x).astype(self.dtype), context)
        h = layer_norm(1e-5, "norm3")(x).astype(self.dtype)
        return x + FeedForward(self.dim, self.dtype, name="ff")(h)


class GEGLU(nn.Module):
    """Shazeer 2020: a linear layer to 2x width, one half gating the other through GELU."""
    dim_out: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = dense(self.dim_out * 2, (EMBED, MLP), dtype=self.dtype, name="proj")(x)
        hidden, gate = jnp.split(h, 2, axis=-1)
        return hidden * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """diffusers' FeedForward: net.0 = GEGLU(dim -> 4 dim), net.2 = linear back to dim."""
    dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = GEGLU(self.dim * 4, self.dtype, name="net_0")(x)
        return dense(self.dim, (MLP, EMBED), dtype=self.dtype, name="net_2")(h)


class Transformer2D(nn.Module):
    """diffusers' Transformer2DModel for SD: GN, proj_in (1x1 conv or linear), transformer
    blocks over the H*W tokens with cross-attention to the text context, proj_out, residual."""
    channels: int
    heads: int
    depth: int = 1
    use_linear_projection: bool = False
    groups: int = 32
    dtype: jnp.dtype = jnp.float32
    impl: str = "xla"

    @nn.compact
    def __call__(self, x, context):
        b, h, w, c = x.shape
        head_dim = self.channels // self.heads
        y = group_norm(self.groups, 1e-6, "norm")(x).astype(self.dtype)
        if self.use_linear_projection:
            y = dense(self.channels, (EMBED, HEADS), dtype=self.dtype,
                      name="proj_in")(y.reshape(b, h * w, c))
        else:
            y = conv(self.channels, 1, padding=0, dtype=self.dtype,
                     name="proj_in")(y).reshape(b, h * w, self.channels)
        for i in range(self.depth):
            y = BasicTransformerBlock(self.channels, self.heads, head_dim, self.dtype,
                                      self.impl, name=f"transformer_blocks_{i}")(y, context)
        if self.use_linear_projection:
            y = dense(c, (HEADS, EMBED), dtype=self.dtype, name="proj_out")(y).reshape(b, h, w, c)
        else:
            y = conv(c, 1, padding=0, dtype=self.dtype, name="proj_out")(y.reshape(b, h, w, -1))
        return x + y
