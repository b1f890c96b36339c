"""Textual inversion against diffusers' `load_textual_inversion` on a tiny random SD1 pipeline.

Three files written here (diffusers `learned_embeds` with a token of its own, A1111
`.safetensors` `emb_params`, A1111 `.pt` `string_to_param` read with the restricted
unpickler), multi-vector (3 and 2 vectors): the text encoder's output for a prompt using the
new tokens must equal diffusers' `encode_prompt` after `load_textual_inversion` within
1e-5 x max|ref| (float32; the same network on the same ids). Collisions are refused.
"""

import os
import types

import numpy as np
import pytest

try:  # dev extra: the reference
    import torch
except ModuleNotFoundError:
    torch = None

from diffjax.multi_vector_tokens import expand_prompt, multi_vector_tokens
from diffjax.weights import textual_inversion as ti
from diffjax.weights.io import save_state_dict

PROMPT = "a photo of <cat-toy> next to emb_a and emb_b, <cat-toy>"


def _tiny_sd():
    import diffusers
    import transformers

    from diffjax.text import default_tokenizer_dir
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D",
                                                                       "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        attention_head_dim=2, cross_attention_dim=32, norm_num_groups=8)
    vae = diffusers.AutoencoderKL(block_out_channels=(16,), down_block_types=(
        "DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), layers_per_block=1,
        norm_num_groups=8, latent_channels=4)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77))
    return diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text.eval(),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(default_tokenizer_dir()),
        unet=unet, scheduler=diffusers.EulerDiscreteScheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ti")
    rng = np.random.default_rng(0)
    vecs = {name: rng.standard_normal((n, 32)).astype(np.float32)
            for name, n in (("<cat-toy>", 3), ("emb_a", 2), ("emb_b", 1))}
    paths = {"<cat-toy>": str(root / "learned_embeds.safetensors"),
             "emb_a": str(root / "emb_a.safetensors"), "emb_b": str(root / "emb_b.pt")}
    save_state_dict({"<cat-toy>": vecs["<cat-toy>"]}, paths["<cat-toy>"])
    save_state_dict({"emb_params": vecs["emb_a"]}, paths["emb_a"])
    torch.save({"string_to_param": {"*": torch.nn.Parameter(torch.from_numpy(vecs["emb_b"]))},
                "string_to_token": {"*": 265}, "name": "emb_b", "step": 100}, paths["emb_b"])
    return paths, vecs


@pytest.mark.parity
def test_embedding_equals_diffusers_load_textual_inversion(files, tmp_path):
    import jax

    from diffjax.models.clip import CLIPTextModel
    from diffjax.text import load_tokenizer
    from diffjax.weights.clip import clip_text_config_from_hf, text_params_from_state_dict
    paths, vecs = files
    pipe = _tiny_sd()
    config = clip_text_config_from_hf(pipe.text_encoder.config.to_dict())
    # the text tower only, converted by our converter before diffusers adds the tokens
    c = types.SimpleNamespace(
        text_config=config, text_params=text_params_from_state_dict(
            {k: v.numpy() for k, v in pipe.text_encoder.state_dict().items()}, config),
        tokenizer_dir=None, text_config_2=None)
    for token, path in paths.items():
        if path.endswith(".pt"):    # diffusers reads A1111 .pt files through torch.load
            pipe.load_textual_inversion(path, token=token)
        else:
            pipe.load_textual_inversion(path, token=None if token == "<cat-toy>" else token)
    with torch.no_grad():
        want = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0].numpy()[0]
    assert ti.add_embedding(c, paths["<cat-toy>"]) == ("<cat-toy>", 3)   # the file's token
    assert ti.add_embedding(c, paths["emb_a"]) == ("emb_a", 2)           # the file's stem
    with pytest.raises(Exception, match="pickle"):
        ti.add_embedding(c, paths["emb_b"])
    assert ti.add_embedding(c, paths["emb_b"], allow_pickle=True) == ("emb_b", 1)
    tok = load_tokenizer(c.tokenizer_dir)
    ids = tok.tokenize([PROMPT]).ids
    assert tok.vocab_size == c.text_config.vocab_size == 49408 + 6
    got = np.asarray(CLIPTextModel(c.text_config).apply({"params": c.text_params}, ids
                                                        ).context)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
    n_new = int(((ids >= 49408)).sum())
    assert n_new == 3 + 2 + 1 + 3          # <cat-toy> twice (3 vectors each), emb_a, emb_b
    ti.remove_folder(c.tokenizer_dir)
    del jax


