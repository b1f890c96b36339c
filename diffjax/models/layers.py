"""Building blocks shared by the CLIP, UNet and VAE modules.

The attention function lives here once so that every model picks its kernel the same way
(`impl`), and the logical axis names live here so that the sharding rules in configs can
name them without importing model code.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------------------------------
# Logical axis names. Weights and activations are annotated with these; the config's rule
# table (diffjax.sharding) maps them to mesh axes ('data', 'fsdp', 'tensor').
# ---------------------------------------------------------------------------------------
BATCH = "activation_batch"
LENGTH = "activation_length"
EMBED = "embed"          # model width (d_model / channels of a projection's input)
HEADS = "heads"          # fused heads*head_dim output of q/k/v, input of the out projection
MLP = "mlp"              # hidden width of feed-forward blocks
VOCAB = "vocab"          # token table rows
CONV_IN = "conv_in"      # input channels of a convolution
CONV_OUT = "conv_out"    # output channels of a convolution
NORM = "norm"            # scales/biases of normalisation layers (replicated)
POSITION = "position"    # position-embedding rows (replicated)

ATTENTION_IMPLS = ("auto", "xla", "cudnn", "chunked")


def _xla_attention(q, k, v, mask, scale):
    """softmax(q k^T * scale) v with the logits and softmax in float32.

    bf16 logits overflow and lose the small probabilities that matter for long contexts, so
    the softmax always runs in float32 and only the value product uses the input dtype.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


# Elements of one float32 logits block of the chunked kernel (16 MB): small enough to stay
# in a CPU's last-level cache between the two matmuls and the softmax, big enough that
# the loop over blocks costs little. Measured on a 2-core x86 VM, SD1.5's 4096-token
# self-attention: 16 MB blocks 0.37 s, 64 MB 0.70 s, the whole [2, 8, 4096, 4096] 0.99 s.
CHUNK_BLOCK_ELEMENTS = 1 << 22


def _chunked_attention(q, k, v, mask, scale, chunk_size):
    """Attention over blocks of `chunk_size` query rows of a group of (batch, head) pairs,
    each against all keys, so the [Lq, Lk] logits never exist whole.

    Two reasons, one kernel: peak memory is one block instead of batch*heads*Lq*Lk (what
    makes 1024^2 images, Lq = 16384, fit), and on CPU a block that stays in cache runs the
    softmax at compute speed instead of streaming a 1 GB logits tensor through memory three
    times (2.7x faster than "xla" on SD1.5's 64x64 self-attention). The group is the most
    (batch, head) pairs whose block fits CHUNK_BLOCK_ELEMENTS. Each row's softmax is whole,
    so results equal `_xla_attention` up to float reassociation.
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    if b * h * lq * lk <= CHUNK_BLOCK_ELEMENTS:
        return _xla_attention(q, k, v, mask, scale)
    rows = min(chunk_size, lq)
    group = max(g for g in range(1, b * h + 1)
                if (b * h) % g == 0 and (g == 1 or g * rows * lk <= CHUNK_BLOCK_ELEMENTS))
    n_rows, n_groups = -(-lq // rows), b * h // group
    pad = n_rows * rows - lq

    def heads_first(x):  # [b, L, h, d] -> [groups, group, L, d]
        return x.transpose(0, 2, 1, 3).reshape(n_groups, group, x.shape[1], d)

    qg = jnp.pad(heads_first(q), ((0, 0), (0, 0), (0, pad), (0, 0)))
    q_blocks = qg.reshape(n_groups, group, n_rows, rows, d).transpose(0, 2, 1, 3, 4)
    q_blocks = q_blocks.reshape(n_groups * n_rows, group, rows, d)  # contiguous blocks
    kg, vg = heads_first(k), heads_first(v)
    if mask is not None:
        mask = jnp.broadcast_to(mask, (b, h, lq, lk)).reshape(n_groups, group, lq, lk)
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=True)
        mask = mask.reshape(n_groups, group, n_rows, rows, lk).transpose(0, 2, 1, 3, 4)
        mask = mask.reshape(n_groups * n_rows, group, rows, lk)

    def block(index):
        # The softmax's division waits until after the value product: [rows, d] divides
        # instead of [rows, Lk]. Logits and the row sums stay float32, as in _xla_attention.
        kb, vb = kg[index // n_rows], vg[index // n_rows]
        logits = jnp.einsum("gqd,gkd->gqk", q_blocks[index], kb,
                            preferred_element_type=jnp.float32) * scale
        if mask is not None:
            logits = jnp.where(mask[index], logits, jnp.finfo(jnp.float32).min)
        p = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
        out = jnp.einsum("gqk,gkd->gqd", p.astype(v.dtype), vb,
                         preferred_element_type=jnp.float32)
        return (out / p.sum(axis=-1, keepdims=True)).astype(v.dtype)

    out = jax.lax.map(block, jnp.arange(n_groups * n_rows))     # [blocks, group, rows, d]
    out = out.reshape(n_groups, n_rows, group, rows, d).transpose(0, 2, 1, 3, 4)
    out = out.reshape(b, h, n_rows * rows, d)[:, :, :lq]
    return out.transpose(0, 2, 1, 3)


def resolve_attention_impl(impl: str) -> str:
    """"auto" picks the fastest kernel measured for the backend: cuDNN flash attention on
    GPU, the cache-sized chunked kernel on CPU, XLA's fused einsum elsewhere (TPU)."""
    if impl != "auto":
        return impl
    return {"gpu": "cudnn", "cpu": "chunked"}.get(jax.default_backend(), "xla")


