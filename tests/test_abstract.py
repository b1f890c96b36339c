"""models.abstract.abstract_params: the param shapes of a config, without allocating."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from diffjax.models import presets
from diffjax.models.abstract import abstract_params
from diffjax.models.clip import CLIPTextModel, CLIPVisionModel
from diffjax.models.unet import UNet2DConditionModel
from diffjax.models.vae import AutoencoderKL


def _boxed_shapes(tree):
    """path -> (shape, dtype, logical axis names or None) of a boxed abstract tree."""
    leaves = jax.tree_util.tree_leaves_with_path(
        tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return {jax.tree_util.keystr(p): (x.value.shape, x.value.dtype, x.names)
            if isinstance(x, nn.LogicallyPartitioned) else (x.shape, x.dtype, None)
            for p, x in leaves}


# Inputs unlike abstract_params' own (batch 2, larger images, a 77-token context): the
# shapes must not depend on them.
CASES = {
    "text": (presets.CLIP_TEXT_PRESETS["mini"], lambda c: CLIPTextModel(c).init(
        jax.random.key(1), jnp.zeros((2, 5), jnp.int32))),
    "vision": (presets.CLIP_VISION_PRESETS["mini"], lambda c: CLIPVisionModel(c).init(
        jax.random.key(1), jnp.zeros((2, c.image_size, c.image_size, c.num_channels)))),
    "unet": (presets.UNET_PRESETS["mini"], lambda c: UNet2DConditionModel(c).init(
        jax.random.key(1), jnp.zeros((2, 16, 16, c.in_channels)), jnp.ones((2,)),
        jnp.zeros((2, 77, c.cross_attention_dim)))),
    "vae": (presets.VAE_PRESETS["mini"], lambda c: AutoencoderKL(c).init(
        jax.random.key(1), jnp.zeros((2, 32, 32, c.in_channels)))),
}


@pytest.mark.parametrize("name", CASES)
def test_abstract_params_are_inits_shapes_with_boxes(name):
    config, init = CASES[name]
    got = _boxed_shapes(abstract_params(config))
    want = _boxed_shapes(jax.eval_shape(lambda: init(config))["params"])
    assert got == want
    assert sum(names is not None for _, _, names in got.values()) > len(got) // 2
    unboxed = nn.meta.unbox(abstract_params(config))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(unboxed))


def test_unknown_config_type_is_named():
    @dataclasses.dataclass(frozen=True)
    class OtherConfig:
        width: int = 4
    with pytest.raises(TypeError, match="OtherConfig.*CLIPTextConfig, CLIPVisionConfig"):
        abstract_params(OtherConfig())