@pytest.mark.parity   # the `files` fixture writes the A1111 .pt with torch
def test_collisions_and_formats(files, tmp_path):
    from diffjax.weights.components import preset_components
    paths, vecs = files
    c = preset_components("tiny")
    ti.add_embedding(c, paths["emb_a"])
    with pytest.raises(ti.TextualInversionError, match="already in the tokenizer"):
        ti.add_embedding(c, paths["emb_a"])                      # the same token again
    with pytest.raises(ti.TextualInversionError, match="already in the tokenizer"):
        ti.add_embedding(c, paths["emb_a"], token="cat")          # a vocabulary word
    bad = str(tmp_path / "bad.safetensors")
    save_state_dict({"a": np.zeros((1, 32), np.float32), "b": np.zeros((1, 32), np.float32)},
                    bad)
    with pytest.raises(ti.TextualInversionError, match="not a textual-inversion"):
        ti.add_embedding(c, bad)
    wide = str(tmp_path / "wide.safetensors")
    save_state_dict({"emb_params": np.zeros((2, 48), np.float32)}, wide)
    with pytest.raises(ti.TextualInversionError, match="width 48"):
        ti.add_embedding(c, wide, token="<wide>")
    sdxl = str(tmp_path / "xl.safetensors")
    save_state_dict({"clip_l": np.zeros((2, 32), np.float32)}, sdxl)
    with pytest.raises(ti.TextualInversionError, match="one-tower"):
        ti.add_embedding(c, sdxl)
    assert expand_prompt("x <t>, y <t>", {"<t>": 3, "z": 2}) == \
        "x <t> <t>_1 <t>_2, y <t> <t>_1 <t>_2"
    assert multi_vector_tokens({"a": 1, "a_1": 2, "b": 3}) == {"a": 2}
    assert os.path.isdir(c.tokenizer_dir)


def test_sdxl_embedding_goes_to_both_towers(tmp_path):
    """SDXL files (clip_l / clip_g): each tower's tokenizer gains the tokens at the same ids
    and each embedding table the file's rows; the second tokenizer keeps padding with "!"."""
    import jax

    from diffjax.models.clip import CLIPTextConfig
    from diffjax.text import load_tokenizer
    from diffjax.weights.components import random_params

    def tower(width, **kw):
        import flax.linen as nn

        from diffjax.models.abstract import abstract_params
        cfg = CLIPTextConfig(hidden_size=width, intermediate_size=2 * width,
                             num_hidden_layers=1, num_attention_heads=2, **kw)
        return cfg, random_params(nn.meta.unbox(abstract_params(cfg)), width)
    (c1, p1), (c2, p2) = tower(24), tower(32, hidden_act="gelu", projection_dim=16)
    c = types.SimpleNamespace(text_config=c1, text_params=p1, tokenizer_dir=None,
                              text_config_2=c2, text_params_2=p2, tokenizer_2_dir=None)
    rng = np.random.default_rng(2)
    l, g = rng.standard_normal((2, 24)), rng.standard_normal((2, 32))
    path = str(tmp_path / "xl_style.safetensors")
    save_state_dict({"clip_l": l.astype(np.float32), "clip_g": g.astype(np.float32)}, path)
    assert ti.add_embedding(c, path) == ("xl_style", 2)
    for folder, params, rows, pad in ((c.tokenizer_dir, c.text_params, l, 49407),
                                      (c.tokenizer_2_dir, c.text_params_2, g, 0)):
        tok = load_tokenizer(folder)
        assert tok.pad_id == pad
        assert list(tok.pieces(["xl_style"])[0]) == [49408, 49409]     # expanded
        np.testing.assert_array_equal(params["token_embedding"]["embedding"][49408:],
                                      rows.astype(np.float32))
    assert c.text_config.vocab_size == c.text_config_2.vocab_size == 49410
    del jax
