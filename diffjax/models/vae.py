"""AutoencoderKL (Rombach et al. 2022), numerically as diffusers'.

encode: image [B,H,W,3] in [-1,1] -> DiagonalGaussian over latents [B,H/f,W/f,C];
decode: latents -> image. The UNet works on `scaling_factor * latents` (0.18215 for SD,
0.13025 for SDXL), or on `(latents - latents_mean) * scaling_factor / latents_std` when
the config has per-channel statistics (`to_unet_latents` / `from_unet_latents`). Module
names mirror diffusers'. NHWC.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.activations import ACTIVATIONS
from diffjax.models.convolution import conv
from diffjax.models.normalization import group_norm
from diffjax.models.resnet_blocks import Downsample2D, ResnetBlock2D, Upsample2D
from diffjax.models.transformer_blocks import Attention


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215
    # Per-latent-channel statistics (diffusers' names; None: scaling_factor alone).
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    # diffusers runs a float16/bf16 VAE in float32 when set (SD/SDXL's VAE overflows in
    # half precision); the pipeline reads it.
    force_upcast: bool = True
    act_fn: str = "silu"                 # the ResNets' activation (conv_out's stays SiLU)
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    dtype: str = "float32"
    attention_impl: str = "xla"

    def __post_init__(self):
        if self.act_fn.lower() not in ACTIVATIONS:
            raise ValueError(f"VAEConfig: act_fn={self.act_fn!r} is not one of "
                             f"{sorted(ACTIVATIONS)}")
        for name in ("latents_mean", "latents_std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.latent_channels:
                raise ValueError(f"VAEConfig: {name} has {len(v)} entries for "
                                 f"{self.latent_channels} latent channels")
        if (self.latents_mean is None) != (self.latents_std is None):
            raise ValueError("VAEConfig: latents_mean and latents_std come together")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def to_unet_latents(config: VAEConfig, z):
    """VAE latents [..., C] -> the UNet's latent space (diffusers' img2img encode path)."""
    if config.latents_mean is None:
        return z * config.scaling_factor
    mean = jnp.asarray(config.latents_mean, z.dtype)
    std = jnp.asarray(config.latents_std, z.dtype)
    return (z - mean) * config.scaling_factor / std


def from_unet_latents(config: VAEConfig, latents):
    """The UNet's latents [..., C] -> VAE latents, before decoding (as diffusers' SDXL
    pipelines: `latents * std / scaling_factor + mean` when the config has the statistics)."""
    if config.latents_mean is None:
        return latents / config.scaling_factor
    mean = jnp.asarray(config.latents_mean, latents.dtype)
    std = jnp.asarray(config.latents_std, latents.dtype)
    return latents * std / config.scaling_factor + mean


@dataclasses.dataclass(frozen=True)
class DiagonalGaussian:
    mean: jax.Array
    logvar: jax.Array   # clipped to [-30, 20] as diffusers

    @property
    def std(self):
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key):
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self):
        return self.mean


jax.tree_util.register_dataclass(DiagonalGaussian, data_fields=["mean", "logvar"],
                                 meta_fields=[])


class VAEMidBlock(nn.Module):
    channels: int
    groups: int
    dtype: jnp.dtype
    impl: str = "xla"
    act: str = "silu"
    add_attention: bool = True

    @nn.compact
    def __call__(self, x):
        x = ResnetBlock2D(self.channels, self.groups, 1e-6, self.dtype, self.act,
                          name="resnets_0")(x)
        if self.add_attention:
            b, h, w, c = x.shape
            x = Attention(1, c, c, qkv_bias=True, dtype=self.dtype, impl=self.impl,
                          norm_groups=self.groups, name="attentions_0")(
                x.reshape(b, h * w, c)).reshape(b, h, w, c)
        return ResnetBlock2D(self.channels, self.groups, 1e-6, self.dtype, self.act,
                             name="resnets_1")(x)


class Encoder(nn.Module):
    config: VAEConfig

    @nn.compact
    def __call__(self, x):
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        ch = c.block_out_channels
        x = conv(ch[0], dtype=dtype, name="conv_in")(x.astype(dtype))
        for i, out in enumerate(ch):
            for j in range(c.layers_per_block):
                x = ResnetBlock2D(out, c.norm_num_groups, 1e-6, dtype, c.act_fn,
                                  name=f"down_blocks_{i}_resnets_{j}")(x)
            if i < len(ch) - 1:
                x = Downsample2D(out, 0, dtype, name=f"down_blocks_{i}_downsamplers_0")(x)
        x = VAEMidBlock(ch[-1], c.norm_num_groups, dtype, c.attention_impl, c.act_fn,
                        c.mid_block_add_attention, name="mid_block")(x)
        x = nn.silu(group_norm(c.norm_num_groups, 1e-6, "conv_norm_out")(x))
        return conv(2 * c.latent_channels, dtype=dtype, name="conv_out")(x.astype(dtype))


class Decoder(nn.Module):
    config: VAEConfig

    @nn.compact
    def __call__(self, z):
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        ch = c.block_out_channels[::-1]
        x = conv(ch[0], dtype=dtype, name="conv_in")(z.astype(dtype))
        x = VAEMidBlock(ch[0], c.norm_num_groups, dtype, c.attention_impl, c.act_fn,
                        c.mid_block_add_attention, name="mid_block")(x)
        for i, out in enumerate(ch):
            for j in range(c.layers_per_block + 1):
                x = ResnetBlock2D(out, c.norm_num_groups, 1e-6, dtype, c.act_fn,
                                  name=f"up_blocks_{i}_resnets_{j}")(x)
            if i < len(ch) - 1:
                x = Upsample2D(out, dtype, name=f"up_blocks_{i}_upsamplers_0")(x)
        x = nn.silu(group_norm(c.norm_num_groups, 1e-6, "conv_norm_out")(x))
        return conv(c.out_channels, dtype=dtype, name="conv_out")(x.astype(dtype))


class AutoencoderKL(nn.Module):
    config: VAEConfig

    def setup(self):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = (conv(2 * c.latent_channels, 1, padding=0, dtype=dtype)
                           if c.use_quant_conv else lambda x: x)
        self.post_quant_conv = (conv(c.latent_channels, 1, padding=0, dtype=dtype)
                                if c.use_post_quant_conv else lambda x: x)

    def encode(self, x) -> DiagonalGaussian:
        moments = self.quant_conv(self.encoder(x)).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return DiagonalGaussian(mean, jnp.clip(logvar, -30.0, 20.0))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z)).astype(jnp.float32)

    def __call__(self, x, key=None):
        posterior = self.encode(x)
        z = posterior.mode() if key is None else posterior.sample(key)
        return self.decode(z)
