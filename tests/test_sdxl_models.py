"""SDXL's networks: parity with random-init diffusers / transformers models through our
converter, and the full-size presets' parameter counts.

- Text towers: tiny bigG-style (gelu, bias-free text_projection, pooled at the end-of-text
  token) and ViT-L-style (quick_gelu, no projection) towers against transformers'
  CLIPTextModelWithProjection / CLIPTextModel. SDXL's context is `hidden_states[-(k+2)]`
  without the final LN (context_style "sdxl"). Tolerance 1e-5 max abs: float32 both sides,
  values of order 1, the sides differ only in op order (as tests/test_clip.py).
- UNet: tiny SDXL-style UNets (text_time micro-conditioning, per-block transformer depths
  and heads) against diffusers' UNet2DConditionModel with `added_cond_kwargs`, on a 20x26
  latent (not a multiple of the downsampling factor: the up path upsamples to each skip's
  size, 3x4 -> 5x7 -> 10x13). Tolerance 1e-4 * max|ref| (float32, conv/matmul summation
  order through ~20 layers; tests/test_unet_vae.py's bound).
- Parameter counts: presets vs the references built on torch's meta device, ours from
  `jax.eval_shape` (nothing is allocated).
"""

import numpy as np
import pytest
import transformers

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
    import diffusers
except ModuleNotFoundError:
    torch = diffusers = None

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import presets
from diffjax.models.abstract import abstract_params
from diffjax.models.clip import CLIPTextModel
from diffjax.models.unet import UNet2DConditionModel
from diffjax.weights import clip as wclip
from diffjax.weights import unet as wu
from diffjax.weights import vae as wv


def _count(config) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(
        abstract_params(config))))


