"""Single-file (LDM/SGM layout) checkpoints: diffusers' own converters are the reference.

Tiny models with EVERY leaf random (norm scales and biases too, so a swapped or dropped key
cannot pass) are exported to the LDM layout by `single_file.components_to_ldm`; diffusers'
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`
and `convert_open_clip_checkpoint` must map that file back to exactly (every key, every value
bit-exact: tolerance 0, the maps only rename, split and transpose) the diffusers state dicts
diffjax's params correspond to, and so must diffjax's own import (`split_single_file`). Then
file -> Components -> file is the identity. At full size (SD 1.5, SD 2.1, SDXL base and
refiner: diffusers' and transformers' models on torch's meta device, no memory), diffusers'
converters and model-type detection agree with ours key for key and shape for shape, and the
inferred configs are the published ones.
"""

import dataclasses
import json
import types

import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
except ModuleNotFoundError:
    torch = None

import jax

from diffjax.weights import ldm_keys, single_file as sf
from diffjax.weights.clip import text_params_to_state_dict
from diffjax.weights.components import preset_components
from diffjax.weights.io import save_state_dict
from diffjax.weights.load import load
from diffjax.weights.mapping import params_to_state_dict
from diffjax.weights.unet import unet_config_to_diffusers, unet_params_to_state_dict
from diffjax.weights.vae import vae_config_to_diffusers, vae_rows


def _randomised(c, seed):
    """Every leaf of every network random (no all-ones norm scales, no zero biases)."""
    rng = np.random.default_rng(seed)
    rand = lambda tree: jax.tree.map(  # noqa: E731
        lambda a: rng.standard_normal(a.shape).astype(np.float32), tree)
    c.unet_params, c.vae_params = rand(c.unet_params), rand(c.vae_params)
    if c.text_params is not None:
        c.text_params = rand(c.text_params)
    if getattr(c, "text_params_2", None) is not None:
        c.text_params_2 = rand(c.text_params_2)
    return c


def _sd2_like(c):
    """The tiny preset as SD 2.x: OpenCLIP text tower (gelu), linear projections."""
    c.text_config = dataclasses.replace(c.text_config, hidden_act="gelu")
    c.unet_config = dataclasses.replace(c.unet_config, use_linear_projection=True)
    c.unet_params = preset_like_params(c.unet_config)
    c.scheduler = dict(c.scheduler, prediction_type="v_prediction")
    return c


def _sdxl_like(refiner: bool):
    """A tiny SDXL (or refiner): CLIP-L-like + bigG-like towers (projection 16), a UNet
    with text_time added conditioning, 2 transformer layers at the attention level."""
    from diffjax.models.clip import CLIPTextConfig
    from diffjax.models.unet import UNetConfig
    from diffjax.weights.components import SD_SCHEDULER, Components
    c = preset_components("tiny")
    big = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, hidden_act="gelu", projection_dim=16,
                         attention_impl="auto")
    pooled, n_ids = 16, (5 if refiner else 6)
    uc = UNetConfig(sample_size=8, block_out_channels=(32, 48),
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=2,
                    attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
                    cross_attention_dim=32 if refiner else 64, use_linear_projection=True,
                    norm_num_groups=8, addition_embed_type="text_time",
                    addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=pooled + n_ids * 8,
                    attention_impl="auto")
    return Components("sdxl", None if refiner else c.text_config, c.text_params, uc,
                      preset_like_params(uc), c.vae_config, c.vae_params, None,
                      dict(SD_SCHEDULER), text_config_2=big,
                      text_params_2=preset_like_params(big),
                      force_zeros_for_empty_prompt=not refiner,
                      requires_aesthetics_score=refiner)


def preset_like_params(config):
    import flax.linen as nn

    from diffjax.models.abstract import abstract_params
    from diffjax.weights.components import random_params
    return random_params(nn.meta.unbox(abstract_params(config)), 0)


def _torch(sd):
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def _assert_same(ref, ours, what):
    assert set(ref) == set(ours), (what, sorted(set(ref) ^ set(ours))[:6])
    for k in ours:
        r = ref[k].numpy() if hasattr(ref[k], "numpy") else np.asarray(ref[k])
        assert r.shape == ours[k].shape and np.array_equal(r, ours[k]), (what, k)


def _diffusers_state_dicts(c):
    return (unet_params_to_state_dict(c.unet_params, c.unet_config),
            params_to_state_dict(c.vae_params, vae_rows(c.vae_config)))


@pytest.fixture(scope="module")
def sd1():
    return _randomised(preset_components("tiny"), 1)


@pytest.fixture(scope="module")
def sd2():
    return _randomised(_sd2_like(preset_components("tiny")), 2)


