"""The params of a model config as shapes only: `abstract_params(config)`.

Loading a checkpoint checks its tensors against these shapes, sharding derives each
param's `NamedSharding` from their logical-axis boxes, and random presets draw values of
these shapes; all of them need the tree without allocating it, which `jax.eval_shape` of
the module's `init` gives. `init` needs example inputs, and this module is the one place
they are written. Param shapes do not depend on the inputs' batch, spatial size or context
length (except a CLIP vision tower's `image_size`: one position embedding per patch), so
the inputs are one example each, with a one-token context, and the UNet is traced at the
smallest latent its levels allow rather than its sample size.

The tree is cached per config (configs are frozen and hashable): loading, sharding and
conversion each ask for it, and tracing a UNet costs seconds. Callers must not mutate it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffjax.models.clip import (CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                                 CLIPVisionModel)
from diffjax.models.unet import UNet2DConditionModel, UNetConfig
from diffjax.models.vae import AutoencoderKL, VAEConfig


def _clip_text(config: CLIPTextConfig):
    ids = jnp.zeros((1, config.max_position_embeddings), jnp.int32)
    return CLIPTextModel(config), (ids,)


def _clip_vision(config: CLIPVisionConfig):
    s = config.image_size
    return CLIPVisionModel(config), (jnp.zeros((1, s, s, config.num_channels)),)


def _unet(config: UNetConfig):
    s = config.downsample_factor
    inputs = (jnp.zeros((1, s, s, config.in_channels)), jnp.zeros((1,)),
              jnp.zeros((1, 1, config.cross_attention_dim)))
    if config.addition_embed_type == "text_time":
        # add_embedding's input width is what counts: any split into text and time ids.
        width, d = config.projection_class_embeddings_input_dim, config.addition_time_embed_dim
        n_ids = min(6, width // d)
        inputs += ({"text_embeds": jnp.zeros((1, width - n_ids * d)),
                    "time_ids": jnp.zeros((1, n_ids))},)
    return UNet2DConditionModel(config), inputs


def _vae(config: VAEConfig):
    f = config.downsample_factor
    return AutoencoderKL(config), (jnp.zeros((1, 2 * f, 2 * f, config.in_channels)),)


# config type -> (module, example inputs of its __call__)
MODULES = {CLIPTextConfig: _clip_text, CLIPVisionConfig: _clip_vision, UNetConfig: _unet,
           VAEConfig: _vae}


@functools.lru_cache(maxsize=64)
def abstract_params(config):
    """The boxed param tree of `config`'s module, leaves `jax.ShapeDtypeStruct`.

    Boxed: leaves keep their `nn.LogicallyPartitioned` boxes, which
    `sharding.param_shardings` reads; `flax.linen.meta.unbox(...)` gives the bare shapes.
    """
    if type(config) not in MODULES:
        raise TypeError(f"no module for config type {type(config).__name__}; known: "
                        f"{', '.join(t.__name__ for t in MODULES)}")
    module, inputs = MODULES[type(config)](config)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))["params"]
