"""LoRA: kohya/A1111 and diffusers/PEFT files, LoCon conv layers, text-encoder LoRA, two LoRAs
at scales 0.7 and -0.3, against diffusers' own `load_lora_weights` + `set_adapters` +
`fuse_lora` on a tiny random SD 1.x pipeline.

The files are written here: one in kohya's naming (attention, feed-forward, 3x3 and 1x1
conv (LoCon), time-embedding projection and text-encoder layers, alpha 2 != rank 4), one in
diffusers/PEFT naming (lora_A/lora_B, conv too, no alpha). Where diffusers 0.42.1 itself
departs from kohya's rule (per-module alphas on SD1 attention layers; kohya text-encoder
self_attn names) the file avoids it and the rule is checked against float64 numpy instead. Checks: the fused weights equal
diffusers' fused state dicts (through our converter) within 1e-5 x max|W| (float32 matmul
order only), and the sampled latents of the pipeline with diffjax's fused params (fused on
the devices, sharded) equal those of the pipeline loaded from diffusers' fused weights
within 1e-4 x max|ref| (float32; the same program on weights that differ by rounding).
The same on a tiny SDXL (kohya's SGM-named UNet layers, lora_te1_/lora_te2_, PEFT
text_encoder_2), through `load_pipeline(loras=["FILE:SCALE", ...])`, with the hashes in the
metadata.
"""

import os

import numpy as np
import pytest

try:  # dev extra: the reference needs torch, diffusers and peft
    import torch
except ModuleNotFoundError:
    torch = None

import jax

from diffjax.weights import lora
from diffjax.weights.io import save_state_dict

SCALES = (0.7, -0.3)
RANK = 4


def _tiny_diffusers_pipeline():
    import diffusers
    import transformers

    from diffjax.text import default_tokenizer_dir
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        attention_head_dim=(2, 4), cross_attention_dim=32, norm_num_groups=8)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
        latent_channels=4, sample_size=32)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77))
    return diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text.eval(),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(default_tokenizer_dir()),
        unet=unet, scheduler=diffusers.EulerDiscreteScheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def _pair(rng, out_shape, in_shape, rank=RANK):
    """(down, up) of a LoRA for a weight [out, in(, k, k)]: conv-shaped for convs."""
    out, rest = out_shape[0], in_shape
    down = rng.standard_normal((rank, *rest)).astype(np.float32) * 0.3
    up = rng.standard_normal((out, rank) + ((1, 1) if len(rest) == 3 else ())
                             ).astype(np.float32) * 0.3
    return down, up


# module (diffusers name) -> in shape of its weight (out from the model)
KOHYA_MODULES = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "down_blocks.0.attentions.0.proj_in",            # 1x1 conv (use_linear_projection off)
    "down_blocks.0.resnets.0.conv1",                 # 3x3 conv: LoCon
    "up_blocks.1.resnets.1.conv_shortcut",           # 1x1 conv
    "down_blocks.1.resnets.0.time_emb_proj",
]
# (diffusers 0.42.1 with transformers 5 does not load kohya's text-encoder self_attn names:
# it leaves `to_q_lora.down.weight` unexpected, so the comparison uses the MLP layers; the
# self_attn names are checked in test_delta_rule_and_errors.)
KOHYA_TEXT = ["text_model.encoder.layers.0.mlp.fc2", "text_model.encoder.layers.1.mlp.fc1"]
# One network alpha for every module, as kohya's scripts write it (diffusers applies a
# single alpha to its SD1 attention layers; per-module alphas: test_delta_rule_and_errors).
KOHYA_ALPHA = 2.0
PEFT_MODULES = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",   # shared with kohya
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_v",
    "up_blocks.1.resnets.0.conv2",                                  # 3x3 conv
]
PEFT_TEXT = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.self_attn.out_proj"]


