"""Strict model configs: every option of diffusers' UNet2DConditionModel / AutoencoderKL and
of transformers' CLIPTextConfig is implemented or refused by name.

- The reference constructors' parameters are enumerated (`inspect.signature`): a new
  diffusers or transformers option fails here until it is classified in
  diffjax/weights/{unet,vae,clip}.py.
- The rarer UNet options that used to be accepted silently (center_input_sample,
  downsample_padding=0, act_fn="mish", mid_block_scale_factor, time_embedding_act_fn,
  timestep_post_act), all set in one tiny network, match diffusers: max abs diff
  <= 1e-4 * max|ref| (float32; tests/test_unet_vae.py's bound); leaving any one out
  changes diffusers' output by >= 1e-2 * max|ref|, so ignoring one could not pass. So do
  time_embedding_dim and the conv_in / conv_out kernel sizes. The same for the VAE's act_fn and its
  structural switches.
- Refused values raise WeightsError naming the option and the value.
"""

import inspect

import numpy as np
import pytest
import transformers

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
    import diffusers
except ModuleNotFoundError:
    torch = diffusers = None

import jax

from diffjax.models.unet import UNet2DConditionModel
from diffjax.models.vae import AutoencoderKL, from_unet_latents, to_unet_latents
from diffjax.weights import clip as wclip
from diffjax.weights import unet as wu
from diffjax.weights import vae as wv
from diffjax.weights.io import WeightsError


def _parameters(cls) -> set[str]:
    return {n for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


@pytest.mark.parity
def test_every_diffusers_unet_and_vae_option_is_classified():
    unet = _parameters(diffusers.UNet2DConditionModel)
    known = set(wu.IMPLEMENTED) | set(wu.ONLY) | set(wu.NO_EFFECT)
    assert unet - known == set(), "new diffusers UNet options: implement or refuse them"
    assert not set(wu.IMPLEMENTED) & (set(wu.ONLY) | set(wu.NO_EFFECT))
    vae = _parameters(diffusers.AutoencoderKL)
    assert vae - (set(wv.IMPLEMENTED) | set(wv.ONLY)) == set(), "new AutoencoderKL options"


def test_every_transformers_clip_text_option_is_classified():
    hf = set(transformers.CLIPTextConfig().to_dict()) | _parameters(transformers.CLIPTextConfig)
    assert hf - (set(wclip.IMPLEMENTED) | set(wclip.NO_EFFECT)) == set(), \
        "new transformers CLIPTextConfig options: implement or refuse them"


# ------------------------------------------------------------------------------ UNet
TINY_UNET = dict(sample_size=8, block_out_channels=(8, 16),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                 attention_head_dim=2, cross_attention_dim=12, norm_num_groups=4)
OPTIONS = {
    "center_input_sample": True,
    "downsample_padding": 0,
    "act_fn": "mish",
    "mid_block_scale_factor": 1.414,
    "time_embedding_act_fn": "gelu",
    "timestep_post_act": "mish",
    # implemented beside them (shapes change, so the converter checks them too)
    "time_embedding_dim": 40,
    "conv_in_kernel": 5,
    "conv_out_kernel": 1,
}


def _randomise_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)


def _assert_parity(got, want):
    want = np.asarray(want)
    err = np.max(np.abs(np.asarray(got) - want))
    assert err <= 1e-4 * np.max(np.abs(want)), f"max abs diff {err:.3e} vs max|ref| " \
                                                 f"{np.max(np.abs(want)):.3e}"


def _ref_unet(kw, x, t, ctx):
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**kw).eval()
    _randomise_norms(ref)
    with torch.no_grad():
        return ref, ref(torch.tensor(x), torch.tensor(t), torch.tensor(ctx)).sample.numpy()


