"""The one attention entry point of diffjax and its kernels.

Every model (CLIP, UNet, VAE) calls `attention` so that all pick their kernel the same way
(`impl`): XLA's einsum with a float32 softmax on every backend, cuDNN flash attention on
GPU, or a chunked kernel that keeps memory to one block of logits (large images, and the
fastest on CPU). "auto" chooses per platform the program is lowered for.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp

ATTENTION_IMPLS = ("auto", "xla", "cudnn", "chunked", "pallas")


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
# the loop over blocks costs little (block sizes measured: docs/performance.md).
CHUNK_BLOCK_ELEMENTS = 1 << 22


def _chunked_attention(q, k, v, mask, scale, chunk_size):
    """Attention over blocks of `chunk_size` query rows of a group of (batch, head) pairs,
    each against all keys, so the [Lq, Lk] logits never exist whole.

    Two reasons, one kernel: peak memory is one block instead of batch*heads*Lq*Lk (what
    makes 1024^2 images, Lq = 16384, fit), and on CPU a block that stays in cache runs the
    softmax at compute speed instead of streaming a 1 GB logits tensor through memory three
    times (docs/performance.md has the speed-up). The group is the most
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


def _pallas_block(length: int) -> int:
    """The largest of 512/256/128 that divides a sequence length (0: none does)."""
    return next((b for b in (512, 256, 128) if length % b == 0), 0)


def _pallas_attention(q, k, v, mask, scale):
    """jax's Pallas TPU flash attention kernel (`jax.experimental.pallas.ops.tpu.
    flash_attention`): the [Lq, Lk] logits never leave VMEM, so a 64x64-latent
    self-attention reads and writes q, k, v and the output instead of a 2 GB float32 logits
    tensor several times (what bounds XLA's einsum path on TPU: `diffjax plan`). The kernel
    tiles both sequences in blocks of 128; where one does not divide (CLIP's 77 tokens,
    cross-attention's 77 keys, 8x8 latents) or there is a mask, XLA's path runs instead.
    Softmax statistics are float32 in the kernel, as in `_xla_attention`. It compiles for
    TPU; elsewhere only inside `jax.experimental.pallas.tpu.force_tpu_interpret_mode()`.

    XLA cannot partition a Mosaic kernel, so where a mesh is in context (`jax.set_mesh`,
    as the pipeline traces a pallas job) the kernel runs under `shard_map`: heads split
    over the mesh's "tensor" axis where it divides them, every other dim whole per
    device. The batch is split by the caller's `vmap(..., spmd_axis_name=<data axes>)`
    over seeds (`diffusion.sample.sample`), which shards the vmapped dim inside the map;
    outside such a vmap every device computes the whole batch's attention."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa
    bq, bk = _pallas_block(q.shape[1]), _pallas_block(k.shape[1])
    if mask is not None or not bq or not bk:
        return _xla_attention(q, k, v, mask, scale)
    blocks = fa.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1)

    def kernel(q, k, v):
        # Half-precision operands go to the MXU as they are: a process-wide "highest"
        # matmul precision (JAX_DEFAULT_MATMUL_PRECISION) makes Mosaic refuse the
        # kernel's bf16 dots ("Bad lhs type"); float32 keeps the ambient precision.
        half = jnp.dtype(q.dtype).itemsize < 4
        with jax.default_matmul_precision("default") if half else contextlib.nullcontext():
            out = fa.flash_attention(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)),
                                     sm_scale=scale, block_sizes=blocks)
        return out.transpose(0, 2, 1, 3).astype(v.dtype)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q, k, v)
    from jax.sharding import PartitionSpec as P
    tensor = dict(mesh.shape).get("tensor", 1)
    heads = "tensor" if tensor > 1 and q.shape[2] % tensor == 0 else None
    spec = P(None, None, heads, None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                         check_vma=False)(q, k, v)


def _cudnn_attention(q, k, v, mask, scale):
    on_gpu = jax.default_backend() == "gpu"
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale,
        implementation="cudnn" if on_gpu and q.dtype in (jnp.float16, jnp.bfloat16)
        else None)


def _auto_attention(q, k, v, mask, scale, chunk_size):
    """The fastest kernel measured for the platform the program is lowered for
    (`lax.platform_dependent`, as the convolutions choose theirs): the cache-sized chunked
    kernel on CPU, cuDNN flash attention on CUDA GPUs, XLA's fused einsum elsewhere (TPU).
    Not the tracing machine's backend: a program traced on a CPU host and compiled for a
    TPU slice (`diffjax plan`, ahead-of-time lowering) gets XLA's attention, not the CPU's
    chunked loop. The cuDNN branch exists only where the tracing host has a GPU (tracing it
    elsewhere fails: cuDNN is looked up when traced)."""
    branches = {"cpu": lambda q, k, v: _chunked_attention(q, k, v, mask, scale, chunk_size),
                "default": lambda q, k, v: _xla_attention(q, k, v, mask, scale)}
    if jax.default_backend() == "gpu":
        branches["cuda"] = lambda q, k, v: _cudnn_attention(q, k, v, mask, scale)
    return jax.lax.platform_dependent(q, k, v, **branches)


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
        fastest on CPU), "pallas" (jax's Pallas TPU flash attention; XLA's path where its
        blocks do not tile the sequences) or "auto" (per platform the program is lowered
        for, `_auto_attention`).
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
    if impl == "auto":
        return _auto_attention(q, k, v, mask, scale, chunk_size)
    if impl == "cudnn":
        return _cudnn_attention(q, k, v, mask, scale)
    if impl == "chunked":
        return _chunked_attention(q, k, v, mask, scale, chunk_size)
    if impl == "pallas":
        return _pallas_attention(q, k, v, mask, scale)
    return _xla_attention(q, k, v, mask, scale)
