"""Group and layer normalisation with float32 statistics, whatever the compute dtype.

bfloat16 means and variances over large activations (64x64x320 in SD's UNet) lose
digits, so both norms compute in float32 and the caller casts the result back. Their
scales and biases are replicated (logical axis NORM).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.axes import NORM


def group_norm(groups, eps, name=None):
    """GroupNorm with float32 statistics (bf16 variance over 64x64x320 loses digits)."""
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=jnp.float32, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (NORM,)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (NORM,)))


def layer_norm(eps, name=None):
    return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (NORM,)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (NORM,)))
