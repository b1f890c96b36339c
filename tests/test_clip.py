"""CLIP towers: parity with random-init transformers models through our converter.

Tolerance 1e-5 max abs (float32 both sides, outputs of order 1: layer-normed states; the
two sides differ only in op order). Full-size parameter counts are compared without
allocating (torch meta device vs jax.eval_shape).
"""

import numpy as np
import pytest
import transformers

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
except ModuleNotFoundError:
    torch = None

import jax
import jax.numpy as jnp

from diffjax.models.clip import (CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                                 CLIPVisionModel)
from diffjax.models import presets
from diffjax.models.abstract import abstract_params
from diffjax.weights import clip as wclip
from diffjax.weights.io import WeightsError

TEXT_CASES = [  # (hf kwargs, with_projection)
    (dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
          num_attention_heads=4, max_position_embeddings=16, hidden_act="quick_gelu",
          eos_token_id=2), False),
    (dict(vocab_size=900, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
          num_attention_heads=6, max_position_embeddings=12, hidden_act="gelu",
          eos_token_id=899, pad_token_id=0, projection_dim=24), True),
    (dict(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
          num_attention_heads=2, max_position_embeddings=10, hidden_act="gelu",
          layer_norm_eps=1e-6, eos_token_id=2, projection_dim=40), True),
]


def _ids(cfg, batch=3):
    """BOS, random tokens, EOS (the largest id, as CLIP's), then padding of varying length."""
    rng = np.random.default_rng(cfg["hidden_size"])
    L = cfg["max_position_embeddings"]
    eos = cfg["vocab_size"] - 1 if cfg["eos_token_id"] == 2 else cfg["eos_token_id"]
    pad = cfg.get("pad_token_id", eos)
    ids = np.full((batch, L), pad, np.int64)
    for b in range(batch):
        n = 2 + b * (L - 4) // max(batch - 1, 1)
        ids[b, 0] = 0
        ids[b, 1:n] = rng.integers(1, cfg["vocab_size"] - 2, n - 1)
        ids[b, n] = eos
    return ids


@pytest.mark.parity
@pytest.mark.parametrize("case", range(len(TEXT_CASES)))
def test_text_parity(case):
    kw, proj = TEXT_CASES[case]
    torch.manual_seed(case)
    hf_cfg = transformers.CLIPTextConfig(**kw)
    ref = (transformers.CLIPTextModelWithProjection if proj else transformers.CLIPTextModel)(
        hf_cfg).eval()
    with torch.no_grad():  # randomise the LN params too, so the converter must map them
        for name, p in ref.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    config = wclip.clip_text_config_from_hf(hf_cfg.to_dict(), with_projection=proj)
    params = wclip.text_params_from_state_dict(sd, config)
    ids = _ids(kw)
    with torch.no_grad():
        want = ref(torch.tensor(ids), output_hidden_states=True)
    got = jax.jit(lambda p, i: CLIPTextModel(config).apply({"params": p}, i, clip_skip=1))(
        params, jnp.asarray(ids, jnp.int32))
    np.testing.assert_allclose(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.hidden_states[-2], want.hidden_states[-2], atol=1e-5, rtol=0)
    # diffusers' clip_skip=1 context: final LN of the penultimate layer's output
    with torch.no_grad():
        pen = getattr(ref, "text_model", ref).final_layer_norm(want.hidden_states[-2])
    np.testing.assert_allclose(got.context, pen, atol=1e-5, rtol=0)
    if proj:
        np.testing.assert_allclose(got.text_embeds, want.text_embeds, atol=1e-5, rtol=0)
    else:
        np.testing.assert_allclose(got.pooled_output, want.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parity
def test_vision_parity():
    torch.manual_seed(0)
    hf_cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           image_size=24, patch_size=6, projection_dim=16,
                                           hidden_act="quick_gelu")
    ref = transformers.CLIPVisionModelWithProjection(hf_cfg).eval()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=24, patch_size=6,
                              projection_dim=16, hidden_act="quick_gelu")
    params = wclip.vision_params_from_state_dict(sd, config)
    px = np.random.default_rng(0).normal(size=(2, 3, 24, 24)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.tensor(px))
    got = CLIPVisionModel(config).apply({"params": params}, jnp.asarray(px.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.image_embeds, want.image_embeds, atol=1e-5, rtol=0)


@pytest.mark.parity
@pytest.mark.parametrize("name,hf_kw", [
    ("sd1", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, hidden_act="quick_gelu")),
    ("sd2", dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, hidden_act="gelu")),
])
def test_full_size_param_counts(name, hf_kw):
    config = presets.CLIP_TEXT_PRESETS[name]
    with torch.device("meta"):
        ref = transformers.CLIPTextModel(transformers.CLIPTextConfig(**hf_kw))
    want = sum(p.numel() for p in ref.parameters())
    shapes = abstract_params(config)
    got = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert got == want
    assert len(wclip.text_rows(config)) == len(list(ref.parameters()))


