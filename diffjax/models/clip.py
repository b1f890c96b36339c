"""CLIP text and vision transformers (Radford et al. 2021), numerically as transformers'.

Pre-LN transformer blocks (LN -> attention -> residual, LN -> MLP -> residual); the text
tower is causal and pools at the end-of-text token, the vision tower embeds patches,
prepends a class token and pools it. Parameter names mirror transformers' module names so
the converter (`diffjax.weights.clip`) is a key-by-key mapping. Layer norms and the
softmax run in float32 whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.attention import attention
from diffjax.models.axes import CONV_IN, EMBED, HEADS, MLP, POSITION, VOCAB
from diffjax.models.normalization import layer_norm

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # None (or 0, stored as None): no text_projection (CLIPTextModel); else the width of
    # CLIPTextModelWithProjection's bias-free text_projection (SDXL's bigG tower: 1280).
    # Test it by truthiness (`if config.projection_dim:`).
    projection_dim: int | None = None
    eos_token_id: int = 2               # 2: legacy rule, pool at argmax(ids)
    pad_token_id: int = 1
    dtype: str = "float32"
    attention_impl: str = "xla"

    def __post_init__(self):
        if self.projection_dim == 0:
            object.__setattr__(self, "projection_dim", None)
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIPTextConfig: hidden_act={self.hidden_act!r} is not one of "
                             f"{sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIPTextConfig: hidden_size {self.hidden_size} is not a "
                             f"multiple of num_attention_heads {self.num_attention_heads}")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = 768
    dtype: str = "float32"
    attention_impl: str = "xla"


def _dense(features, axes, name, dtype, use_bias=True):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.normal(0.02), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class CLIPAttention(nn.Module):
    hidden_size: int
    num_heads: int
    dtype: jnp.dtype
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x, causal: bool, mask=None):
        b, n, _ = x.shape
        hd = self.hidden_size // self.num_heads
        q, k, v = (_dense(self.hidden_size, (EMBED, HEADS), f"{p}_proj", self.dtype)(x)
                   .reshape(b, n, self.num_heads, hd) for p in ("q", "k", "v"))
        out = attention(q, k, v, mask=mask, is_causal=causal, impl=self.attention_impl)
        out = out.reshape(b, n, self.hidden_size)
        return _dense(self.hidden_size, (HEADS, EMBED), "out_proj", self.dtype)(out)


class CLIPEncoderLayer(nn.Module):
    hidden_size: int
    intermediate_size: int
    num_heads: int
    act: str
    eps: float
    dtype: jnp.dtype
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x, causal: bool, mask=None):
        h = layer_norm(self.eps, "layer_norm1")(x).astype(self.dtype)
        x = x + CLIPAttention(self.hidden_size, self.num_heads, self.dtype, self.attention_impl,
                              name="self_attn")(h, causal, mask)
        h = layer_norm(self.eps, "layer_norm2")(x).astype(self.dtype)
        h = _dense(self.intermediate_size, (EMBED, MLP), "fc1", self.dtype)(h)
        h = ACTIVATIONS[self.act](h)
        h = _dense(self.hidden_size, (MLP, EMBED), "fc2", self.dtype)(h)
        return x + h


class CLIPEncoder(nn.Module):
    """The transformer stack; returns every layer's input and the final output."""
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    act: str
    eps: float
    dtype: jnp.dtype
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x, causal: bool, mask=None):
        hidden = [x]
        for i in range(self.num_layers):
            x = CLIPEncoderLayer(self.hidden_size, self.intermediate_size, self.num_heads,
                                 self.act, self.eps, self.dtype, self.attention_impl,
                                 name=f"layers_{i}")(x, causal, mask)
            hidden.append(x)
        return tuple(hidden)


@dataclasses.dataclass(frozen=True)
class TextOutput:
    last_hidden_state: jax.Array          # [B, L, D], after the final layer norm
    hidden_states: tuple[jax.Array, ...]  # embeddings, then each layer's output (no final LN)
    pooled_output: jax.Array              # [B, D] at the end-of-text token
    text_embeds: jax.Array | None         # [B, projection_dim] when projected
    context: jax.Array                    # the UNet context (see CLIPTextModel)

    @property
    def pooled(self) -> jax.Array:
        """The pooled text embedding SDXL's UNet gets: the end-of-text token's final-LN
        state, through text_projection when the tower has one ([B, projection_dim]; else
        [B, D]). transformers' `CLIPTextModelWithProjection(...).text_embeds`."""
        return self.pooled_output if self.text_embeds is None else self.text_embeds


jax.tree_util.register_dataclass(TextOutput, data_fields=[
    "last_hidden_state", "hidden_states", "pooled_output", "text_embeds", "context"],
    meta_fields=[])

CONTEXT_STYLES = ("sd", "sdxl")


def eos_positions(ids, eos_token_id: int):
    """Where transformers pools: argmax(ids) under the legacy config (eos_token_id == 2,
    because <|endoftext|> has the largest id), else the first occurrence of eos_token_id."""
    if eos_token_id == 2:
        return jnp.argmax(ids, axis=-1)
    return jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)