@pytest.fixture(scope="module")
def sdxl():
    return _randomised(_sdxl_like(refiner=False), 3)


@pytest.fixture(scope="module")
def refiner():
    c = _randomised(_sdxl_like(refiner=True), 4)
    c.text_params = None
    return c


@pytest.mark.parity
@pytest.mark.parametrize("which", ["sd1", "sd2", "sdxl", "refiner"])
def test_diffusers_converters_read_our_ldm_file_exactly(which, request):
    from diffusers.loaders import single_file_utils as su
    c = request.getfixturevalue(which)
    ldm, _ = sf.components_to_ldm(c)
    unet, vae = _diffusers_state_dicts(c)[:2]
    ckpt = _torch(ldm)
    _assert_same(su.convert_ldm_unet_checkpoint(ckpt, unet_config_to_diffusers(c.unet_config)),
                 unet, "unet")
    _assert_same(su.convert_ldm_vae_checkpoint(ckpt, vae_config_to_diffusers(c.vae_config)),
                 vae, "vae")
    stub = lambda tc: types.SimpleNamespace(  # noqa: E731  (read only without a projection)
        config=types.SimpleNamespace(hidden_size=tc.hidden_size))
    text = text_2 = None
    if c.text_params is not None:
        text = text_params_to_state_dict(c.text_params, c.text_config)
        ref = (su.convert_open_clip_checkpoint(stub(c.text_config), ckpt) if which == "sd2"
               else su.convert_ldm_clip_checkpoint(ckpt))
        _assert_same(ref, text, "text encoder")
    if which in ("sdxl", "refiner"):
        text_2 = text_params_to_state_dict(c.text_params_2, c.text_config_2)
        prefix = f"conditioner.embedders.{0 if which == 'refiner' else 1}.model."
        _assert_same(su.convert_open_clip_checkpoint(stub(c.text_config_2), ckpt, prefix=prefix),
                     text_2, "text encoder 2")
    # diffjax's own import of the same file: the same state dicts
    f = sf.split_single_file(ldm)
    assert f.kind == {"refiner": "sdxl-refiner"}.get(which, which) and not f.inpainting
    _assert_same(f.unet, unet, "unet")
    _assert_same(f.vae, vae, "vae")
    for ours, want in ((f.text, text), (f.text_2, text_2)):
        assert (ours is None) == (want is None)
        if want is not None:
            _assert_same(ours, want, "text encoder")
    # (diffusers' model-type detection reads keys and widths only full-size models have:
    # SD2 a 1024-wide key, SDXL a 10th text layer; test_full_size_layouts checks it there)


@pytest.mark.parametrize("which", ["sd1", "sd2", "sdxl", "refiner"])
def test_export_import_is_the_identity(which, request, tmp_path):
    c = request.getfixturevalue(which)
    path = str(tmp_path / f"{which}.safetensors")
    sf.export_single_file(c, path)
    back = load(path)                     # the one loader: a .safetensors file is a model
    assert back.scheduler["prediction_type"] == c.scheduler["prediction_type"]
    for field in ("text_config", "text_config_2", "unet_config", "vae_config",
                  "force_zeros_for_empty_prompt", "requires_aesthetics_score"):
        assert getattr(back, field) == getattr(c, field), field
    for field in ("text_params", "text_params_2", "unet_params", "vae_params"):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b),
                     getattr(back, field), getattr(c, field))
    again, _ = sf.components_to_ldm(back)
    first, _ = sf.components_to_ldm(c)
    _assert_same(first, again, "second export")
    if which == "sd2":                    # OpenCLIP tokenizer: pads with "!" (id 0)
        from diffjax.text import load_tokenizer
        assert load_tokenizer(back.tokenizer_dir).pad_id == 0