@pytest.mark.parity
def test_bad_checkpoint_names_keys():
    kw, _ = TEXT_CASES[0]
    ref = transformers.CLIPTextModel(transformers.CLIPTextConfig(**kw))
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    config = wclip.clip_text_config_from_hf(ref.config.to_dict())
    # transformers v5 saves CLIPTextModel keys without the "text_model." prefix of SD
    # checkpoints; the converter accepts both and reports keys in the prefixed form.
    sd.pop("final_layer_norm.bias")
    sd["encoder.layers.0.mlp.fc1.weight"] = np.zeros((3, 3), np.float32)
    sd["extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(WeightsError) as e:
        wclip.text_params_from_state_dict(sd, config)
    msg = str(e.value)
    assert "1 missing key(s): text_model.final_layer_norm.bias (32,)" in msg
    assert "text_model.extra.weight" in msg
    assert "text_model.encoder.layers.0.mlp.fc1.weight has (3, 3), expected (64, 32)" in msg


@pytest.mark.parity
def test_export_round_trip_loads_in_transformers(tmp_path):
    kw, _ = TEXT_CASES[1]
    torch.manual_seed(1)
    ref = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**kw)).eval()
    ref.save_pretrained(tmp_path / "src", safe_serialization=True)
    config, params = wclip.load_text_encoder(str(tmp_path / "src"))
    wclip.export_text_encoder(config, params, str(tmp_path / "out"))
    back = transformers.CLIPTextModelWithProjection.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor(_ids(kw))
    with torch.no_grad():
        a, b = ref(ids), back(ids)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.text_embeds, b.text_embeds)


@pytest.mark.parity
def test_image_encoder_folder_round_trip_in_transformers(tmp_path):
    """A transformers CLIPVisionModelWithProjection folder -> ours -> export -> transformers:
    bit-equal outputs (float32 storage), and float16 storage loads back upcast to float32."""
    from diffjax.weights.components import upcast_half
    torch.manual_seed(2)
    hf_cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           image_size=24, patch_size=6, projection_dim=16,
                                           hidden_act="gelu")
    ref = transformers.CLIPVisionModelWithProjection(hf_cfg).eval()
    ref.save_pretrained(tmp_path / "src", safe_serialization=True)
    config, params = wclip.load_vision_encoder(str(tmp_path / "src"))
    assert (config.hidden_act, config.projection_dim, config.patch_size) == ("gelu", 16, 6)
    wclip.export_vision_encoder(config, params, str(tmp_path / "out"))
    back = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "out").eval()
    px = torch.tensor(np.random.default_rng(0).normal(size=(2, 3, 24, 24)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(ref(px).image_embeds, back(px).image_embeds)
    wclip.export_vision_encoder(config, params, str(tmp_path / "half"), dtype="float16")
    _, half = wclip.load_vision_encoder(str(tmp_path / "half"))
    half = upcast_half(half)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(half)):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(b, np.asarray(a).astype(np.float16).astype(np.float32))


def test_sharded_text_tower_equals_unsharded():
    from diffjax import sharding
    config = CLIPTextConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=8)
    model = CLIPTextModel(config)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 511, (4, 8)), jnp.int32)
    boxed = abstract_params(config)
    import flax.linen as nn
    params = nn.meta.unbox(model.init(jax.random.key(0), ids)["params"])
    mesh = sharding.make_mesh((2, 1, 4))
    shardings = sharding.param_shardings(boxed, mesh)
    sharded = jax.device_put(params, shardings)
    assert any(len(s.device_set) == 8 and not s.is_fully_replicated
               for s in jax.tree.leaves(jax.tree.map(lambda x: x.sharding, sharded)))
    f = jax.jit(lambda p, i: model.apply({"params": p}, i).last_hidden_state,
                in_shardings=(shardings, sharding.batch_sharding(mesh, 2)))
    np.testing.assert_allclose(f(sharded, ids), model.apply({"params": params}, ids)
                               .last_hidden_state, atol=1e-5, rtol=0)


@pytest.mark.parity
def test_clip_model_logits_match_transformers():
    """Both towers joined with the learned temperature (what CLIP score uses)."""
    from diffjax.models.clip import CLIPModel
    torch.manual_seed(3)
    kw, _ = TEXT_CASES[0]
    tcfg = transformers.CLIPTextConfig(**kw, projection_dim=16)
    vcfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         image_size=24, patch_size=6, projection_dim=16)
    ref = transformers.CLIPModel(transformers.CLIPConfig(text_config=tcfg.to_dict(),
                                                         vision_config=vcfg.to_dict(),
                                                         projection_dim=16)).eval()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    tconf = wclip.clip_text_config_from_hf(tcfg.to_dict(), with_projection=True)
    vconf = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, image_size=24, patch_size=6,
                             projection_dim=16)
    params = {"text_model": wclip.text_params_from_state_dict(
                  {k: v for k, v in sd.items() if k.startswith(("text_model.", "text_proj"))},
                  tconf),
              "vision_model": wclip.vision_params_from_state_dict(
                  {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_"))},
                  vconf),
              "logit_scale": sd["logit_scale"]}
    ids = _ids(kw)
    px = np.random.default_rng(1).normal(size=(2, 3, 24, 24)).astype(np.float32)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px)).logits_per_text
    got = CLIPModel(tconf, vconf).apply({"params": params}, jnp.asarray(ids, jnp.int32),
                                        jnp.asarray(px.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)  # logits scale ~14: 1e-5 relative
