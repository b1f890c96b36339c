"""`diffjax convert`: diffusers folder -> diffjax orbax checkpoint -> diffusers folder.

The reference is a tiny random-init diffusers `StableDiffusionPipeline` saved with
`save_pretrained` (norm scales/biases randomised too, so a dropped or swapped mapping row
cannot pass). Conversion only transposes float32 arrays and stores them, so every check is
EXACT (tolerance 0): state dicts bit-equal, pipeline images bit-equal (same torch program on
the same weights), restored params bit-equal to `load_sd_folder`'s.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
except ModuleNotFoundError:
    torch = None

import jax

from diffjax import cli
from diffjax.text import default_tokenizer_dir
from diffjax.weights import checkpoint
from diffjax.weights.components import preset_components
from diffjax.weights.diffusers_folder import load_sd_folder
from diffjax.weights.io import WeightsError

# The schedule Stable Diffusion 1.x ships (PNDM, the form export_sd_folder writes), so the
# source and the round-tripped pipelines run the identical sampler.
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                    set_alpha_to_one=False)


def _randomise_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)


def _tiny_diffusers_pipeline():
    import diffusers
    import transformers
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        attention_head_dim=(2, 4), cross_attention_dim=32, use_linear_projection=True,
        norm_num_groups=8)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
        latent_channels=4, sample_size=32)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77))
    for m in (unet, vae, text):
        _randomise_norms(m)
    return diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text.eval(),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(default_tokenizer_dir()),
        unet=unet, scheduler=diffusers.PNDMScheduler(**SD_SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def _images(pipe):
    out = pipe(["a red square", "two blue circles"], num_inference_steps=3, height=32,
               width=32, guidance_scale=5.0, output_type="np",
               generator=torch.Generator().manual_seed(0))
    return out.images


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(source folder, checkpoint, exported folder), converted through the CLI."""
    root = tmp_path_factory.mktemp("convert")
    src, ckpt, out = str(root / "src"), str(root / "ckpt"), str(root / "out")
    _tiny_diffusers_pipeline().save_pretrained(src, safe_serialization=True)
    assert cli.main(["convert", src, ckpt]) == 0            # default direction: -> diffjax
    assert cli.main(["convert", ckpt, out]) == 0            # default direction: -> diffusers
    return src, ckpt, out


@pytest.mark.parity
def test_round_trip_reloads_in_diffusers_identically(converted):
    import diffusers
    src, _, out = converted
    ref = diffusers.StableDiffusionPipeline.from_pretrained(src)
    got = diffusers.StableDiffusionPipeline.from_pretrained(out)
    for name in ("unet", "vae", "text_encoder"):
        want_sd, got_sd = getattr(ref, name).state_dict(), getattr(got, name).state_dict()
        assert sorted(want_sd) == sorted(got_sd), name
        for k, v in want_sd.items():
            assert torch.equal(v, got_sd[k]), f"{name}.{k} changed"
    for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps",
              "prediction_type", "steps_offset", "skip_prk_steps", "set_alpha_to_one"):
        assert got.scheduler.config[k] == ref.scheduler.config[k], k
    want, have = _images(ref), _images(got)
    assert want.shape == (2, 32, 32, 3) and want.std() > 1e-3   # a real, non-constant output
    np.testing.assert_array_equal(have, want)


@pytest.mark.parity
def test_checkpoint_restores_exactly_what_the_folder_holds(converted):
    src, ckpt, _ = converted
    assert checkpoint.is_checkpoint(ckpt) and not checkpoint.is_checkpoint(src)
    want = load_sd_folder(src)
    got = checkpoint.load_checkpoint(ckpt)
    assert got.name == "src" and got.scheduler == want.scheduler
    for field in ("text_config", "unet_config", "vae_config"):
        assert getattr(got, field) == getattr(want, field), field
    assert got.unet_config.attention_head_dim == (2, 4)     # tuples survive JSON
    for field in ("text_params", "unet_params", "vae_params"):
        w, g = getattr(want, field), getattr(got, field)
        assert jax.tree.structure(w) == jax.tree.structure(g), field
        for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(g)):
            assert b.dtype == np.float32
            np.testing.assert_array_equal(np.asarray(b), a)
    for f in os.listdir(want.tokenizer_dir):             # the tokenizer travels with it
        with open(os.path.join(want.tokenizer_dir, f), "rb") as a, \
                open(os.path.join(got.tokenizer_dir, f), "rb") as b:
            assert a.read() == b.read(), f
    # run-time choices are overridable at load time, weights unchanged
    bf = checkpoint.load_checkpoint(ckpt, dtype="bfloat16", attention="chunked")
    assert bf.unet_config.dtype == "bfloat16" and bf.text_config.attention_impl == "chunked"
    assert bf.vae_config.attention_impl == "chunked"