def _write_loras(pipe, root):
    rng = np.random.default_rng(0)
    unet_sd = {k: v.numpy() for k, v in pipe.unet.state_dict().items()}
    text_sd = {k: v.numpy() for k, v in pipe.text_encoder.state_dict().items()}
    text_sd = {(k if k.startswith("text_model.") else "text_model." + k): v
               for k, v in text_sd.items()}
    kohya = {}
    for sd, modules, prefix in ((unet_sd, KOHYA_MODULES, "lora_unet_"),
                                (text_sd, KOHYA_TEXT, "lora_te_")):
        for m in modules:
            w = sd[m + ".weight"]
            down, up = _pair(rng, w.shape, w.shape[1:])
            name = prefix + m.replace(".", "_")
            kohya.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                          f"{name}.alpha": np.asarray(KOHYA_ALPHA, np.float32)})
    peft = {}
    for sd, modules, prefix in ((unet_sd, PEFT_MODULES, "unet."),
                                (text_sd, PEFT_TEXT, "text_encoder.")):
        for m in modules:
            w = sd[m + ".weight"]
            down, up = _pair(rng, w.shape, w.shape[1:])
            peft.update({f"{prefix}{m}.lora_A.weight": down, f"{prefix}{m}.lora_B.weight": up})
    paths = [os.path.join(root, "kohya_style.safetensors"),
             os.path.join(root, "peft_style.safetensors")]
    save_state_dict(kohya, paths[0])
    save_state_dict(peft, paths[1])
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("peft", reason="diffusers' LoRA loading needs peft (dev extra)")
    root = tmp_path_factory.mktemp("lora")
    pipe = _tiny_diffusers_pipeline()
    folder = str(root / "base")
    pipe.save_pretrained(folder, safe_serialization=True)
    paths = _write_loras(pipe, str(root))
    for path, name in zip(paths, ("kohya", "peft")):
        pipe.load_lora_weights(path, adapter_name=name)
    pipe.set_adapters(["kohya", "peft"], adapter_weights=list(SCALES))
    pipe.fuse_lora(adapter_names=["kohya", "peft"], lora_scale=1.0)
    pipe.unload_lora_weights()
    fused = str(root / "fused")
    pipe.save_pretrained(fused, safe_serialization=True)
    return folder, fused, paths


@pytest.mark.parity
def test_fused_params_and_latents_equal_diffusers(setup):
    from diffjax.pipeline import TextToImage
    from diffjax.sample_spec import SampleSpec
    from diffjax.weights.diffusers_folder import load_sd_folder
    folder, fused, paths = setup

    def load(path):   # transformers 5 saves tokenizer.json only: use the same packaged vocab
        c = load_sd_folder(path)
        c.tokenizer_dir = None
        return c
    ref, ours = load(fused), load(folder)
    specs = [lora.LoraSpec(p, s) for p, s in zip(paths, SCALES)]
    deltas, hashes = lora.load_loras(ours, specs)
    assert set(hashes) == {"kohya_style", "peft_style"}
    assert len(deltas) == len(set(KOHYA_MODULES) | set(PEFT_MODULES)) + \
        len(set(KOHYA_TEXT) | set(PEFT_TEXT))
    host = load(folder)   # (a second copy: fuse_host adds in place)
    lora.fuse_host(host, deltas)
    for field in ("unet_params", "text_params"):
        for a, b in zip(jax.tree.leaves(getattr(host, field)),
                        jax.tree.leaves(getattr(ref, field))):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))
    # two of the 8 CPU devices, the batch split over them: the LoRA add runs on sharded
    # params without the cost of an 8-row batch
    spec = SampleSpec(sampler="euler", steps=2, batch_size=2, mesh_shape=(-1, 1, 1))
    prompts, seeds = ["a red square"] * 2, [0, 1]
    pipe = TextToImage(ours, spec, output="latents", devices=jax.devices()[:2])
    base = pipe(prompts, seeds)
    placed = pipe.params
    pipe.params = lora.fuse_placed(placed, deltas)            # fused on the devices
    assert all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(pipe.params),
                                                         jax.tree.leaves(placed)))
    got = pipe(prompts, seeds)                                # same program, new params
    pipe.params = jax.device_put({"text": ref.text_params, "unet": ref.unet_params,
                                  "vae": ref.vae_params}, pipe.param_shardings)
    want = pipe(prompts, seeds)
    scale = float(np.abs(want).max())
    assert float(np.abs(base - want).max()) > 1e-2 * scale      # the LoRAs do change things
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


# ------------------------------------------------------------------ without a reference
def want_q_unscaled(down, up):
    """0.5 (scale) * 8 / 4 (alpha / rank) / 4 = 0.25: the k_proj check's expected delta / 4."""
    return 0.25 * (up.astype(np.float64) @ down.astype(np.float64))


