"""UNet2DConditionModel (Stable Diffusion 1.x / 2.x / XL), numerically as diffusers'.

A timestep-conditioned UNet with cross-attention to the text context: conv_in, down
blocks (ResNets, optional Transformer2D, downsample), a mid block, up blocks that consume
the down path's skip connections, conv_out. SDXL adds micro-conditioning
(`addition_embed_type="text_time"`: the pooled text embedding and the size/crop time ids
are embedded and added to the timestep embedding) and a transformer depth per block.
Activations are NHWC. Module names mirror diffusers' (`down_blocks_0/resnets_1/conv1` for
`down_blocks.0.resnets.1.conv1`) so the converter maps keys mechanically. Config field
names are diffusers' config.json names; `diffjax.weights.unet` says which diffusers
options are implemented and refuses the others by name.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.activations import ACTIVATIONS, activation
from diffjax.models.convolution import conv
from diffjax.models.normalization import group_norm
from diffjax.models.resnet_blocks import Downsample2D, ResnetBlock2D, Upsample2D
from diffjax.models.timestep_embedding import TimestepEmbedding, timestep_embedding
from diffjax.models.transformer_blocks import Transformer2D

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
ADDITION_EMBED_TYPES = (None, "text_time")


def _per_block(name, value, n):
    """An int for every block, or a tuple of n ints (diffusers accepts both)."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"UNetConfig: {name} has {len(value)} entries for {n} blocks")
        if any(isinstance(v, (tuple, list)) for v in value):
            raise ValueError(f"UNetConfig: {name}={value!r}: per-layer nesting is not "
                             f"supported")
        return tuple(value)
    return (value,) * n


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
    # Transformer blocks per Transformer2D: one int, or one per down block (the up blocks
    # use them reversed, the mid block the last one), as diffusers.
    transformer_layers_per_block: int | tuple[int, ...] = 1
    # SDXL micro-conditioning: "text_time" embeds time_ids (each a sinusoid of
    # addition_time_embed_dim) beside the pooled text_embeds through `add_embedding`
    # (projection_class_embeddings_input_dim = text width + n_ids * addition_time_embed_dim).
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    # Rarer diffusers options, implemented as diffusers computes them.
    center_input_sample: bool = False        # sample -> 2 sample - 1 first
    downsample_padding: int = 1              # 0: pad (0,1) right/bottom, then a VALID conv
    mid_block_scale_factor: float = 1.0      # the mid block's ResNets divide their sum by it
    act_fn: str = "silu"                     # ResNets, time embedding, conv_out's input
    time_embedding_act_fn: str | None = None  # on temb (after the added embedding)
    timestep_post_act: str | None = None     # after time_embedding.linear_2
    time_embedding_dim: int | None = None    # temb width; None: 4 * block_out_channels[0]
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
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
        _per_block("attention_head_dim", self.attention_head_dim, n)
        _per_block("transformer_layers_per_block", self.transformer_layers_per_block, n)
        for name in ("layers_per_block", "cross_attention_dim"):
            if isinstance(getattr(self, name), (tuple, list)):
                raise ValueError(f"UNetConfig: per-block {name}={getattr(self, name)!r} is "
                                 f"not supported (one int for every block)")
        if self.addition_embed_type not in ADDITION_EMBED_TYPES:
            raise ValueError(f"UNetConfig: addition_embed_type={self.addition_embed_type!r} "
                             f"is not supported ({ADDITION_EMBED_TYPES})")
        if self.addition_embed_type == "text_time" and not (
                self.addition_time_embed_dim and self.projection_class_embeddings_input_dim):
            raise ValueError("UNetConfig: addition_embed_type='text_time' needs "
                             "addition_time_embed_dim and projection_class_embeddings_input_dim")
        for name in ("act_fn", "time_embedding_act_fn", "timestep_post_act"):
            v = getattr(self, name)
            if v is not None and v.lower() not in ACTIVATIONS:
                raise ValueError(f"UNetConfig: {name}={v!r} is not one of "
                                 f"{sorted(ACTIVATIONS)}")
        if self.downsample_padding not in (0, 1):
            raise ValueError(f"UNetConfig: downsample_padding={self.downsample_padding!r} "
                             f"is not 0 or 1")
        for name in ("conv_in_kernel", "conv_out_kernel"):
            if getattr(self, name) % 2 != 1:
                raise ValueError(f"UNetConfig: {name}={getattr(self, name)!r} is not odd")

    @property
    def heads(self) -> tuple[int, ...]:
        """Attention heads per down block (diffusers' `attention_head_dim`)."""
        return _per_block("attention_head_dim", self.attention_head_dim,
                          len(self.block_out_channels))

    @property
    def depths(self) -> tuple[int, ...]:
        """Transformer blocks per down block (`transformer_layers_per_block`)."""
        return _per_block("transformer_layers_per_block", self.transformer_layers_per_block,
                          len(self.block_out_channels))

    @property
    def temb_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def _resnet(c: UNetConfig):
    """The down/up blocks' ResNet class, rematerialised in training when c.remat."""
    return nn.remat(ResnetBlock2D) if c.remat else ResnetBlock2D