def attention(q, k, v, *, mask=None, is_causal: bool = False, impl: str = "xla",
              scale: float | None = None, chunk_size: int = 512):
    """Multi-head dot-product attention; the one attention entry point of diffjax.

    Args:
      q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, heads, head_dim].
      mask: optional boolean, broadcastable to [batch, heads, q_len, kv_len]; True attends.
      is_causal: add a causal (lower-triangular) mask, as CLIP's text tower needs.
      impl: "xla" (einsum + float32 softmax, every backend), "cudnn"
        (`jax.nn.dot_product_attention`, cuDNN flash attention on GPU; on other backends
        XLA's own lowering of the same op), "chunked" (blocks of query rows, low memory,
        fastest on CPU) or "auto" (per backend, `resolve_attention_impl`).
      scale: logit scale, 1/sqrt(head_dim) by default.
    Returns: [batch, q_len, heads, head_dim] in v's dtype.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")
    impl = resolve_attention_impl(impl)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if is_causal:
        causal = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), dtype=bool))[None, None]
        mask = causal if mask is None else jnp.logical_and(mask, causal)
    if impl == "cudnn":
        on_gpu = jax.default_backend() == "gpu"
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, scale=scale,
            implementation="cudnn" if on_gpu and q.dtype in (jnp.float16, jnp.bfloat16)
            else None)
    if impl == "chunked":
        return _chunked_attention(q, k, v, mask, scale, chunk_size)
    return _xla_attention(q, k, v, mask, scale)


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


# ---------------------------------------------------------------------------------------
# Convolutional and transformer blocks shared by the UNet and the VAE (diffusers' layouts;
# module names mirror diffusers' so weights map key by key). Activations are NHWC.
# ---------------------------------------------------------------------------------------
import flax.linen as nn  # noqa: E402


# Stride-1 convolutions on at most this many input pixels run as one matmul over the
# 3x3 patches (im2col) on CPU. Measured on a 2-core x86 VM, float32, batch 2, one conv
# alone: 16x16x1280 69 ms as im2col against 115 ms as XLA's convolution, but 32x32x640
# 96 ms against 62 and 64x64x320 121 ms against 63. In SD1.5's whole UNet call, though
# (fusion with the neighbouring ops): 8.1-8.5 s with im2col up to 32x32, 8.5-8.7 s up to
# 16x16, 9.3-9.5 s without.
IM2COL_MAX_PIXELS = 1024
# ... and only from this many input channels: with few channels the 9 shifted copies cost
# more than XLA's kernel loses. Measured on a 2-core x86 VM (AMD EPYC, AVX-512), float32,
# one value_and_grad step at batch 32: the mini VAE (16-64 channels, 32x32 pixels) 0.313 s
# with XLA's convolution against 0.380 s with im2col; the mini UNet (64-256 channels, 8x8
# and 4x4) 0.293 s against 0.295 s. SD1.5's convolutions (>= 320 channels) are unaffected.
IM2COL_MIN_IN_CHANNELS = 256


def _conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                          rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                          precision=None, **kwargs):
    """`lax.conv_general_dilated` with a faster lowering of small stride-1 NHWC convs on
    CPU, where XLA's convolution kernel reaches about half its matmul speed; every other
    backend and shape goes to XLA's convolution unchanged. Same signature, same result up to
    float reassociation of the 9*C_in-term sums."""
    kh, kw, c_in, c_out = rhs.shape
    n, h, w, _ = lhs.shape
    plain = (jax.default_backend() != "cpu" or tuple(window_strides) != (1, 1)
             or (kh, kw) == (1, 1) or h * w > IM2COL_MAX_PIXELS or feature_group_count != 1
             or c_in < IM2COL_MIN_IN_CHANNELS
             or (dimension_numbers is not None
                 and tuple(dimension_numbers.lhs_spec) != (0, 3, 1, 2))  # not NHWC
             or any(d not in (None, 1) for d in (*(lhs_dilation or ()),
                                                  *(rhs_dilation or ())))
             or isinstance(padding, str))
    if plain:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision, **kwargs)
    x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    patches = jnp.concatenate([x[:, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw)],
                              axis=-1)                                 # [n, oh, ow, 9*c_in]
    out = jnp.dot(patches.reshape(-1, kh * kw * c_in), rhs.reshape(kh * kw * c_in, c_out),
                  precision=precision, **kwargs)
    return out.reshape(n, oh, ow, c_out)


def conv(features, kernel=3, stride=1, padding=1, dtype=jnp.float32, name=None):
    pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad,
                   dtype=dtype, name=name, conv_general_dilated=_conv_general_dilated,
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.lecun_normal(),
                       (None, None, CONV_IN, CONV_OUT)),  # kernel h, w: replicated
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (CONV_OUT,)))


def dense(features, axes=(EMBED, MLP), use_bias=True, dtype=jnp.float32, name=None):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.lecun_normal(), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


def group_norm(groups, eps, name=None):
    """GroupNorm with float32 statistics (bf16 variance over 64x64x320 loses digits)."""
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=jnp.float32, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (NORM,)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (NORM,)))


def layer_norm(eps, name=None):
    return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (NORM,)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (NORM,)))


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