def test_sd2_prediction_type_must_be_told(sd2, tmp_path):
    ldm, metadata = sf.components_to_ldm(sd2)
    path = str(tmp_path / "sd2.safetensors")
    del metadata["modelspec.prediction_type"]             # as most files in the wild
    save_state_dict(ldm, path, metadata)
    with pytest.raises(sf.SingleFileError, match="prediction type cannot be told"):
        load(path)
    assert load(path, prediction_type="v_prediction").scheduler["prediction_type"] == \
        "v_prediction"
    (tmp_path / "sd2.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert load(path).scheduler["prediction_type"] == "v_prediction"


def test_unknown_keys_and_kinds_are_named(sd1, tmp_path):
    ldm, metadata = sf.components_to_ldm(sd1)
    with pytest.raises(sf.SingleFileError, match="model.diffusion_model.extra.weight"):
        sf.split_single_file(dict(ldm, **{"model.diffusion_model.extra.weight": np.zeros(1)}))
    with pytest.raises(sf.SingleFileError, match="not a Stable Diffusion single-file"):
        sf.detect_kind(["transformer.h.0.attn.weight"])
    unet_only = {k: v for k, v in ldm.items() if k.startswith(sf.UNET)}
    with pytest.raises(sf.SingleFileError, match="no text encoder"):
        sf.detect_kind(unet_only)
    # non-parameters (schedule tables, EMA copies, position ids) are not errors
    extra = {"alphas_cumprod": np.zeros(3), "model_ema.decay": np.zeros(()),
             "cond_stage_model.transformer.text_model.embeddings.position_ids": np.zeros(3)}
    assert sf.split_single_file(dict(ldm, **extra)).kind == "sd1"


def test_standalone_vae_file(sd1, tmp_path):
    ldm, metadata = sf.components_to_ldm(sd1)
    vae_only = {k[len(sf.VAE):]: v for k, v in ldm.items() if k.startswith(sf.VAE)}
    path = str(tmp_path / "vae.safetensors")
    save_state_dict(vae_only, path, {sf.CONFIG_KEY: json.dumps(
        {"vae": vae_config_to_diffusers(sd1.vae_config)})})
    assert sf.detect_kind(vae_only) == "vae"
    config, params = sf.load_vae_file(path)
    assert config == dataclasses.replace(sd1.vae_config, attention_impl="auto")
    jax.tree.map(np.testing.assert_array_equal, params, sd1.vae_params)
    with pytest.raises(sf.SingleFileError, match="standalone VAE"):
        load(path)


# ------------------------------------------------------------------ full-size layouts
SD15 = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            attention_head_dim=8, cross_attention_dim=768, sample_size=64)
SD21 = dict(SD15, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
            use_linear_projection=True, sample_size=96)
SDXL = dict(block_out_channels=[320, 640, 1280], layers_per_block=2,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
            cross_attention_dim=2048, use_linear_projection=True, sample_size=128,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
REFINER = dict(SDXL, block_out_channels=[384, 768, 1536, 1536],
               down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "DownBlock2D"],
               up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                               "UpBlock2D"],
               attention_head_dim=[6, 12, 24, 24], transformer_layers_per_block=4,
               cross_attention_dim=1280, projection_class_embeddings_input_dim=2560)
# (kind, UNet config, text towers as (layers, hidden, OpenCLIP?, projection?), diffusers type)
FULL = [("sd1", SD15, [(12, 768, False, False)], "v1"),
        ("sd2", SD21, [(23, 1024, True, False)], "v2"),
        ("sdxl", SDXL, [(12, 768, False, False), (32, 1280, True, True)], "xl_base"),
        ("sdxl-refiner", REFINER, [(32, 1280, True, True)], "xl_refiner")]


def _meta_state_dict(module_cls, **config):
    with torch.device("meta"):
        return dict(module_cls(**config).state_dict())


@pytest.mark.parity
@pytest.mark.parametrize("kind,unet_config,towers,diffusers_type", FULL,
                         ids=[f[0] for f in FULL])
