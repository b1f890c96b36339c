"""UNet2DConditionModel (Stable Diffusion 1.x / 2.x), numerically as diffusers'.

A timestep-conditioned UNet with cross-attention to the text context: conv_in, down
blocks (ResNets, optional Transformer2D, downsample), a mid block, up blocks that consume
the down path's skip connections, conv_out. Activations are NHWC. Module names mirror
diffusers' (`down_blocks_0/resnets_1/conv1` for `down_blocks.0.resnets.1.conv1`) so the
converter maps keys mechanically. Config field names are diffusers' config.json names.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.convolution import conv
from diffjax.models.normalization import group_norm
from diffjax.models.resnet_blocks import Downsample2D, ResnetBlock2D, Upsample2D
from diffjax.models.timestep_embedding import TimestepEmbedding, timestep_embedding
from diffjax.models.transformer_blocks import Transformer2D

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    attention_head_dim: int | tuple[int, ...] = 8  # diffusers' name; it is the head COUNT
    cross_attention_dim: int = 768
    use_linear_projection: bool = False
    upcast_attention: bool = False   # our attention always computes logits in float32
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    transformer_layers_per_block: int = 1
    dtype: str = "float32"
    attention_impl: str = "xla"
    remat: bool = False

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"UNetConfig: {n} block_out_channels but "
                             f"{len(self.down_block_types)} down and "
                             f"{len(self.up_block_types)} up block types")
        for t in self.down_block_types:
            if t not in DOWN_BLOCKS:
                raise ValueError(f"UNetConfig: down block {t!r} not supported ({DOWN_BLOCKS})")
        for t in self.up_block_types:
            if t not in UP_BLOCKS:
                raise ValueError(f"UNetConfig: up block {t!r} not supported ({UP_BLOCKS})")
        if isinstance(self.attention_head_dim, (tuple, list)) and len(
                self.attention_head_dim) != n:
            raise ValueError(f"UNetConfig: attention_head_dim has "
                             f"{len(self.attention_head_dim)} entries for {n} blocks")

    @property
    def heads(self) -> tuple[int, ...]:
        h = self.attention_head_dim
        return tuple(h) if isinstance(h, (tuple, list)) else (h,) * len(self.block_out_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class DownBlock(nn.Module):
    out_channels: int
    heads: int
    cross: bool
    add_downsample: bool
    config: UNetConfig

    @nn.compact
    def __call__(self, x, temb, context):
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        resnet = nn.remat(ResnetBlock2D) if c.remat else ResnetBlock2D
        skips = []
        for j in range(c.layers_per_block):
            x = resnet(self.out_channels, c.norm_num_groups, c.norm_eps, dtype,
                       name=f"resnets_{j}")(x, temb)
            if self.cross:
                x = Transformer2D(self.out_channels, self.heads,
                                  c.transformer_layers_per_block,
                                  c.use_linear_projection, c.norm_num_groups, dtype,
                                  c.attention_impl, name=f"attentions_{j}")(x, context)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, 1, dtype, name="downsamplers_0")(x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    out_channels: int
    heads: int
    cross: bool
    add_upsample: bool
    config: UNetConfig

    @nn.compact
    def __call__(self, x, skips, temb, context):
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        resnet = nn.remat(ResnetBlock2D) if c.remat else ResnetBlock2D
        for j in range(c.layers_per_block + 1):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = resnet(self.out_channels, c.norm_num_groups, c.norm_eps, dtype,
                       name=f"resnets_{j}")(x, temb)
            if self.cross:
                x = Transformer2D(self.out_channels, self.heads,
                                  c.transformer_layers_per_block,
                                  c.use_linear_projection, c.norm_num_groups, dtype,
                                  c.attention_impl, name=f"attentions_{j}")(x, context)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, dtype, name="upsamplers_0")(x)
        return x


class MidBlock(nn.Module):
    channels: int
    heads: int
    config: UNetConfig

    @nn.compact
    def __call__(self, x, temb, context):
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        x = ResnetBlock2D(self.channels, c.norm_num_groups, c.norm_eps, dtype,
                          name="resnets_0")(x, temb)
        x = Transformer2D(self.channels, self.heads, c.transformer_layers_per_block,
                          c.use_linear_projection, c.norm_num_groups, dtype,
                          c.attention_impl, name="attentions_0")(x, context)
        return ResnetBlock2D(self.channels, c.norm_num_groups, c.norm_eps, dtype,
                             name="resnets_1")(x, temb)


class UNet2DConditionModel(nn.Module):
    """(sample [B,h,w,C_in] NHWC, timesteps [B], context [B,L,D]) -> [B,h,w,C_out]."""
    config: UNetConfig

    @nn.compact
    def __call__(self, sample, timesteps, context):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        ch = c.block_out_channels
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), sample.shape[:1])
        t = timestep_embedding(timesteps, ch[0], c.flip_sin_to_cos, c.freq_shift)
        temb = TimestepEmbedding(ch[0] * 4, dtype, name="time_embedding")(t.astype(dtype))
        context = context.astype(dtype)

        x = conv(ch[0], dtype=dtype, name="conv_in")(sample.astype(dtype))
        skips = [x]
        for i, kind in enumerate(c.down_block_types):
            x, s = DownBlock(ch[i], c.heads[i], kind == "CrossAttnDownBlock2D",
                             i < len(ch) - 1, c, name=f"down_blocks_{i}")(x, temb, context)
            skips += s
        x = MidBlock(ch[-1], c.heads[-1], c, name="mid_block")(x, temb, context)
        rev_ch, rev_heads = ch[::-1], c.heads[::-1]
        for i, kind in enumerate(c.up_block_types):
            n = c.layers_per_block + 1
            block_skips, skips = skips[-n:], skips[:-n]
            x = UpBlock(rev_ch[i], rev_heads[i], kind == "CrossAttnUpBlock2D", i < len(ch) - 1,
                        c, name=f"up_blocks_{i}")(x, block_skips, temb, context)
        x = nn.silu(group_norm(c.norm_num_groups, c.norm_eps, "conv_norm_out")(x))
        return conv(c.out_channels, dtype=dtype, name="conv_out")(x.astype(dtype))
