"""diffjax.models.inference_dtypes: frozen weights stored in the compute dtype change no
output bit, and the pipeline runs on them.

The claim is exactness (a bfloat16 network casts those weights itself at every call), so
the comparisons are bitwise, not within a tolerance.
"""

import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from diffjax.models.inference_dtypes import cast_for_inference, inference_dtypes
from diffjax.weights.components import preset_components


@pytest.fixture(scope="module")
def tiny_bf16():
    return preset_components("tiny", dtype="bfloat16", attention="xla")


def _flat(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_only_casting_modules_are_narrowed(tiny_bf16):
    """Dense/Conv/Embed params of a bfloat16 module narrow; norms, raw params (CLIP's
    position embedding) and every param of a float32 network keep their dtype."""
    unet = _flat(inference_dtypes(tiny_bf16.unet_config))
    assert unet["['conv_in']['kernel']"] == "bfloat16"
    assert unet["['time_embedding']['linear_1']['kernel']"] == "bfloat16"
    assert all(v == "" for k, v in unet.items() if "norm" in k), "a norm param was narrowed"
    text = _flat(inference_dtypes(tiny_bf16.text_config))
    assert text["['token_embedding']['embedding']"] == "bfloat16"
    assert text["['position_embedding']"] == ""        # a raw param, cast in the module
    assert all(v == "" for k, v in text.items() if "layer_norm" in k)
    f32 = dataclasses.replace(tiny_bf16.unet_config, dtype="float32")
    assert set(_flat(inference_dtypes(f32)).values()) == {""}


@pytest.mark.parametrize("network", ["unet", "text"])
def test_narrowed_weights_give_identical_outputs(tiny_bf16, network):
    """The network's output on bfloat16-stored weights equals its output on the float32
    masters bit for bit (the cast it did per call now happens once)."""
    from diffjax.models.clip import CLIPTextModel
    from diffjax.models.unet import UNet2DConditionModel
    c = tiny_bf16
    rng = np.random.default_rng(0)
    if network == "unet":
        cfg, params = c.unet_config, c.unet_params
        module = UNet2DConditionModel(cfg)
        s = 2 * cfg.downsample_factor
        args = (jnp.asarray(rng.normal(size=(2, s, s, cfg.in_channels)), jnp.float32),
                jnp.asarray([10.0, 700.0]),
                jnp.asarray(rng.normal(size=(2, 7, cfg.cross_attention_dim)), jnp.bfloat16))
    else:
        cfg, params = c.text_config, c.text_params
        module = CLIPTextModel(cfg)
        args = (jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 9)), jnp.int32),)
    cast = cast_for_inference(params, inference_dtypes(cfg))
    narrowed = [p for p in jax.tree.leaves(cast) if p.dtype == jnp.bfloat16]
    assert narrowed and len(narrowed) < len(jax.tree.leaves(cast))
    apply = jax.jit(lambda p, *a: module.apply({"params": p}, *a))
    ref, out = apply(params, *args), apply(cast, *args)
    for r, o in zip(jax.tree.leaves(ref), jax.tree.leaves(out)):
        np.testing.assert_array_equal(np.asarray(o, np.float32), np.asarray(r, np.float32))


def test_pipeline_places_what_it_lowered_for(tiny_bf16):
    """A bfloat16 pipeline's placed params have exactly the dtypes its program is lowered
    with (abstract_params), UNet kernels narrowed and norms float32, and a trained UNet set
    from float32 masters is cast the same way."""
    from diffjax.pipeline import TextToImage
    from diffjax.sample_spec import SampleSpec
    pipe = TextToImage(tiny_bf16, SampleSpec(steps=2, batch_size=jax.device_count(), dtype="bfloat16",
                                             attention="xla"))
    placed = jax.tree.map(lambda a: a.dtype, pipe.params)
    lowered = jax.tree.map(lambda a: a.dtype, pipe.abstract_params())
    assert placed == lowered
    flat = _flat(placed["unet"])
    assert flat["['conv_in']['kernel']"] == jnp.bfloat16
    assert flat["['conv_norm_out']['scale']"] == jnp.float32
    pipe.params = {**pipe.placed_masters(), "unet": tiny_bf16.unet_params}
    assert jax.tree.map(lambda a: a.dtype, pipe.params) == lowered
