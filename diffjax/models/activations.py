"""The activations diffusers' config strings name (`act_fn`, `time_embedding_act_fn`,
`timestep_post_act`), numerically as diffusers' `get_activation` (torch's modules).

One table, so the UNet, the VAE and the config readers agree on which names exist; an
unknown name is refused by the config reader before any module is built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# diffusers.models.activations.ACT2CLS; names are matched lower-cased, as diffusers does.
ACTIVATIONS = {
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),   # torch.nn.Mish
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch.nn.GELU()
    "relu": jax.nn.relu,
}


def activation(name: str):
    """The function diffusers' `get_activation(name)` computes; ValueError names the
    unknown name and the known ones."""
    fn = ACTIVATIONS.get(name.lower())
    if fn is None:
        raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    return fn