class CLIPTextModel(nn.Module):
    """ids [B, L] int -> TextOutput; `text_embeds` when config.projection_dim is set.

    `clip_skip` = k selects the UNet context as diffusers' pipelines do:
    - context_style "sd" (SD 1.x/2.x, `StableDiffusionPipeline.encode_prompt`): the final
      layer norm applied to the output of layer L-k (k = 0: last_hidden_state);
    - context_style "sdxl" (`StableDiffusionXLPipeline.encode_prompt`): the output of layer
      L-1-k WITHOUT the final layer norm, `hidden_states[-(k + 2)]` (k = 0: penultimate).
    """
    config: CLIPTextConfig

    @nn.compact
    def __call__(self, ids, attention_mask=None, clip_skip: int = 0,
                 context_style: str = "sd"):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        tok = nn.Embed(c.vocab_size, c.hidden_size, dtype=dtype, name="token_embedding",
                       embedding_init=nn.with_logical_partitioning(
                           nn.initializers.normal(0.02), (VOCAB, EMBED)))
        pos = self.param("position_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.01), (POSITION, EMBED)),
            (c.max_position_embeddings, c.hidden_size))
        x = tok(ids) + pos[None, :ids.shape[1]].astype(dtype)
        mask = None
        if attention_mask is not None:  # padding mask, as transformers applies it
            mask = attention_mask[:, None, None, :].astype(bool)
        hidden = CLIPEncoder(c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                             c.num_attention_heads, c.hidden_act, c.layer_norm_eps, dtype,
                             c.attention_impl, name="encoder")(x, True, mask)
        final_ln = layer_norm(c.layer_norm_eps, "final_layer_norm")
        last = final_ln(hidden[-1])
        if context_style == "sdxl":
            context = hidden[-(clip_skip + 2)]
        elif context_style == "sd":
            context = last if clip_skip == 0 else final_ln(hidden[-1 - clip_skip])
        else:
            raise ValueError(f"context_style {context_style!r} is not one of {CONTEXT_STYLES}")
        pooled = last[jnp.arange(ids.shape[0]), eos_positions(ids, c.eos_token_id)]
        embeds = None
        if c.projection_dim is not None:
            embeds = _dense(c.projection_dim, (EMBED, HEADS), "text_projection", jnp.float32,
                            use_bias=False)(pooled)
        return TextOutput(last, hidden, pooled, embeds, context)


@dataclasses.dataclass(frozen=True)
class VisionOutput:
    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...]
    pooled_output: jax.Array          # post-LN class token
    image_embeds: jax.Array | None


jax.tree_util.register_dataclass(VisionOutput, data_fields=[
    "last_hidden_state", "hidden_states", "pooled_output", "image_embeds"], meta_fields=[])


class CLIPVisionModel(nn.Module):
    """pixels [B, H, W, 3] (normalised as CLIP expects) -> VisionOutput."""
    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixels):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        patches = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size),
                          strides=(c.patch_size, c.patch_size), padding="VALID", use_bias=False,
                          dtype=dtype, name="patch_embedding",
                          kernel_init=nn.with_logical_partitioning(
                              nn.initializers.normal(0.02),
                              (None, None, CONV_IN, EMBED)))(pixels.astype(dtype))
        b = patches.shape[0]
        patches = patches.reshape(b, -1, c.hidden_size)
        cls = self.param("class_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (EMBED,)), (c.hidden_size,))
        n_pos = (c.image_size // c.patch_size) ** 2 + 1
        pos = self.param("position_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (POSITION, EMBED)), (n_pos, c.hidden_size))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, c.hidden_size)),
                             patches], axis=1) + pos[None].astype(dtype)
        x = layer_norm(c.layer_norm_eps, "pre_layrnorm")(x)
        hidden = CLIPEncoder(c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                             c.num_attention_heads, c.hidden_act, c.layer_norm_eps, dtype,
                             c.attention_impl, name="encoder")(x, False)
        pooled = layer_norm(c.layer_norm_eps, "post_layernorm")(hidden[-1][:, 0])
        embeds = None
        if c.projection_dim is not None:
            embeds = _dense(c.projection_dim, (EMBED, HEADS), "visual_projection", jnp.float32,
                            use_bias=False)(pooled)
        return VisionOutput(hidden[-1], hidden, pooled, embeds)


class CLIPModel(nn.Module):
    """Both towers and the learned temperature: logits = exp(logit_scale) cos(text, image)."""
    text: CLIPTextConfig
    vision: CLIPVisionConfig

    def setup(self):
        self.text_model = CLIPTextModel(self.text)
        self.vision_model = CLIPVisionModel(self.vision)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(2.6592), ())

    def __call__(self, ids, pixels):
        t = self.text_model(ids).text_embeds
        v = self.vision_model(pixels).image_embeds
        t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
        v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
        return jnp.exp(self.logit_scale) * t @ v.T   # [texts, images]