class DownBlock(nn.Module):
    out_channels: int
    heads: int
    depth: int
    cross: bool
    add_downsample: bool
    config: UNetConfig

    @nn.compact
    def __call__(self, x, temb, context):
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        resnet = _resnet(c)
        skips = []
        for j in range(c.layers_per_block):
            x = resnet(self.out_channels, c.norm_num_groups, c.norm_eps, dtype, c.act_fn,
                       name=f"resnets_{j}")(x, temb)
            if self.cross:
                x = Transformer2D(self.out_channels, self.heads, self.depth,
                                  c.use_linear_projection, c.norm_num_groups, dtype,
                                  c.attention_impl, name=f"attentions_{j}")(x, context)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, c.downsample_padding, dtype,
                             name="downsamplers_0")(x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    out_channels: int
    heads: int
    depth: int
    cross: bool
    add_upsample: bool
    config: UNetConfig

    @nn.compact
    def __call__(self, x, skips, temb, context, upsample_size=None):
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        resnet = _resnet(c)
        for j in range(c.layers_per_block + 1):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = resnet(self.out_channels, c.norm_num_groups, c.norm_eps, dtype, c.act_fn,
                       name=f"resnets_{j}")(x, temb)
            if self.cross:
                x = Transformer2D(self.out_channels, self.heads, self.depth,
                                  c.use_linear_projection, c.norm_num_groups, dtype,
                                  c.attention_impl, name=f"attentions_{j}")(x, context)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, dtype, name="upsamplers_0")(x, upsample_size)
        return x


class MidBlock(nn.Module):
    channels: int
    heads: int
    depth: int
    config: UNetConfig

    @nn.compact
    def __call__(self, x, temb, context):
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        resnet = lambda name: ResnetBlock2D(  # noqa: E731
            self.channels, c.norm_num_groups, c.norm_eps, dtype, c.act_fn,
            c.mid_block_scale_factor, name=name)
        x = resnet("resnets_0")(x, temb)
        x = Transformer2D(self.channels, self.heads, self.depth,
                          c.use_linear_projection, c.norm_num_groups, dtype,
                          c.attention_impl, name="attentions_0")(x, context)
        return resnet("resnets_1")(x, temb)


def text_time_embedding_input(config: UNetConfig, added_cond):
    """SDXL's `add_embedding` input: [text_embeds, sinusoid of each time id], float32,
    as diffusers' `get_aug_embed` for "text_time". `added_cond` = {"text_embeds": [B, P],
    "time_ids": [B, n]} (diffusers' added_cond_kwargs; n = 6 for the base model's
    original size, crop, target size, 5 for the refiner's with the aesthetic score)."""
    if added_cond is None or "text_embeds" not in added_cond or "time_ids" not in added_cond:
        raise ValueError("UNet with addition_embed_type='text_time' needs added_cond = "
                         "{'text_embeds': [B, P], 'time_ids': [B, n]}")
    text = jnp.asarray(added_cond["text_embeds"], jnp.float32)
    ids = jnp.asarray(added_cond["time_ids"], jnp.float32)
    b, n = ids.shape
    d = config.addition_time_embed_dim
    if text.shape[-1] + n * d != config.projection_class_embeddings_input_dim:
        raise ValueError(f"UNet text_time conditioning: text_embeds width {text.shape[-1]} + "
                         f"{n} time ids x addition_time_embed_dim {d} != "
                         f"projection_class_embeddings_input_dim "
                         f"{config.projection_class_embeddings_input_dim}")
    t = timestep_embedding(ids.reshape(-1), d, config.flip_sin_to_cos, config.freq_shift)
    return jnp.concatenate([text, t.reshape(b, n * d)], axis=-1)


class UNet2DConditionModel(nn.Module):
    """(sample [B,h,w,C_in] NHWC, timesteps [B], context [B,L,D], added_cond) ->
    [B,h,w,C_out], for any h, w (the up path upsamples to each skip connection's size).

    `added_cond` is diffusers' `added_cond_kwargs` as a dict of arrays, needed when
    `addition_embed_type="text_time"` (SDXL) and ignored otherwise."""
    config: UNetConfig

    @nn.compact
    def __call__(self, sample, timesteps, context, added_cond=None):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        ch = c.block_out_channels
        if c.center_input_sample:
            sample = 2 * sample - 1.0
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), sample.shape[:1])
        t = timestep_embedding(timesteps, ch[0], c.flip_sin_to_cos, c.freq_shift)
        temb = TimestepEmbedding(c.temb_dim, dtype, c.act_fn, c.timestep_post_act,
                                 name="time_embedding")(t.astype(dtype))
        if c.addition_embed_type == "text_time":
            add = text_time_embedding_input(c, added_cond)
            temb = temb + TimestepEmbedding(c.temb_dim, dtype, name="add_embedding")(
                add.astype(dtype))
        if c.time_embedding_act_fn is not None:
            temb = activation(c.time_embedding_act_fn)(temb)
        context = context.astype(dtype)

        k = c.conv_in_kernel
        x = conv(ch[0], k, padding=(k - 1) // 2, dtype=dtype, name="conv_in")(
            sample.astype(dtype))
        skips = [x]
        for i, kind in enumerate(c.down_block_types):
            x, s = DownBlock(ch[i], c.heads[i], c.depths[i], kind == "CrossAttnDownBlock2D",
                             i < len(ch) - 1, c, name=f"down_blocks_{i}")(x, temb, context)
            skips += s
        x = MidBlock(ch[-1], c.heads[-1], c.depths[-1], c, name="mid_block")(x, temb, context)
        rev_ch, rev_heads, rev_depths = ch[::-1], c.heads[::-1], c.depths[::-1]
        for i, kind in enumerate(c.up_block_types):
            n = c.layers_per_block + 1
            block_skips, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[1:3] if skips else None
            x = UpBlock(rev_ch[i], rev_heads[i], rev_depths[i], kind == "CrossAttnUpBlock2D",
                        i < len(ch) - 1, c, name=f"up_blocks_{i}")(
                x, block_skips, temb, context, size)
        x = activation(c.act_fn)(group_norm(c.norm_num_groups, c.norm_eps, "conv_norm_out")(x))
        k = c.conv_out_kernel
        return conv(c.out_channels, k, padding=(k - 1) // 2, dtype=dtype, name="conv_out")(
            x.astype(dtype))
