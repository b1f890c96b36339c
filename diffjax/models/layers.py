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
KERNEL_SPATIAL = "kernel_spatial"  # conv kernel height/width (replicated)
POSITION = "position"    # position-embedding rows (replicated)

ATTENTION_IMPLS = ("xla", "cudnn", "chunked")


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


def _chunked_attention(q, k, v, mask, scale, chunk_size):
    """Attention computed over query chunks so the [Lq, Lk] logits never exist whole.

    Peak memory is O(chunk_size * Lk) per head instead of O(Lq * Lk): what makes 1024^2
    images (Lq = 16384 in the first UNet block) fit. Results equal `_xla_attention` up to
    float reassociation (each query row's softmax is computed whole).
    """
    lq = q.shape[1]
    if lq <= chunk_size:
        return _xla_attention(q, k, v, mask, scale)
    n_chunks = -(-lq // chunk_size)
    pad = n_chunks * chunk_size - lq
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q_chunks = qp.reshape(q.shape[0], n_chunks, chunk_size, *q.shape[2:]).swapaxes(0, 1)
    if mask is not None:
        mask = jnp.broadcast_to(mask, (mask.shape[0], mask.shape[1], lq, k.shape[1]))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=True)
        m_chunks = mask.reshape(mask.shape[0], mask.shape[1], n_chunks, chunk_size, -1)
        m_chunks = jnp.moveaxis(m_chunks, 2, 0)
        out = jax.lax.map(lambda qm: _xla_attention(qm[0], k, v, qm[1], scale),
                          (q_chunks, m_chunks))
    else:
        out = jax.lax.map(lambda qc: _xla_attention(qc, k, v, None, scale), q_chunks)
    out = out.swapaxes(0, 1).reshape(q.shape[0], n_chunks * chunk_size, *q.shape[2:])
    return out[:, :lq]


def attention(q, k, v, *, mask=None, is_causal: bool = False, impl: str = "xla",
              scale: float | None = None, chunk_size: int = 1024):
    """Multi-head dot-product attention; the one attention entry point of diffjax.

    Args:
      q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, heads, head_dim].
      mask: optional boolean, broadcastable to [batch, heads, q_len, kv_len]; True attends.
      is_causal: add a causal (lower-triangular) mask, as CLIP's text tower needs.
      impl: "xla" (einsum + float32 softmax, every backend), "cudnn"
        (`jax.nn.dot_product_attention`, cuDNN flash attention on GPU; on other backends
        XLA's own lowering of the same op), or "chunked" (query-chunked, low memory).
      scale: logit scale, 1/sqrt(head_dim) by default.
    Returns: [batch, q_len, heads, head_dim] in v's dtype.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")
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