def test_delta_rule_and_errors():
    """kohya's rule scale * alpha / rank * up @ down against float64 numpy, for a linear
    and a 3x3 conv (in flax layout), and every way a file can fail to fit."""
    from diffjax.weights.components import preset_components
    from diffjax.weights.mapping import get_path
    c = preset_components("tiny")
    rng = np.random.default_rng(1)
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    conv = "down_blocks.0.resnets.0.conv1"
    dq, uq = _pair(rng, (32,), (32,))
    dc, uc = _pair(rng, (32,), (32, 3, 3))
    sd = {f"lora_unet_{q.replace('.', '_')}.lora_down.weight": dq,
          f"lora_unet_{q.replace('.', '_')}.lora_up.weight": uq,
          f"lora_unet_{q.replace('.', '_')}.alpha": np.float32(2.0),
          f"unet.{conv}.lora_A.weight": dc, f"unet.{conv}.lora_B.weight": uc,
          "lora_te_text_model_encoder_layers_1_self_attn_k_proj.lora_down.weight": dq,
          "lora_te_text_model_encoder_layers_1_self_attn_k_proj.lora_up.weight": uq,
          "lora_te_text_model_encoder_layers_1_self_attn_k_proj.alpha": np.float32(8.0)}
    deltas = lora.lora_deltas(c, sd, scale=0.5)
    (kk, vk), = [(k, v) for k, v in deltas.items() if k[0] == "text"]
    assert kk[1][-3:] == ("self_attn", "k_proj", "kernel") and kk[1][1] == "layers_1"
    np.testing.assert_allclose(vk, 4 * want_q_unscaled(dq, uq).T, rtol=1e-6, atol=1e-6)
    want_q = 0.5 * (2.0 / RANK) * (uq.astype(np.float64) @ dq.astype(np.float64))
    want_c = 0.5 * (uc[:, :, 0, 0].astype(np.float64) @ dc.reshape(RANK, -1)).reshape(32, 32, 3, 3)
    (kq, vq), = [(k, v) for k, v in deltas.items() if k[1][-2] == "to_q"]
    (kc, vc), = [(k, v) for k, v in deltas.items() if k[1][-2] == "conv1"]
    np.testing.assert_allclose(vq, want_q.T, rtol=1e-6, atol=1e-6)          # [in, out]
    np.testing.assert_allclose(vc, want_c.transpose(2, 3, 1, 0), rtol=1e-6, atol=1e-6)
    assert get_path(c.unet_params, kc[1]).shape == vc.shape
    with pytest.raises(lora.LoraError, match="lora_unet_down_blocks_9_nothing"):
        lora.lora_deltas(c, dict(sd, **{"lora_unet_down_blocks_9_nothing.lora_down.weight": dq,
                                        "lora_unet_down_blocks_9_nothing.lora_up.weight": uq}))
    with pytest.raises(lora.LoraError, match="weird_key"):
        lora.lora_deltas(c, dict(sd, weird_key=dq))
    with pytest.raises(lora.LoraError, match="no up weight"):
        lora.lora_deltas(c, {f"unet.{q}.lora_A.weight": dq})
    with pytest.raises(lora.LoraError, match="does not fit"):
        lora.lora_deltas(c, {f"unet.{q}.lora_A.weight": dc, f"unet.{q}.lora_B.weight": uc})
    assert lora.parse_lora_arg("a/b.safetensors:0.7") == lora.LoraSpec("a/b.safetensors", 0.7)
    assert lora.parse_lora_arg("c:/x.safetensors") == lora.LoraSpec("c:/x.safetensors", 1.0)
    assert lora.parse_lora_arg("x.safetensors:-0.3").scale == -0.3


# ------------------------------------------------------------------------------- SDXL
def _tiny_sdxl():
    """A tiny SDXL (CLIP-L-like + bigG-like towers, text_time UNet) as diffjax Components."""
    import flax.linen as nn

    from diffjax.models.abstract import abstract_params
    from diffjax.models.clip import CLIPTextConfig
    from diffjax.models.unet import UNetConfig
    from diffjax.models.vae import VAEConfig
    from diffjax.weights.components import SD_SCHEDULER, Components, random_params
    rng = np.random.default_rng(5)

    def params(config, seed):      # every leaf random (norms and biases too)
        p = random_params(nn.meta.unbox(abstract_params(config)), seed)
        return jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(
            np.float32), p)
    te1 = CLIPTextConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2)
    te2 = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, hidden_act="gelu", projection_dim=16)
    unet = UNetConfig(sample_size=8, block_out_channels=(32, 48),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=2,
                      attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
                      cross_attention_dim=56, use_linear_projection=True, norm_num_groups=8,
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=16 + 6 * 8)
    vae = VAEConfig(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                    sample_size=16, scaling_factor=0.13025)
    return Components("sdxl-tiny", te1, params(te1, 1), unet, params(unet, 2), vae,
                      params(vae, 3), None,
                      dict(SD_SCHEDULER, _class_name="EulerDiscreteScheduler",
                           timestep_spacing="leading", steps_offset=1),
                      text_config_2=te2, text_params_2=params(te2, 4),
                      force_zeros_for_empty_prompt=True)


