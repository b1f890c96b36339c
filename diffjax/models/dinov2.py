"""DINOv2 ViT (Oquab et al. 2023), numerically as transformers' `Dinov2Model`.

The feature extractor of FD-DINOv2, the metric EDM2 (Karras et al. 2024) and Stein et al.
2023 recommend over Inception FID: a pre-LN ViT with LayerScale, whose CLS token after the
final layer norm is the image's feature. Parameter names mirror transformers 5's module names
(`encoder/layer_3/attention/q_proj`, `layer_scale1/lambda1`, `mlp/fc1` or the SwiGLU
`gate_proj`/`up_proj`/`down_proj` of ViT-g), so `diffjax.weights.dinov2` is a key-by-key map.

Position embeddings are learned on a 37x37 grid (518 px); inputs of another size get them
resized as transformers does: bicubic (A = -0.75, align_corners=False, no antialias), the
CLS position kept, as two constant matrices.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.attention import attention
from diffjax.models.normalization import layer_norm

ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "silu": jax.nn.silu,
               "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
    hidden_size: int = 1024          # defaults: ViT-L/14 (dinov2-large, FD-DINOv2's)
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 14
    image_size: int = 518
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    use_swiglu_ffn: bool = False
    hidden_act: str = "gelu"
    dtype: str = "float32"
    attention_impl: str = "xla"

    @property
    def mlp_hidden(self) -> int:
        h = int(self.hidden_size * self.mlp_ratio)
        return (int(h * 2 / 3) + 7) // 8 * 8 if self.use_swiglu_ffn else h


def torch_bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of torch's bicubic (A = -0.75, align_corners=False, no
    antialias) along one axis; taps beyond the edge are clamped to it, as torch reads them."""
    a = -0.75
    scale = np.float32(size_in / size_out)
    dst = np.arange(size_out, dtype=np.float64)
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)   # not clamped (cubic)
    i0 = np.floor(src).astype(np.int64)
    t = (src - i0).astype(np.float64)
    conv1 = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1                  # noqa: E731 |x|<=1
    conv2 = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a            # noqa: E731 1<|x|<2
    w = np.stack([conv2(t + 1), conv1(t), conv1(1 - t), conv2(2 - t)], -1).astype(np.float32)
    m = np.zeros((size_out, size_in), np.float32)
    for k in range(4):
        np.add.at(m, (np.arange(size_out), np.clip(i0 - 1 + k, 0, size_in - 1)), w[:, k])
    return m


class Dinov2Layer(nn.Module):
    config: Dinov2Config

    @nn.compact
    def __call__(self, x):
        c = self.config
        dt = jnp.dtype(c.dtype)
        def dense(n, name, bias=True):
            return nn.Dense(n, use_bias=bias, dtype=dt, name=name)
        b, n, d = x.shape
        hd = d // c.num_attention_heads
        h = layer_norm(c.layer_norm_eps, "norm1")(x).astype(dt)
        q, k, v = (dense(d, f"{p}_proj", c.qkv_bias)(h).reshape(b, n, c.num_attention_heads, hd)
                   for p in ("q", "k", "v"))
        h = attention(q, k, v, impl=c.attention_impl).reshape(b, n, d)
        h = dense(d, "o_proj")(h)
        x = x + h * self.param("layer_scale1", nn.initializers.ones, (d,)).astype(dt)
        h = layer_norm(c.layer_norm_eps, "norm2")(x).astype(dt)
        if c.use_swiglu_ffn:
            h = jax.nn.silu(dense(c.mlp_hidden, "gate_proj")(h)) * dense(c.mlp_hidden,
                                                                         "up_proj")(h)
            h = dense(d, "down_proj")(h)
        else:
            h = dense(d, "fc2")(ACTIVATIONS[c.hidden_act](dense(c.mlp_hidden, "fc1")(h)))
        return x + h * self.param("layer_scale2", nn.initializers.ones, (d,)).astype(dt)


class Dinov2Model(nn.Module):
    """pixels [B, H, W, 3] (ImageNet-normalised; H, W multiples of patch_size) ->
    (last_hidden_state [B, 1 + P, D] after the final layer norm, pooled CLS [B, D])."""
    config: Dinov2Config = Dinov2Config()

    @nn.compact
    def __call__(self, pixels):
        c = self.config
        dt = jnp.dtype(c.dtype)
        p = c.patch_size
        x = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=dt,
                    name="patch_embedding")(pixels.astype(dt))
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        cls = self.param("cls_token", nn.initializers.normal(0.02), (d,))
        grid = c.image_size // p
        pos = self.param("position_embeddings", nn.initializers.normal(0.02),
                         (grid * grid + 1, d))
        patch_pos = pos[1:]
        if (gh, gw) != (grid, grid) or gh != gw:
            hi = jax.lax.Precision.HIGHEST
            g = patch_pos.reshape(grid, grid, d).astype(jnp.float32)
            g = jnp.einsum("oh,hwd->owd", torch_bicubic_matrix(grid, gh), g, precision=hi)
            g = jnp.einsum("pw,owd->opd", torch_bicubic_matrix(grid, gw), g, precision=hi)
            patch_pos = g.reshape(gh * gw, d)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dt), (b, 1, d)), x], 1)
        x = x + jnp.concatenate([pos[:1], patch_pos], 0)[None].astype(dt)
        for i in range(c.num_hidden_layers):
            x = Dinov2Layer(c, name=f"layer_{i}")(x)
        x = layer_norm(c.layer_norm_eps, "layernorm")(x)
        return x, x[:, 0]
