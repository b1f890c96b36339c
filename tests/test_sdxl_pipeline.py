"""SDXL end to end against diffusers' own pipelines (fp32, random weights written as diffusers
folders by OUR converter and read back by diffusers' `from_pretrained`):

- `StableDiffusionXLPipeline` at two scaled-down SDXL configs (different depth lists, heads,
  widths, cross dims, level counts; both text towers tiny), same initial latents: final
  latents after 4 Euler and 4 DPM++ 2M steps with CFG, a negative prompt, prompt_2, custom
  original/crop/target (and negative) sizes and clip_skip;
- `StableDiffusionXLImg2ImgPipeline` as the refiner (second tower only, aesthetic score,
  5 time ids) on an init image, and the base -> refiner handoff (denoising_end /
  denoising_start 0.8);
- decoded images through a VAE with latents_mean/std, force_zeros_for_empty_prompt, the
  folder round trip (diffusers -> diffjax checkpoint -> diffusers, bit-exact).

Tolerance: final latents within 1e-4 x max|ref| (the issue's bound). Both sides compute in
float32; what differs is summation order and diffusers' float32 schedule arithmetic, ~1e-6
relative per step on these tiny nets.

Sizes are multiples of 8 px whose latents (10 x 13, 11 x 14) are not multiples of the
UNets' 2^(levels-1): the any-size path is part of every run.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

pytestmark = pytest.mark.parity

try:
    import torch
    from diffusers import (DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                           StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline)
except ModuleNotFoundError:  # pragma: no cover
    pytest.skip("needs torch + diffusers (the dev extra)", allow_module_level=True)

import jax

from diffjax.base_refiner import BaseRefiner
from diffjax.pipeline import TextToImage
from diffjax.sample_spec import InitImage, SampleSpec
from diffjax.weights.diffusers_folder import export_sd_folder
from diffjax.weights.load import load
from sdxl_tiny import base_a, base_b, refiner

STEPS = 4
PROMPT, PROMPT_2 = "a red circle in the top left", "a blue square"
NEGATIVE = "blurry, green"
MICRO = dict(original_size=(96, 120), crops_coords_top_left=(4, 8), target_size=(80, 104),
             negative_original_size=(64, 64), negative_crops_coords_top_left=(0, 8),
             negative_target_size=(72, 96))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> a diffusers folder written by our converter. torch runs on one thread here
    (these nets are tiny; on a loaded 2-core machine its thread pool costs 4x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sdxl")
    out = {}
    for make in (base_a, base_b, refiner):
        c = make()
        if c.name == "refiner":   # make VAE sampling deterministic: posterior std e^-15
            q = c.vae_params["quant_conv"]["bias"]
            q[q.shape[0] // 2:] = -30.0
        out[c.name] = str(root / c.name)
        export_sd_folder(c, out[c.name])
    yield out
    torch.set_num_threads(threads)


_LOADED: dict = {}


def _load(path):
    """Components read back from a folder (through our loader), once per module."""
    if path not in _LOADED:
        _LOADED[path] = load(path)
    return _LOADED[path]


def _noise(seed, shape):
    """Our seed's initial noise (`diffusion.sample.seed_keys`) as diffusers' NCHW latents."""
    from diffjax.diffusion.sample import seed_keys
    n = jax.random.normal(seed_keys(np.uint32(seed))[0], shape, np.float32)
    return torch.from_numpy(np.asarray(n).transpose(2, 0, 1)[None].copy())


def _ours(comps, sampler, schedule, height, width, output="latents", init=None, **spec):
    s = SampleSpec(sampler=sampler, steps=STEPS, schedule=schedule, guidance_scale=5.0,
                   height=height, width=width, batch_size=1, mesh_shape=(1, 1, 1), **spec)
    return TextToImage(comps, s, devices=jax.devices()[:1], output=output, init=init)


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def _close(ours, ref, what, tol=1e-4):
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"{what}: max|diff| / max|ref| = {err:.2e}")   # the measured figure (-s shows it)
    assert err <= tol, f"{what}: max|diff| / max|ref| = {err:.2e} > {tol}"
    return err


DIFFUSERS_SCHEDULERS = {  # our sampler/schedule -> diffusers' scheduler on the same grid
    "euler": ("leading", lambda cfg: EulerDiscreteScheduler.from_config(cfg)),
    "dpmpp_2m": ("trailing", lambda cfg: DPMSolverMultistepScheduler.from_config(
        cfg, timestep_spacing="trailing", algorithm_type="dpmsolver++", solver_order=2)),
}


SIZES = {"base-a": (80, 104), "base-b": (88, 112)}


@pytest.mark.parametrize("name,sampler,output,negative", [
    ("base-a", "euler", "latents", NEGATIVE),
    ("base-a", "dpmpp_2m", "latents", NEGATIVE),
    ("base-b", "euler", "images", NEGATIVE),   # decoded through latents_mean/std
    ("base-b", "dpmpp_2m", "latents", None),   # force_zeros_for_empty_prompt
])
def test_base_matches_diffusers(folders, name, sampler, output, negative):
    """CFG 5, clip_skip 1, prompt_2, custom (negative) original/crop/target sizes."""
    comps = _load(folders[name])
    assert comps.force_zeros_for_empty_prompt
    height, width = SIZES[name]
    schedule, make = DIFFUSERS_SCHEDULERS[sampler]
    ours = _ours(comps, sampler, schedule, height, width, output=output, clip_skip=1,
                 prompt_2=PROMPT_2, **MICRO)
    got = ours([PROMPT], [7], [negative or ""])
    ref_pipe = StableDiffusionXLPipeline.from_pretrained(folders[name])
    ref_pipe.scheduler = make(ref_pipe.scheduler.config)
    ref = ref_pipe(PROMPT, prompt_2=PROMPT_2, negative_prompt=negative, height=height,
                   width=width, num_inference_steps=STEPS, guidance_scale=5.0, clip_skip=1,
                   latents=_noise(7, ours.latent_shape),
                   output_type="latent" if output == "latents" else "np", **MICRO).images
    if output == "latents":
        got, ref = _nchw(got), ref.numpy()
    _close(got, ref, f"{name} {sampler} {output}")


def test_refiner_img2img_matches_diffusers(folders, monkeypatch):
    """The refiner as plain img2img (strength 0.5: 2 of 4 steps) with aesthetic scores."""
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as m
    comps = _load(folders["refiner"])
    assert comps.text_config is None and comps.requires_aesthetics_score
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (80, 104, 3)).astype(np.float32)
    ours = _ours(comps, "euler", "leading", 80, 104, init=InitImage(image, strength=0.5),
                 aesthetic_score=7.0, negative_aesthetic_score=2.0,
                 original_size=(128, 96), crops_coords_top_left=(8, 0))
    got = _nchw(ours([PROMPT], [5], [NEGATIVE]))
    noise = _noise(5, ours.latent_shape)
    monkeypatch.setattr(m, "randn_tensor", lambda shape, **kw: noise.clone())
    ref_pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(folders["refiner"])
    ref_pipe.scheduler = EulerDiscreteScheduler.from_config(ref_pipe.scheduler.config)
    ref = ref_pipe(PROMPT, negative_prompt=NEGATIVE,
                   image=torch.from_numpy(image.transpose(2, 0, 1)[None].copy()),
                   strength=0.5, num_inference_steps=STEPS, guidance_scale=5.0,
                   aesthetic_score=7.0, negative_aesthetic_score=2.0,
                   original_size=(128, 96), crops_coords_top_left=(8, 0),
                   output_type="latent").images.numpy()
    _close(got, ref, "refiner img2img")


def test_base_to_refiner_handoff_matches_diffusers(folders):
    """Ensemble of experts: denoising_end=0.8 on the base, denoising_start=0.8 on the
    refiner (4 leading steps: 3 on the base, 1 on the refiner)."""
    base, ref_c = _load(folders["base-a"]), _load(folders["refiner"])
    spec = SampleSpec(sampler="euler", steps=STEPS, schedule="leading", guidance_scale=5.0,
                      height=80, width=104, batch_size=1, mesh_shape=(1, 1, 1),
                      refiner="refiner", refiner_switch=0.8)
    ours = BaseRefiner(base, ref_c, spec, devices=jax.devices()[:1], output="latents")
    assert (ours.base.end_index, ours.refiner.begin_index) == (3, 3)
    got = _nchw(ours([PROMPT], [11], [NEGATIVE]))
    b = StableDiffusionXLPipeline.from_pretrained(folders["base-a"])
    b.scheduler = EulerDiscreteScheduler.from_config(b.scheduler.config)
    r = StableDiffusionXLImg2ImgPipeline.from_pretrained(folders["refiner"])
    r.scheduler = EulerDiscreteScheduler.from_config(r.scheduler.config)
    common = dict(negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=5.0)
    mid = b(PROMPT, height=80, width=104, latents=_noise(11, ours.base.latent_shape),
            denoising_end=0.8, output_type="latent", **common).images
    ref = r(PROMPT, image=mid, denoising_start=0.8, output_type="latent", **common)
    _close(got, ref.images.numpy(), "base -> refiner")


def test_folder_round_trip_is_bit_exact(folders, tmp_path):
    """diffusers folder -> diffjax checkpoint -> diffusers folder: the same bytes in every
    weights file and the same pipeline flags, for the base and the refiner."""
    from diffjax.weights.convert import convert
    for name in ("base-a", "refiner"):
        ckpt, back = tmp_path / f"{name}-ckpt", tmp_path / f"{name}-back"
        convert(folders[name], str(ckpt), to="diffjax")
        convert(str(ckpt), str(back), to="diffusers")
        for sub in ("text_encoder", "text_encoder_2", "unet", "vae"):
            src = os.path.join(folders[name], sub)
            if not os.path.isdir(src):
                assert not os.path.isdir(back / sub)
                continue
            for f in os.listdir(src):
                with open(os.path.join(src, f), "rb") as a, open(back / sub / f, "rb") as b:
                    assert a.read() == b.read(), f"{name}/{sub}/{f} changed"
        with open(os.path.join(folders[name], "model_index.json")) as a, \
                open(back / "model_index.json") as b:
            assert a.read() == b.read()
        again = load(str(ckpt))
        assert again.tokenizer_2_dir and again.requires_aesthetics_score == (name == "refiner")


def test_vae_dtype_follows_force_upcast(folders):
    """diffusers' rule: a VAE with force_upcast decodes in float32 in a bf16 job (SD/SDXL's
    VAE overflows in half precision); without it, in the job's dtype."""
    comps = _load(folders["base-a"])
    spec = SampleSpec(dtype="bfloat16", batch_size=1, mesh_shape=(1, 1, 1), height=80,
                      width=104)
    for upcast, dtype in ((True, "float32"), (False, "bfloat16")):
        c = dataclasses.replace(comps, vae_config=dataclasses.replace(
            comps.vae_config, force_upcast=upcast))
        pipe = TextToImage(c, spec, devices=jax.devices()[:1])
        assert pipe._modules()[2].config.dtype == dtype


def test_time_ids_follow_diffusers_defaults():
    """Positive/negative ids: text-to-image copies the positive ones unless both negative
    sizes are set; img2img defaults each negative size and keeps the positive crop; the
    refiner replaces target size by the aesthetic score."""
    from diffjax.sdxl_conditioning import sdxl_time_ids
    s = SampleSpec(crops_coords_top_left=(1, 2))
    pos, neg = sdxl_time_ids(s, 64, 96, aesthetics=False, img2img=False)
    assert pos.tolist() == [64, 96, 1, 2, 64, 96] and neg.tolist() == pos.tolist()
    s2 = dataclasses.replace(s, negative_original_size=(8, 8))
    assert sdxl_time_ids(s2, 64, 96, False, False)[1].tolist() == pos.tolist()
    assert sdxl_time_ids(s2, 64, 96, False, True)[1].tolist() == [8, 8, 1, 2, 64, 96]
    pos, neg = sdxl_time_ids(s2, 64, 96, True, True)
    assert pos.tolist() == [64, 96, 1, 2, 6.0] and neg.tolist() == [8, 8, 0, 0, 2.5]