@pytest.mark.parity
def test_restore_onto_param_shardings(converted):
    """Params are born sharded: text encoder and VAE restored straight onto the
    logical-rule shardings of a (2, 1, 4) mesh, values identical to the plain restore.
    (Not the UNet here: its linear proj_in/proj_out carry logical axes (embed, embed),
    which flax's logical_to_mesh_axes rejects -- reported to the lead.)"""
    from diffjax import sharding
    from diffjax.models.abstract import abstract_params
    _, ckpt, _ = converted
    plain = checkpoint.load_checkpoint(ckpt)
    mesh = sharding.make_mesh((2, 1, 4))
    boxed = {"text_encoder": abstract_params(plain.text_config),
             "vae": abstract_params(plain.vae_config)}
    shardings = {k: sharding.param_shardings(v, mesh) for k, v in boxed.items()}
    got = checkpoint.load_checkpoint(ckpt, shardings=shardings)
    for name, field in (("text_encoder", "text_params"), ("vae", "vae_params")):
        leaves = jax.tree.leaves(getattr(got, field))
        assert sum(not a.sharding.is_fully_replicated for a in leaves) >= 4, name
        assert all(a.sharding == s for a, s in zip(leaves, jax.tree.leaves(shardings[name])))
        for a, b in zip(leaves, jax.tree.leaves(getattr(plain, field))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(WeightsError, match=r"unknown items \['clip'\]"):
        checkpoint.load_checkpoint(ckpt, shardings={"clip": shardings["vae"]})


def test_preset_to_checkpoint_and_back(tmp_path):
    want = preset_components("tiny", seed=3)
    assert cli.main(["convert", "tiny", str(tmp_path / "ck"), "--seed", "3"]) == 0
    got = checkpoint.load_checkpoint(str(tmp_path / "ck"))
    assert got.tokenizer_dir is None                     # packaged vocabulary, not copied
    assert got.unet_config == want.unet_config and got.scheduler == want.scheduler
    for a, b in zip(jax.tree.leaves(want.vae_params), jax.tree.leaves(got.vae_params)):
        np.testing.assert_array_equal(np.asarray(b), a)
    # the same checkpoint as a diffusers folder: explicit --to, then back again
    assert cli.main(["convert", str(tmp_path / "ck"), str(tmp_path / "f"), "--to",
                     "diffusers"]) == 0
    again = load_sd_folder(str(tmp_path / "f"))
    for a, b in zip(jax.tree.leaves(want.text_params), jax.tree.leaves(again.text_params)):
        np.testing.assert_array_equal(b, a)
    assert got.clip_skip == again.clip_skip == 0


def test_trained_clip_skip_travels_with_the_model(tmp_path):
    """A model trained on an earlier text layer (diffjax-mini) declares it; a sample's
    clip_skip -1 then means that layer, through a folder and a diffjax checkpoint alike."""
    from diffjax.pipeline import TextToImage
    from diffjax.sample_spec import SampleSpec
    from diffjax.weights.diffusers_folder import CLIP_SKIP_KEY, export_sd_folder
    c = dataclasses.replace(preset_components("tiny", seed=0), clip_skip=2)
    export_sd_folder(c, str(tmp_path / "f"))
    with open(tmp_path / "f" / "model_index.json") as f:
        assert json.load(f)[CLIP_SKIP_KEY] == 2
    folder = load_sd_folder(str(tmp_path / "f"))
    checkpoint.save_checkpoint(folder, str(tmp_path / "ck"))
    assert folder.clip_skip == checkpoint.load_checkpoint(str(tmp_path / "ck")).clip_skip == 2
    spec = SampleSpec(steps=1, batch_size=8)
    assert TextToImage(folder, spec).metadata("p", "", 0)["clip_skip"] == 2
    explicit = TextToImage(folder, dataclasses.replace(spec, clip_skip=0))
    assert explicit.metadata("p", "", 0)["clip_skip"] == 0
    index = json.loads((tmp_path / "f" / "model_index.json").read_text())
    (tmp_path / "f" / "model_index.json").write_text(json.dumps({**index, CLIP_SKIP_KEY: "2"}))
    with pytest.raises(WeightsError, match="_diffjax_clip_skip must be an integer >= 0, "
                                           "got '2'"):
        load_sd_folder(str(tmp_path / "f"))


@pytest.mark.parity
def test_errors_name_the_problem(converted, tmp_path, capsys):
    src, ckpt, _ = converted
    # an existing destination is never overwritten without --force
    assert cli.main(["convert", src, ckpt]) == 2
    assert f"destination {ckpt!r} already exists" in capsys.readouterr().err
    # a source that is none of preset / folder / checkpoint
    missing = str(tmp_path / "nope")
    assert cli.main(["convert", missing, str(tmp_path / "x")]) == 2
    assert "neither a packaged model (mini), a preset" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
    with pytest.raises(WeightsError, match="not a diffjax checkpoint"):
        checkpoint.load_checkpoint(src)
    # a checkpoint whose UNet arrays do not fit its stored config names the network
    c = checkpoint.load_checkpoint(ckpt)
    bad = dataclasses.replace(c, unet_config=dataclasses.replace(
        c.unet_config, block_out_channels=(32, 48)))
    checkpoint.save_checkpoint(bad, str(tmp_path / "bad"))
    with pytest.raises(WeightsError, match="unet params in .* does not match") as e:
        checkpoint.load_checkpoint(str(tmp_path / "bad"))
    assert "down_blocks_1/resnets_0/conv1/kernel has (3, 3, 32, 64), expected (3, 3, 32, 48)" \
        in str(e.value), str(e.value)
    # --force replaces, and leaves no .partial behind
    assert cli.main(["convert", src, str(tmp_path / "bad"), "--force"]) == 0
    checkpoint.load_checkpoint(str(tmp_path / "bad"))
    assert not os.path.exists(str(tmp_path / "bad") + ".partial")