def test_full_size_layouts_match_diffusers(kind, unet_config, towers, diffusers_type):
    """Published architectures at full size, on the meta device (shapes, no memory); the
    text towers with their real depth but 64 wide (OpenCLIP's fused q/k/v concatenates real
    arrays) except the width-detected keys diffusers reads."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as su
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    unet = _meta_state_dict(UNet2DConditionModel, **unet_config)
    vae_config = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                      down_block_types=["DownEncoderBlock2D"] * 4,
                      up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4)
    vae = _meta_state_dict(AutoencoderKL, **vae_config)
    texts = []
    for layers, hidden, _, projection in towers:
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        cfg = CLIPTextConfig(num_hidden_layers=layers, hidden_size=64, intermediate_size=128,
                             num_attention_heads=1, projection_dim=64)
        torch.manual_seed(0)
        sd = {("text_model." + k if not k.startswith(("text_model.", "text_projection"))
               else k): v.numpy() for k, v in cls(cfg).state_dict().items()
              if "position_ids" not in k}
        texts.append(sd)
    text, text_2 = (texts + [None])[:2] if kind != "sdxl-refiner" else (None, texts[0])
    ldm = sf.to_ldm(kind, unet, vae, text, text_2, unet_config["layers_per_block"],
                    unet_config["up_block_types"], 4)
    if kind == "sd2":   # diffusers tells SD2 by this key's 1024 width
        key = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
        assert tuple(ldm[key].shape) == (320, 1024)
    assert su.infer_diffusers_model_type(ldm) == diffusers_type
    ours = sf.split_single_file(ldm)
    assert ours.kind == kind
    ref_unet = su.convert_ldm_unet_checkpoint(ldm, dict(unet_config))
    for ref, mine, original in ((ref_unet, ours.unet, unet),
                                (su.convert_ldm_vae_checkpoint(ldm, vae_config), ours.vae, vae)):
        assert set(ref) == set(mine) == set(original)
        assert all(tuple(ref[k].shape) == tuple(mine[k].shape) == tuple(original[k].shape)
                   for k in ref)
    tl = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
          for k, v in ldm.items()}
    stub = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=64))
    refs = {"sd1": lambda: [su.convert_ldm_clip_checkpoint(tl)],
            "sd2": lambda: [su.convert_open_clip_checkpoint(stub, tl)],
            "sdxl": lambda: [su.convert_ldm_clip_checkpoint(tl), su.convert_open_clip_checkpoint(
                stub, tl, prefix="conditioner.embedders.1.model.")],
            "sdxl-refiner": lambda: [su.convert_open_clip_checkpoint(
                stub, tl, prefix="conditioner.embedders.0.model.")]}[kind]()
    for ref, mine in zip(refs, [t for t in (ours.text, ours.text_2) if t is not None]):
        _assert_same(ref, mine, "text")
    # the configs we infer are the published ones (heads, depths, widths, SDXL's extras)
    d = sf.unet_config_dict(ours.unet, kind, "v_prediction" if kind == "sd2" else "epsilon")
    for field, value in unet_config.items():
        if field == "transformer_layers_per_block":   # blocks without attention: moot
            n = len(unet_config["down_block_types"])
            per_block = lambda v: v if isinstance(v, list) else [v] * n  # noqa: E731
            got, want = per_block(d[field]), per_block(value)
            attn = [i for i, t in enumerate(unet_config["down_block_types"]) if "Attn" in t]
            assert [got[i] for i in attn] == [want[i] for i in attn]
            assert got[-1] == want[-1] or kind == "sdxl-refiner"   # the mid block's depth
        else:
            assert d[field] == value, field
    assert sf.vae_config_dict(ours.vae, kind)["block_out_channels"] == [128, 256, 512, 512]


def test_key_maps_are_inverse_on_every_rule():
    """Each per-key rule of ldm_keys round-trips (guards the arithmetic directly)."""
    up_attn = lambda b: b > 0  # noqa: E731
    for key in ["down_blocks.2.resnets.1.conv_shortcut.weight", "down_blocks.1.downsamplers.0."
                "conv.bias", "mid_block.resnets.1.time_emb_proj.weight",
                "mid_block.attentions.0.proj_in.weight", "up_blocks.2.upsamplers.0.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight", "up_blocks.3.attentions.2.norm.bias",
                "add_embedding.linear_2.weight", "conv_norm_out.bias"]:
        assert ldm_keys.unet_from_ldm(ldm_keys.unet_to_ldm(key, 2, up_attn), 2) == key
    for key in ["decoder.up_blocks.0.upsamplers.0.conv.weight", "encoder.mid_block.attentions.0."
                "to_out.0.bias", "decoder.up_blocks.3.resnets.2.conv_shortcut.weight",
                "encoder.conv_norm_out.weight", "quant_conv.weight"]:
        assert ldm_keys.vae_from_ldm(ldm_keys.vae_to_ldm(key, 4), 4) == key
    assert ldm_keys.unet_to_ldm("up_blocks.0.upsamplers.0.conv.weight", 2, up_attn) == \
        "output_blocks.2.1.conv.weight"
    assert ldm_keys.unet_from_ldm("input_blocks.0.1.weight", 2) is None


def test_convert_command_both_ways_and_inpainting(sd1, tmp_path):
    """`diffjax convert file.safetensors FOLDER` and `FOLDER out.safetensors --to
    single-file`: the file comes back key for key, bit for bit; a 9-channel UNet is told
    apart as an inpainting model."""
    from diffjax import cli
    src = str(tmp_path / "m.safetensors")
    sf.export_single_file(sd1, src)
    assert cli.main(["convert", src, str(tmp_path / "folder")]) == 0     # -> diffusers
    back = str(tmp_path / "back.safetensors")
    assert cli.main(["convert", str(tmp_path / "folder"), back, "--to", "single-file"]) == 0
    a, _ = sf.read_file(src)
    b, _ = sf.read_file(back)
    _assert_same(a, b, "round trip through a diffusers folder")
    c = preset_components("tiny")
    c.unet_config = dataclasses.replace(c.unet_config, in_channels=9)
    c.unet_params = preset_like_params(c.unet_config)
    ldm, _ = sf.components_to_ldm(c)
    f = sf.split_single_file(ldm)
    assert f.kind == "sd1" and f.inpainting
    assert cli.main(["convert", str(tmp_path / "nope.ckpt"), str(tmp_path / "x")]) == 2
