"""The dtype each param of a frozen network can be stored in without changing its output.

A network built with `dtype=bfloat16` keeps float32 param masters (what training updates
and checkpoints hold), and every Dense, Conv and Embed casts its kernel and bias to
bfloat16 at each call. Sampling never updates them, so storing those params in bfloat16
once, before the program runs, gives the same arrays at every call, bit for bit: the cast
moves out of the program. It halves the weights' memory (SD1.5's UNet 3.4 -> 1.7 GB) and
the HBM bytes each network call reads, which is what bounds a UNet step on a TPU
(docs/performance.md).

Only params whose module casts them to its compute dtype are stored narrower: norms, the
float32 projections (CLIP's `text_projection`), raw `self.param` arrays (position
embeddings) and every param of a float32 module keep float32, since a bfloat16 copy of
those would change the output. Which module holds which param is read from the module's
own trace (`flax.linen.intercept_methods` during an abstract `init`), not from names.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# Modules that cast their params to `self.dtype` (flax's `promote_dtype`) before using them.
CASTING_MODULES = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose, nn.Embed)


@functools.lru_cache(maxsize=64)
def inference_dtypes(config):
    """The params tree of `config`'s module with, per leaf, the name of the dtype to store
    it in for inference ("bfloat16", "float16") or "" to keep it as loaded: a param of a
    casting module (Dense, Conv, Embed) whose compute dtype is narrower than float32 takes
    that dtype, which the module would cast it to at every call anyway; every other param
    is kept."""
    from diffjax.models.abstract import MODULES
    compute: dict[tuple[str, ...], jnp.dtype] = {}

    def init():   # example inputs made inside the abstract trace: nothing runs anywhere
        module, inputs = MODULES[type(config)](config)
        return module.init(jax.random.key(0), *inputs)

    def record(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, CASTING_MODULES) and getattr(m, "dtype", None) is not None:
            compute[tuple(m.path)] = jnp.dtype(m.dtype)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        shapes = jax.eval_shape(init)["params"]

    def dtype_of(path, leaf):
        names = tuple(getattr(k, "key", str(k)) for k in path)
        narrow = compute.get(names[:-1])
        if narrow is not None and jnp.issubdtype(narrow, jnp.floating) and \
                narrow.itemsize < 4:
            return narrow.name
        return ""
    return jax.tree_util.tree_map_with_path(dtype_of, nn.meta.unbox(shapes))


def cast_for_inference(params, dtypes):
    """`params` with each leaf in its `inference_dtypes` dtype ("" keeps it); arrays on
    devices keep their sharding, host arrays are cast on the host before they are placed."""
    return jax.tree.map(lambda p, d: p if not d or p.dtype == jnp.dtype(d) else p.astype(d),
                        params, dtypes)


def stored_struct(struct, dtype: str):
    """A param's ShapeDtypeStruct (with its sharding) in its inference dtype."""
    if not dtype:
        return struct
    return jax.ShapeDtypeStruct(struct.shape, jnp.dtype(dtype), sharding=struct.sharding)
