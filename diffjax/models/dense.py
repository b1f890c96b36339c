"""The linear layer of the UNet and VAE, its params born with logical axis names.

`axes` names the kernel's (input, output) axes, so each call site says how its weight
shards (e.g. (EMBED, HEADS) for q/k/v, (HEADS, EMBED) for the output projection).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.axes import EMBED, MLP


def dense(features, axes=(EMBED, MLP), use_bias=True, dtype=jnp.float32, name=None):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.lecun_normal(), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))