def _randomise_norms(model, key="norm"):
    """Random norm scales/biases (init is 1/0), so a missing norm mapping cannot pass."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if key in name:
                p.add_(torch.randn_like(p) * 0.1)


# ------------------------------------------------------------------------------ text
TEXT_CASES = {  # (transformers kwargs, with projection)
    # bigG-style: gelu, projection, legacy eos_token_id 2 (argmax pooling), padded with
    # "!" (id 0) as SDXL's second tokenizer pads.
    "bigg-like": (dict(vocab_size=700, hidden_size=40, intermediate_size=96,
                       num_hidden_layers=4, num_attention_heads=5, max_position_embeddings=14,
                       hidden_act="gelu", projection_dim=24, eos_token_id=2, pad_token_id=0),
                  True),
    # the same with the real end-of-text id: the first occurrence is pooled, and padding
    # with a larger id after it must not move the pooled position.
    "bigg-real-eos": (dict(vocab_size=700, hidden_size=40, intermediate_size=96,
                           num_hidden_layers=3, num_attention_heads=5,
                           max_position_embeddings=14, hidden_act="gelu", projection_dim=32,
                           eos_token_id=600, pad_token_id=699), True),
    # ViT-L-style (SDXL's first encoder): quick_gelu, no projection.
    "vit-l-like": (dict(vocab_size=700, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=14,
                        hidden_act="quick_gelu", eos_token_id=2), False),
}


def _ids(kw, batch=3):
    """BOS, random tokens, end-of-text, then padding of varying length."""
    rng = np.random.default_rng(kw["hidden_size"])
    L = kw["max_position_embeddings"]
    eos = kw["vocab_size"] - 1 if kw["eos_token_id"] == 2 else kw["eos_token_id"]
    pad = kw.get("pad_token_id", eos)
    ids = np.full((batch, L), pad, np.int64)
    for b in range(batch):
        n = 2 + b * (L - 4) // max(batch - 1, 1)
        ids[b, 0] = 0
        ids[b, 1:n] = rng.integers(1, min(eos, kw["vocab_size"]) - 2, n - 1)
        ids[b, n] = eos
    return ids


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_sdxl_text_tower_parity(name):
    kw, proj = TEXT_CASES[name]
    torch.manual_seed(3)
    hf = transformers.CLIPTextConfig(**kw)
    ref = (transformers.CLIPTextModelWithProjection if proj else transformers.CLIPTextModel)(
        hf).eval()
    _randomise_norms(ref, "layer_norm")
    config = wclip.clip_text_config_from_hf(
        dict(hf.to_dict(), architectures=[type(ref).__name__]))
    assert bool(config.projection_dim) == proj
    params = wclip.text_params_from_state_dict(
        {k: v.numpy() for k, v in ref.state_dict().items()}, config)
    ids = _ids(kw)
    with torch.no_grad():
        want = ref(torch.tensor(ids), output_hidden_states=True)
    run = jax.jit(lambda p, i, k: CLIPTextModel(config).apply(
        {"params": p}, i, clip_skip=k, context_style="sdxl"), static_argnums=2)
    got0 = run(params, jnp.asarray(ids, jnp.int32), 0)
    got1 = run(params, jnp.asarray(ids, jnp.int32), 1)
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=1e-5,  # noqa
                                                    rtol=0)
    # StableDiffusionXLPipeline.encode_prompt: hidden_states[-2] (clip_skip None),
    # hidden_states[-(clip_skip + 2)] otherwise; no final layer norm.
    close(got0.context, want.hidden_states[-2])
    close(got1.context, want.hidden_states[-3])
    if proj:   # the pooled, projected embedding SDXL's UNet gets
        close(got0.pooled, want.text_embeds)
        assert got0.pooled.shape == (len(ids), kw["projection_dim"])
    else:
        close(got0.pooled, want.pooler_output)


# ------------------------------------------------------------------------------ UNet
UNET_CASES = {
    # base-like: no attention at the first level, depths 1/1/2, heads per block, linear
    # projections, 6 time ids (original size, crop, target size).
    "base-like": dict(sample_size=16, block_out_channels=(16, 32, 32),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                        "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                      layers_per_block=2, attention_head_dim=(2, 4, 2),
                      transformer_layers_per_block=(1, 1, 2), cross_attention_dim=24,
                      use_linear_projection=True, norm_num_groups=8,
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=16 + 6 * 8),
    # refiner-like: four levels, one depth for every block, conv projections, other heads
    # and context width, 5 time ids (sizes, crop, aesthetic score).
    "refiner-like": dict(sample_size=16, block_out_channels=(16, 24, 32, 32),
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                           "CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D",
                                         "CrossAttnUpBlock2D", "UpBlock2D"),
                         layers_per_block=1, attention_head_dim=(2, 3, 4, 4),
                         transformer_layers_per_block=2, cross_attention_dim=20,
                         norm_num_groups=8, addition_embed_type="text_time",
                         addition_time_embed_dim=4,
                         projection_class_embeddings_input_dim=12 + 5 * 4),
}
LATENT = (20, 26)   # 160x208 px: not a multiple of 8 latent pixels


def _unet_inputs(kw, batch=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 4, *LATENT)).astype(np.float32)
    t = np.array([999.0, 17.0][:batch], np.float32)
    ctx = rng.normal(size=(batch, 7, kw["cross_attention_dim"])).astype(np.float32)
    n_ids = 6 if kw["projection_class_embeddings_input_dim"] % 6 == 4 else 5
    d = kw["addition_time_embed_dim"]
    text = rng.normal(size=(batch, kw["projection_class_embeddings_input_dim"] - n_ids * d))
    ids = np.array([[1024, 768, 0, 16, 1024, 768], [832, 1216, 32, 0, 896, 1152]],
                   np.float32)[:batch]
    if n_ids == 5:   # the refiner's: original size, crop, aesthetic score
        ids = np.array([[1024, 768, 0, 16, 6.0], [832, 1216, 32, 0, 2.5]], np.float32)[:batch]
    return x, t, ctx, {"text_embeds": text.astype(np.float32), "time_ids": ids}


def _assert_parity(got, want):
    want = np.asarray(want)
    err = np.max(np.abs(np.asarray(got) - want))
    assert err <= 1e-4 * np.max(np.abs(want)), f"max abs diff {err:.3e} vs max|ref| " \
                                                 f"{np.max(np.abs(want)):.3e}"


@pytest.fixture(scope="module", params=sorted(UNET_CASES))
def unet_case(request):
    kw = UNET_CASES[request.param]
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**kw).eval()
    _randomise_norms(ref)
    config = wu.unet_config_from_diffusers(dict(ref.config))
    params = wu.unet_params_from_state_dict(
        {k: v.numpy() for k, v in ref.state_dict().items()}, config)
    return request.param, kw, ref, config, params


def _ref_out(ref, x, t, ctx, added):
    with torch.no_grad():
        return ref(torch.tensor(x), torch.tensor(t), torch.tensor(ctx), added_cond_kwargs={
            k: torch.tensor(v) for k, v in added.items()}).sample.numpy()


@pytest.mark.parity
def test_sdxl_unet_parity_any_size(unet_case, tmp_path):
    name, kw, ref, config, params = unet_case
    x, t, ctx, added = _unet_inputs(kw)
    want = _ref_out(ref, x, t, ctx, added)
    model = UNet2DConditionModel(config)
    got = jax.jit(model.apply)({"params": params}, x.transpose(0, 2, 3, 1), t, ctx, added)
    _assert_parity(np.asarray(got).transpose(0, 3, 1, 2), want)
    # The micro-conditioning reaches the output, so losing it could not pass above.
    moved = dict(added, time_ids=added["time_ids"] + 64)
    assert np.max(np.abs(_ref_out(ref, x, t, ctx, moved) - want)) > 1e-2 * np.max(np.abs(want))
    # Widths that do not add up, or no added_cond at all: named errors (tracing only).
    shapes = lambda *a: jax.eval_shape(model.apply, {"params": params},  # noqa: E731
                                       x.transpose(0, 2, 3, 1), t, ctx, *a)
    with pytest.raises(ValueError, match="projection_class_embeddings_input_dim"):
        shapes(dict(added, time_ids=added["time_ids"][:, :3]))
    with pytest.raises(ValueError, match="added_cond"):
        shapes()
    if name == "base-like":   # export: diffusers loads our folder to the same network
        wu.export_unet(config, params, str(tmp_path))
        back = diffusers.UNet2DConditionModel.from_pretrained(tmp_path).eval()
        np.testing.assert_array_equal(_ref_out(back, x, t, ctx, added), want)


# ------------------------------------------------------------------------------ counts
# The configs of stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0 (unet/,
# text_encoder*/, vae/ config.json), written out here: the presets must equal them.
SDXL_UNET = dict(sample_size=128, block_out_channels=[320, 640, 1280],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D",
                                   "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
                 cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
REFINER_UNET = dict(sample_size=128, block_out_channels=[384, 768, 1536, 1536],
                    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D",
                                      "CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                    "UpBlock2D"],
                    attention_head_dim=[6, 12, 24, 24], transformer_layers_per_block=4,
                    cross_attention_dim=1280, use_linear_projection=True,
                    addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2560)
BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
            num_attention_heads=20, hidden_act="gelu", projection_dim=1280)
VIT_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
             num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768)


@pytest.mark.parity
@pytest.mark.parametrize("name,kw", [("sdxl", SDXL_UNET), ("sdxl-refiner", REFINER_UNET)])
def test_sdxl_unet_preset_counts(name, kw):
    config = presets.UNET_PRESETS[name]
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**kw)
    # every key diffusers saves in config.json is read (none refused) into the preset
    assert config == wu.unet_config_from_diffusers(dict(ref.config))
    want = sum(p.numel() for p in ref.parameters())
    if name == "sdxl":
        assert want == 2_567_463_684
    leaves = jax.tree.leaves(nn.meta.unbox(abstract_params(config)))
    assert sum(int(np.prod(x.shape)) for x in leaves) == want
    assert len(leaves) == len(list(ref.parameters()))   # one converter row per tensor


@pytest.mark.parity
def test_sdxl_text_and_vae_preset_counts():
    with torch.device("meta"):
        bigg = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**BIGG))
        vit_l = transformers.CLIPTextModel(transformers.CLIPTextConfig(**VIT_L))
        vae = diffusers.AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, scaling_factor=0.13025,
            force_upcast=True)
    for name, ref, want in (("sdxl-bigg", bigg, 694_659_840), ("sdxl-l", vit_l, None)):
        n = sum(p.numel() for p in ref.parameters())
        assert want is None or n == want
        config = presets.CLIP_TEXT_PRESETS[name]
        saved = dict(ref.config.to_dict(), architectures=[type(ref).__name__], eos_token_id=2)
        assert wclip.clip_text_config_from_hf(saved) == config
        assert _count(config) == n, name
        assert len(wclip.text_rows(config)) == len(list(ref.parameters()))
    vc = presets.VAE_PRESETS["sdxl"]
    assert (vc.scaling_factor, vc.force_upcast) == (0.13025, True)
    assert wv.vae_config_from_diffusers(dict(vae.config)) == vc
    assert _count(vc) == sum(p.numel() for p in vae.parameters())
