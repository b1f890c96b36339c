"""What a sampling job asks for, checked at the boundary: `SampleSpec` (the sampling part of
a sample config: sampler, steps, guidance, sizes, dtype, mesh, SDXL's micro-conditioning,
the base/refiner split, the prompt syntax) and `InitImage` (img2img / inpainting input).

Plain data with no model in it, so every layer can take a spec (`diffjax.pipeline` runs
one, `diffjax.plan` compiles one, `diffjax.bench` and the studies build them).
"""

from __future__ import annotations

import dataclasses
import typing

from diffjax.spec import ConfigError, check_range, to_dataclass


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """How to sample (the config's non-job part), checked at the module boundary."""

    sampler: str = "dpmpp_2m"
    steps: int = 20
    schedule: str = "karras"
    # the sampler function's keyword options, as sorted (name, value) pairs (a mapping is
    # accepted); checked against its signature
    sampler_options: tuple[tuple[str, typing.Any], ...] = ()
    guidance_scale: float = 5.0
    guidance_rescale: float = 0.0
    height: int = 0
    width: int = 0
    clip_skip: int = -1   # -1: the model's own (Components.clip_skip; 0 for public SD)
    batch_size: int = 8
    dtype: typing.Literal["float32", "bfloat16"] = "float32"
    attention: typing.Literal["auto", "xla", "cudnn", "chunked", "pallas"] = "auto"
    mesh_shape: tuple[int, ...] = (-1, 1, 1)
    # SDXL (ignored by SD1/SD2 models). prompt_2 / negative_prompt_2: what the second text
    # tower reads ("" = the prompt / negative prompt, as diffusers).
    prompt_2: str = ""
    negative_prompt_2: str = ""
    # micro-conditioning, (height, width) pairs and (top, left); () = diffusers' default:
    # the output size (negative_*: the positive ones)
    original_size: tuple[int, ...] = ()
    crops_coords_top_left: tuple[int, ...] = (0, 0)
    target_size: tuple[int, ...] = ()
    negative_original_size: tuple[int, ...] = ()
    negative_crops_coords_top_left: tuple[int, ...] = (0, 0)
    negative_target_size: tuple[int, ...] = ()
    aesthetic_score: float = 6.0            # models with requires_aesthetics_score (refiner)
    negative_aesthetic_score: float = 2.5
    # ensemble of experts: the base stops at denoising_end, the refiner starts at
    # denoising_start (fractions of the training timesteps; see `split_index`)
    denoising_start: float = 0.0
    denoising_end: float = 1.0
    refiner: str = ""                       # a refiner model: the base hands over at
    refiner_switch: float = 0.8             # refiner_switch (its denoising_end/_start)
    # prompts: "a1111" = A1111's emphasis syntax, BREAK and 75-token chunks
    # (`prompt_weights`); "plain" = the text as is, truncated at 75 tokens (reported).
    # max_prompt_chunks > 0 truncates A1111-syntax prompts to that many chunks (reported).
    prompt_syntax: typing.Literal["a1111", "plain"] = "a1111"
    max_prompt_chunks: int = 0

    def __post_init__(self):
        from diffjax.diffusion.samplers import check_options
        options = dict(self.sampler_options)
        object.__setattr__(self, "sampler_options", tuple(sorted(options.items())))
        check_options(self.sampler, options)
        check_range("sampler.steps", self.steps, lo=1)
        check_range("batch_size", self.batch_size, lo=1)
        check_range("guidance_scale", self.guidance_scale, lo=0.0)
        check_range("guidance_rescale", self.guidance_rescale, lo=0.0, hi=1.0)
        check_range("clip_skip", self.clip_skip, lo=-1)
        check_range("height", self.height, lo=0)
        check_range("width", self.width, lo=0)
        for name in ("original_size", "crops_coords_top_left", "target_size",
                     "negative_original_size", "negative_crops_coords_top_left",
                     "negative_target_size"):
            value = getattr(self, name)
            try:
                value = tuple(int(v) for v in value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be two integers, got {value!r}") from None
            if len(value) not in (0, 2) or any(v < 0 for v in value):
                raise ConfigError(f"{name} must be two integers >= 0 (height, width / top, "
                                  f"left) or empty, got {value!r}")
            object.__setattr__(self, name, value)
        check_range("max_prompt_chunks", self.max_prompt_chunks, lo=0)
        check_range("denoising_start", self.denoising_start, lo=0.0, hi=1.0)
        check_range("denoising_end", self.denoising_end, lo=0.0, hi=1.0)
        if self.denoising_start >= self.denoising_end:
            raise ConfigError(f"denoising_start {self.denoising_start} must be below "
                              f"denoising_end {self.denoising_end}")
        if self.refiner:
            check_range("refiner.switch", self.refiner_switch, lo=0.0, hi=1.0)
            if not 0.0 < self.refiner_switch < 1.0:
                raise ConfigError(f"refiner.switch {self.refiner_switch} must be strictly "
                                  "between 0 and 1 (the base's share of the denoising)")


def sampler_options_of(sampler_config) -> dict:
    """A sample config's `sampler.options`, plus the keys of config.json files written
    before options existed: `sampler.eta` (< 0: the sampler's default) and `sampler.order`
    (0: the sampler's default) were passed only to samplers that take them, so they become
    options there and are dropped elsewhere (the same run as then)."""
    from diffjax.diffusion.samplers import get_sampler
    options = dict(sampler_config.get("options") or {})
    takes = get_sampler(sampler_config.name).options
    eta, order = sampler_config.get("eta", -1.0), sampler_config.get("order", 0)
    if "eta" in takes and eta >= 0:
        options.setdefault("eta", float(eta))
    if "order" in takes and order > 0:
        options.setdefault("order", int(order))
    return options


def spec_from_config(config) -> SampleSpec:
    """The sampling part of a sample config (`diffjax.configs.sample`) as a checked
    SampleSpec."""
    from diffjax.diffusion.samplers import SAMPLERS
    if config.sampler.name not in SAMPLERS:
        raise ConfigError(f"sampler.name {config.sampler.name!r} is not a sampler; valid: "
                          f"{', '.join(sorted(SAMPLERS))}")
    return to_dataclass(dict(
        sampler=config.sampler.name, steps=config.sampler.steps,
        schedule=config.sampler.schedule,
        sampler_options=tuple(sorted(sampler_options_of(config.sampler).items())),
        guidance_scale=config.guidance_scale, guidance_rescale=config.guidance_rescale,
        height=config.height, width=config.width, clip_skip=config.clip_skip,
        batch_size=config.batch_size, dtype=config.dtype, attention=config.attention,
        mesh_shape=tuple(config.mesh.shape), **sdxl_fields_of(config)), SampleSpec)


SDXL_KEYS = ("prompt_2", "negative_prompt_2", "original_size", "crops_coords_top_left",
             "target_size", "negative_original_size", "negative_crops_coords_top_left",
             "negative_target_size", "aesthetic_score", "negative_aesthetic_score",
             "denoising_start", "denoising_end",
             "prompt_syntax", "max_prompt_chunks")   # (#27; absent from older configs)


def sdxl_fields_of(config) -> dict:
    """The SDXL keys a sample config has (a config.json from before them has none: their
    defaults), with `refiner.model` / `refiner.switch` as SampleSpec's refiner fields."""
    out = {}
    for k in SDXL_KEYS:
        if k not in config:
            continue
        v = config[k]
        if isinstance(v, (tuple, list)):
            try:
                v = tuple(int(x) for x in v)
            except (TypeError, ValueError):
                raise ConfigError(f"config key {k!r}: {tuple(v)!r} is not integers "
                                  "(height, width / top, left)") from None
        out[k] = v
    refiner = config.get("refiner")
    if refiner is not None:
        out.update(refiner=refiner.get("model", ""),
                   refiner_switch=refiner.get("switch", 0.8))
    return out


@dataclasses.dataclass(frozen=True)
class InitImage:
    """img2img / inpainting input of the pipeline.

    image / mask: arrays or PIL images (see `images.check_init_image` / `check_mask`);
    with an inpainting UNet (2c+1 input channels) a mask is required, with an ordinary one
    a mask switches on RePaint blending. strength: 0 = the init image, 1 = ignore it.
    resize: resize an init image of another size (with a warning) instead of failing.
    paste_back: with blending, the decoded pixels outside the mask are the VAE round trip
      of the init image (see `diffusion.image_conditioning.paste_back`).
    image_hash / mask_hash: recorded in metadata (default: a hash of the checked array).
    """

    image: typing.Any
    mask: typing.Any = None
    strength: float = 0.75
    resize: bool = True
    paste_back: bool = True
    image_hash: str | None = None
    mask_hash: str | None = None

