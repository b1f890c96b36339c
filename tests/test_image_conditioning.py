"""img2img and inpainting on the tiny preset: strength 0 is the VAE round trip, strength 1
is text-to-image, blending keeps the unmasked latents, the 9-channel inpainting UNet matches
diffusers, bad inputs are named before the model is placed, and `diffjax sample`'s image
flags (the checks themselves: test_images.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import diffusers
    import torch
except ModuleNotFoundError:
    diffusers = torch = None

from diffjax import images
from diffjax.diffusion import image_conditioning as ic
from diffjax.models.unet import UNet2DConditionModel
from diffjax.models.vae import AutoencoderKL
from diffjax.pipeline import TextToImage
from diffjax.sample_spec import InitImage, SampleSpec
from diffjax.weights import unet as wu
from diffjax.weights.components import preset_components

# Euler: one UNet call per step, deterministic; 3 steps keep each compile small.
SPEC = SampleSpec(sampler="euler", steps=3, guidance_scale=4.0, batch_size=2,
                  mesh_shape=(1, 1, 1))
PROMPTS, SEEDS = ["a red circle", "a blue square"], [0, 7]
H = W = 32  # tiny preset: 16x16 latents through a 2x VAE


@pytest.fixture(scope="module")
def tiny():
    return preset_components("tiny", seed=0)


@pytest.fixture(scope="module")
def init_image():
    """A smooth image with structure (random pixels would be all high frequency)."""
    y, x = np.mgrid[0:H, 0:W] / H
    return np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x * y)], -1).astype(np.float32)


@pytest.fixture(scope="module")
def mask():
    m = np.zeros((H, W), np.uint8)
    m[8:20, 10:26] = 255          # even bounds: whole latent cells
    return m


def _pipe(components, init_image, output="images", **init):
    return TextToImage(components, SPEC, devices=jax.devices()[:1], output=output,
                       init=InitImage(init_image, **init))


@pytest.fixture(scope="module")
def round_trip(tiny, init_image):
    """(decode(encode(init)) in [0, 1], the init latent scaled for the UNet), one compile."""
    vae = AutoencoderKL(tiny.vae_config)

    @jax.jit
    def f(p, image):
        z = vae.apply(p, image[None] * 2 - 1, method=vae.encode).mode()
        out = vae.apply(p, z, method=vae.decode)
        return jnp.clip((out[0] + 1) / 2, 0, 1), z[0] * tiny.vae_config.scaling_factor
    return tuple(np.asarray(a) for a in f({"params": tiny.vae_params}, init_image))


def test_strength_zero_is_the_vae_round_trip(tiny, init_image, round_trip):
    got = _pipe(tiny, init_image, strength=0.0)(PROMPTS, SEEDS)
    want, _ = round_trip
    # Same float32 ops in two separately compiled programs: reassociation only.
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=0, atol=1e-5)


def test_strength_one_is_text_to_image(tiny, init_image):
    got = _pipe(tiny, init_image, strength=1.0, output="latents")(PROMPTS, SEEDS)
    t2i = TextToImage(tiny, SPEC, devices=jax.devices()[:1], output="latents")
    want = t2i(PROMPTS, SEEDS)
    # Same noise, same grid, same denoiser: equal up to float reassociation in two programs.
    err = np.max(np.abs(got - want))
    assert err <= 1e-5 * np.max(np.abs(want)), err


def test_strength_picks_the_start_of_the_grid():
    # diffusers' rule: int(steps * strength) steps are run, from sigmas[steps - that].
    assert [ic.start_index(3, s) for s in (0.0, 0.3, 0.34, 0.5, 0.67, 1.0)] == [3, 3, 2, 2, 1, 0]


def test_inpainting_keeps_the_unmasked_region(tiny, init_image, mask, round_trip):
    pipe = _pipe(tiny, init_image, mask=mask, strength=1.0, output="latents")
    lat = pipe(PROMPTS, SEEDS)
    rt, z0 = round_trip
    keep = 1.0 - ic.latent_mask(images.check_mask(mask, H, W), 2, "max")
    kept = np.broadcast_to(keep.astype(bool), lat.shape)
    # Kept latent cells are the init latent: exact blend with it after the last step, up to
    # the encoder's reassociation across programs.
    np.testing.assert_allclose(lat[kept], np.broadcast_to(z0, lat.shape)[kept], atol=1e-5)
    assert np.max(np.abs(lat[~kept] - np.broadcast_to(z0, lat.shape)[~kept])) > 0.1
    # Decoded: pixels outside the mask are the VAE round trip of the init image (pasted
    # back: the decoder's mid-block attention spreads the repainted latents everywhere).
    img = _pipe(tiny, init_image, mask=mask, strength=1.0)(PROMPTS, SEEDS)
    outside = np.broadcast_to((images.check_mask(mask, H, W) == 0)[None, :, :, None], img.shape)
    rt = np.broadcast_to(rt, img.shape)
    np.testing.assert_allclose(img[outside], rt[outside], rtol=0, atol=1e-5)  # reassociation
    assert np.max(np.abs(img[~outside] - rt[~outside])) > 0.1


INPAINT_UNET = dict(sample_size=16, in_channels=9, out_channels=4, block_out_channels=(32, 64),
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                    attention_head_dim=4, cross_attention_dim=32, norm_num_groups=8)


@pytest.fixture(scope="module")
def inpaint_unet():
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**INPAINT_UNET).eval()
    with torch.no_grad():               # random norms: a missing norm mapping cannot pass
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    config = wu.unet_config_from_diffusers(dict(ref.config))
    params = wu.unet_params_from_state_dict({k: v.numpy() for k, v in ref.state_dict().items()},
                                            config)
    return ref, config, params


@pytest.mark.parity
def test_inpainting_unet_parity(inpaint_unet):
    ref, config, params = inpaint_unet
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 16, 16)).astype(np.float32)
    t = np.array([999.0, 17.0], np.float32)
    ctx = rng.normal(size=(2, 7, 32)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.tensor(x), torch.tensor(t), torch.tensor(ctx)).sample.numpy()
    got = jax.jit(UNet2DConditionModel(config).apply)({"params": params},
                                                      x.transpose(0, 2, 3, 1), t, ctx)
    err = np.max(np.abs(np.asarray(got).transpose(0, 3, 1, 2) - want))
    # The bar for every UNet: float32 on both sides, different summation orders.
    assert err <= 1e-4 * np.max(np.abs(want)), err


@pytest.mark.parity
def test_inpainting_unet_pipeline(tiny, inpaint_unet, init_image, mask):
    _, config, params = inpaint_unet
    comps = dataclasses.replace(tiny, unet_config=config, unet_params=params)
    with pytest.raises(images.ImageConditioningError, match="needs a mask"):
        _pipe(comps, init_image)
    # Partial strength (2 of 3 steps, from sigmas[1]) through the 9-channel input.
    pipe = _pipe(comps, init_image, mask=mask, strength=0.67, output="latents")
    lat = pipe(PROMPTS, SEEDS)
    assert pipe.start == 1 and lat.shape == (2, 16, 16, 4) and np.all(np.isfinite(lat))
    assert not np.allclose(lat[0], lat[1], atol=1e-3)            # each seed its own noise


@pytest.mark.parity
def test_latent_masks():
    # "nearest" is what diffusers feeds its inpainting UNet: torch interpolate, mode nearest.
    rng = np.random.default_rng(1)
    m = (rng.random((H, W)) > 0.7).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.tensor(m)[None, None], size=(H // 4, W // 4))
    np.testing.assert_array_equal(ic.latent_mask(m, 4, "nearest")[..., 0], want[0, 0].numpy())
    # "max": a cell is kept only if none of its pixels is repainted.
    got = ic.latent_mask(m, 4, "max")[..., 0]
    assert got.shape == (8, 8)
    assert np.array_equal(got == 0, m.reshape(8, 4, 8, 4).sum(axis=(1, 3)) == 0)


def test_bad_inputs_are_named_before_the_model_is_placed(tiny, init_image):
    with pytest.raises(images.ImageConditioningError, match="strength"):
        _pipe(tiny, init_image, strength=2.0)
    with pytest.raises(images.ImageConditioningError, match="40x48"):
        _pipe(tiny, np.zeros((40, 48, 3), np.uint8), resize=False)


def _save(array, path):
    from PIL import Image
    Image.fromarray(array).save(path)
    return str(path)


def test_sample_command_img2img(tmp_path, init_image, capsys):
    """`diffjax sample --init-image --mask --strength --aspect --pixels` in-process: strength
    0 (no sampler step, so only the VAE compiles) at 2:1, the init image resized with a
    warning, the hashes and strength in every PNG and the flags in config.json."""
    import hashlib
    import json

    from diffjax import cli, outputs
    img = _save((init_image * 255).astype(np.uint8), tmp_path / "init.png")
    m = np.zeros((16, 32), np.uint8)
    m[4:12, 8:24] = 255
    msk = _save(m, tmp_path / "mask.png")
    base = ["sample", "--prompt", "a red circle", "--seeds", "0,5", "--init-image", img,
            "--strength", "0", "--aspect", "2:1", "--pixels", "512",
            "--config.compilation_cache=", "--config.batch_size=8"]
    # Named errors before anything is written: an RGB mask, a wrong-size image by flag.
    rgb = _save(np.zeros((16, 32, 3), np.uint8), tmp_path / "rgb.png")
    assert cli.main([*base, "--mask", rgb, "--out", str(tmp_path / "bad")]) == 2
    assert "single-channel" in capsys.readouterr().err
    assert cli.main([*base, "--no-resize", "--out", str(tmp_path / "bad")]) == 2
    assert "init image is 32x32 (HxW) but the output is 16x32" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()

    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="resized to 16x32"):
        assert cli.main([*base, "--mask", msk, "--out", str(out)]) == 0
    sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    for name in ("000000-seed0.png", "000001-seed5.png"):
        meta = outputs.read_png_metadata(out / name)
        assert (meta["init_image_sha256"], meta["mask_sha256"]) == (sha(img), sha(msk))
        assert meta["strength"] == 0.0 and (meta["height"], meta["width"]) == (16, 32)
        from PIL import Image
        assert Image.open(out / name).size == (32, 16)
    saved = json.loads((out / "config.json").read_text())
    assert saved["image"] == dict(init_image=img, mask=msk, strength=0.0, resize=True)
    assert (saved["height"], saved["width"]) == (16, 32)