@pytest.mark.parity
def test_unet_options_match_diffusers():
    """One network with all six options set matches diffusers' (one compile), and
    dropping any one of them changes diffusers' output by >= 1e-2 * max|ref|: an option
    we ignored or computed differently could not stay within 1e-4."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 4, 7, 10)).astype(np.float32)   # odd size: padding=0 shows
    t = np.array([999.0, 17.0], np.float32)
    ctx = rng.normal(size=(2, 5, 12)).astype(np.float32)
    ref, want = _ref_unet(dict(TINY_UNET, **OPTIONS), x, t, ctx)
    for option in OPTIONS:
        _, without = _ref_unet(dict(TINY_UNET, **{k: v for k, v in OPTIONS.items()
                                                  if k != option}), x, t, ctx)
        assert np.max(np.abs(want - without)) > 1e-2 * np.max(np.abs(want)), \
            f"{option} does not change diffusers' output at this config"
    config = wu.unet_config_from_diffusers(dict(ref.config))
    assert {k: getattr(config, k) for k in OPTIONS} == OPTIONS
    params = wu.unet_params_from_state_dict(
        {k: v.detach().numpy() for k, v in ref.state_dict().items()}, config)
    got = jax.jit(UNet2DConditionModel(config).apply)({"params": params},
                                                      x.transpose(0, 2, 3, 1), t, ctx)
    _assert_parity(np.asarray(got).transpose(0, 3, 1, 2), want)


REFUSED_UNET = {
    "layers_per_block": [1, 2],
    "cross_attention_dim": [12, 16],
    "class_embed_type": "timestep",
    "resnet_time_scale_shift": "scale_shift",
    "mid_block_type": None,
    "only_cross_attention": [False, True],
    "reverse_transformer_layers_per_block": [[1], [1]],
    "encoder_hid_dim_type": "text_proj",
    "time_embedding_type": "fourier",
    "time_cond_proj_dim": 256,
    "addition_embed_type": "text",
    "act_fn": "tanh",
    "timestep_post_act": "softsign",
    "transformer_layers_per_block": [[1, 2], [1, 2]],
    "not_a_diffusers_option": 1,
}


@pytest.mark.parametrize("option", sorted(REFUSED_UNET))
def test_unet_refusals_name_the_option(option):
    d = dict(TINY_UNET, **{option: REFUSED_UNET[option]})
    with pytest.raises(WeightsError, match=f"UNet config: .*{option}"):
        wu.unet_config_from_diffusers(d)


def test_unet_options_without_effect_are_accepted():
    d = dict(TINY_UNET, dropout=0.1, resnet_skip_time_act=True, resnet_out_scale_factor=2.0,
             addition_embed_type_num_heads=8, only_cross_attention=[False, False],
             mid_block_type="UNetMidBlock2DCrossAttn", _class_name="UNet2DConditionModel",
             _diffusers_version="0.42.1")
    assert wu.unet_config_from_diffusers(d) == wu.unet_config_from_diffusers(TINY_UNET)


# ------------------------------------------------------------------------------ VAE
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                latent_channels=4, sample_size=16,
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2)


@pytest.mark.parity
def test_vae_options_match_diffusers():
    kw = dict(TINY_VAE, act_fn="mish", mid_block_add_attention=False, use_quant_conv=False,
              use_post_quant_conv=False, latents_mean=[0.1, -0.2, 0.3, 0.0],
              latents_std=[1.5, 2.0, 0.5, 1.0], force_upcast=False, scaling_factor=0.13025)
    torch.manual_seed(1)
    ref = diffusers.AutoencoderKL(**kw).eval()
    _randomise_norms(ref)
    config = wv.vae_config_from_diffusers(dict(ref.config))
    assert (config.act_fn, config.force_upcast, config.latents_mean) == (
        "mish", False, (0.1, -0.2, 0.3, 0.0))
    params = wv.vae_params_from_state_dict(
        {k: v.detach().numpy() for k, v in ref.state_dict().items()}, config)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        mean = ref.encode(torch.tensor(x)).latent_dist.mean
        dec = ref.decode(mean).sample.numpy()
    model = AutoencoderKL(config)
    got = model.apply({"params": params}, x.transpose(0, 2, 3, 1), method=model.encode)
    _assert_parity(np.asarray(got.mean).transpose(0, 3, 1, 2), mean.numpy())
    got_dec = model.apply({"params": params}, mean.numpy().transpose(0, 2, 3, 1),
                          method=model.decode)
    _assert_parity(np.asarray(got_dec).transpose(0, 3, 1, 2), dec)
    # diffusers' SDXL pipelines: (z - mean) * sf / std into the UNet, and back
    z = mean.numpy().transpose(0, 2, 3, 1)
    m, s = np.array(kw["latents_mean"]), np.array(kw["latents_std"])
    np.testing.assert_allclose(to_unet_latents(config, z), (z - m) * 0.13025 / s,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(from_unet_latents(config, to_unet_latents(config, z)), z,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("option,value", [("act_fn", "tanh"), ("shift_factor", 0.1159),
                                          ("down_block_types", ["DownBlock2D"] * 2),
                                          ("latents_mean", [0.0]), ("not_an_option", 1)])
def test_vae_refusals_name_the_option(option, value):
    with pytest.raises(WeightsError, match=f"VAE config: .*{option}"):
        wv.vae_config_from_diffusers(dict(TINY_VAE, **{option: value}))


# ------------------------------------------------------------------------------ CLIP text
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64)


def test_clip_text_config_refusals_and_defaults():
    for option, value in (("hidden_act", "relu6"), ("eos_token_id", [2, 3]),
                          ("layer_norm_eps", None)):
        with pytest.raises(WeightsError, match=f"CLIP text config: .*{option}"):
            wclip.clip_text_config_from_hf(dict(TINY_TEXT, **{option: value}))
    # transformers' default end-of-text id when config.json omits it (first-occurrence
    # pooling, not the legacy argmax of eos_token_id 2)
    assert wclip.clip_text_config_from_hf(TINY_TEXT).eos_token_id == \
        transformers.CLIPTextConfig().eos_token_id
    bigg = wclip.clip_text_config_from_hf(dict(TINY_TEXT, projection_dim=24, hidden_act="gelu",
                                               architectures=["CLIPTextModelWithProjection"]))
    assert (bigg.projection_dim, bigg.hidden_act) == (24, "gelu")