# kohya's SDXL scripts name UNet layers as the SGM/LDM UNet (input_blocks/middle_block/...)
SDXL_KOHYA = {
    "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q":
        "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q",
    "lora_unet_output_blocks_1_1_transformer_blocks_0_attn2_to_k":
        "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k",
    "lora_unet_middle_block_1_transformer_blocks_0_ff_net_2":
        "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
    "lora_unet_input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",   # LoCon 3x3
    "lora_te1_text_model_encoder_layers_0_mlp_fc1": "te1:text_model.encoder.layers.0.mlp.fc1",
    "lora_te2_text_model_encoder_layers_1_mlp_fc2": "te2:text_model.encoder.layers.1.mlp.fc2",
}
SDXL_PEFT = ["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
             "unet.up_blocks.1.resnets.2.conv2",
             "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj",
             "text_encoder.text_model.encoder.layers.1.self_attn.v_proj"]


@pytest.mark.parity
@pytest.mark.slow
def test_sdxl_two_loras_equal_diffusers(tmp_path):
    pytest.importorskip("peft", reason="diffusers' LoRA loading needs peft (dev extra)")
    import diffusers

    from diffjax.pipeline_loading import load_pipeline
    from diffjax.sample_spec import SampleSpec
    from diffjax.weights.clip import text_params_to_state_dict
    from diffjax.weights.diffusers_folder import export_sd_folder, load_sd_folder
    from diffjax.weights.unet import unet_params_to_state_dict
    c = _tiny_sdxl()
    folder = str(tmp_path / "base")
    export_sd_folder(c, folder)
    sds = {"unet": unet_params_to_state_dict(c.unet_params, c.unet_config),
           "te1": text_params_to_state_dict(c.text_params, c.text_config),
           "te2": text_params_to_state_dict(c.text_params_2, c.text_config_2)}
    rng = np.random.default_rng(3)
    kohya, peft = {}, {}
    for name, target in SDXL_KOHYA.items():
        net, module = target.split(":") if ":" in target else ("unet", target)
        w = sds[net][module + ".weight"]
        down, up = _pair(rng, w.shape, w.shape[1:])
        kohya.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                      f"{name}.alpha": np.asarray(KOHYA_ALPHA, np.float32)})
    for key in SDXL_PEFT:
        net, module = key.split(".", 1)
        w = sds[{"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}[net]][
            module + ".weight"]
        down, up = _pair(rng, w.shape, w.shape[1:])
        peft.update({f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up})
    paths = [str(tmp_path / "kohya_xl.safetensors"), str(tmp_path / "peft_xl.safetensors")]
    save_state_dict(kohya, paths[0])
    save_state_dict(peft, paths[1])
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    for path, name in zip(paths, ("kohya", "peft")):
        pipe.load_lora_weights(path, adapter_name=name)
    pipe.set_adapters(["kohya", "peft"], adapter_weights=list(SCALES))
    pipe.fuse_lora(adapter_names=["kohya", "peft"], lora_scale=1.0)
    pipe.unload_lora_weights()
    fused = str(tmp_path / "fused")
    pipe.save_pretrained(fused, safe_serialization=True)
    ref = load_sd_folder(fused)
    spec = SampleSpec(sampler="euler", steps=2, batch_size=2, height=16, width=16)
    ours = load_pipeline(folder, spec, loras=[f"{p}:{s}" for p, s in zip(paths, SCALES)],
                         output="latents", devices=jax.devices()[:2])
    placed = jax.device_get(ours.params)
    for key, field in (("unet", "unet_params"), ("text", "text_params"),
                       ("text_2", "text_params_2")):
        for a, b in zip(jax.tree.leaves(placed[key]), jax.tree.leaves(getattr(ref, field))):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))
    prompts, seeds = ["a red square", "a (blue:1.2) circle"], [0, 1]
    got = ours(prompts, seeds)
    ours.params = jax.device_put({"text": ref.text_params, "text_2": ref.text_params_2,
                                  "unet": ref.unet_params, "vae": ref.vae_params},
                                 ours.param_shardings)
    want = ours(prompts, seeds)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
    meta = ours.metadata("a red square", "", 0)
    assert set(meta["lora_hashes"]) == {"kohya_xl", "peft_xl"}
