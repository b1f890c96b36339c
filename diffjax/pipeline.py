"""The sampling pipeline: prompts -> ids -> CLIP context -> sampler (UNet) -> VAE -> pixels,
for text-to-image, img2img and inpainting alike.

Everything after tokenization is ONE jitted function, `generate(params, ids, neg_ids,
seeds[, image, mask])`, with the seed/batch axis sharded over the mesh's data axes, the
params sharded by the logical-axis rules and an init image and mask (img2img / inpainting,
`InitImage`) replicated. Each image's initial noise and per-step noise come from its own
seed (`diffusion.sample.sample` vmaps over seeds), so an image does not depend on batch
size, batch position, device count or mesh shape. Batches have a fixed size (the tail is
padded with copies of its last item and the padding dropped), so a job compiles once.

The program composes `diffusion/`'s pieces: the network (wrapped with the inpainting
network's extra channels when it has them) -> guidance (`diffusion.guidance`) -> the VP
denoiser -> the sampler, started from noise or from the init image
(`diffusion.image_conditioning.FromImage`).

SDXL (`Components.is_sdxl`) is the same program with a pytree context: the ids are a tuple
(one [B, 77] array per text tower), and the context the sampler carries per sample is
{"context": both towers' `hidden_states[-(clip_skip + 2)]` concatenated, "text_embeds": the
second tower's pooled projection, "time_ids": the micro-conditioning}, exactly as diffusers'
`StableDiffusionXLPipeline.encode_prompt` / `_get_add_time_ids` build them; guidance stacks
the pytree (cond and uncond in one UNet call). `denoising_end` / `denoising_start` cut the
sigma grid where diffusers cuts its timesteps (`split_index`), and `BaseRefiner` hands the
base's latents to the refiner ("ensemble of experts").
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import typing
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def enable_compilation_cache(path: str) -> None:
    """Persistent XLA cache: a second `diffjax sample` skips compilation."""
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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


# ----------------------------------------------------------------------------------------
class TextToImage:
    """A loaded model + a SampleSpec (+ an optional InitImage) -> images. `pipe(prompts,
    seeds)` for Python use; `generate_local` for jobs (each process gets the rows its
    devices computed)."""

    def __init__(self, components, spec: SampleSpec, devices=None, output: str = "images",
                 init: InitImage | None = None):
        """devices: the devices of the mesh (default all); output: "images" or "latents"
        (the sampler's result before decoding, for determinism checks and studies);
        init: img2img / inpainting from an init image (and mask). With
        spec.denoising_start > 0 the program continues given latents instead (a refiner
        after its base: `generate_local(..., latents=...)`)."""
        from diffjax import sharding
        from diffjax.diffusion import schedules
        from diffjax.text import BANG_PAD, load_tokenizer
        from diffjax.weights.components import resolve_clip_skip
        self.components, self.spec = components, spec
        c = components
        self.sdxl = c.is_sdxl
        self.tokenizers = []
        if c.text_config is not None:
            self.tokenizers.append(load_tokenizer(c.tokenizer_dir))
        if self.sdxl:   # the packaged vocabulary as bigG's tokenizer pads with "!"
            self.tokenizers.append(load_tokenizer(c.tokenizer_2_dir, pad_token=None
                                                  if c.tokenizer_2_dir else BANG_PAD))
        self.tokenizer = self.tokenizers[0]
        if output not in ("images", "latents"):
            raise ValueError(f"output must be 'images' or 'latents', got {output!r}")
        self.output = output
        self.vae_factor = c.vae_config.downsample_factor
        native = c.unet_config.sample_size * self.vae_factor
        self.height, self.width = spec.height or native, spec.width or native
        self.init = init
        if init is not None and spec.denoising_start > 0:
            raise ConfigError("denoising_start continues given latents; it takes no init "
                              "image (use strength for img2img)")
        for name, v in (("height", self.height), ("width", self.width)):
            if v % self.vae_factor:   # the UNet takes any latent size (skips upsampled to fit)
                raise ConfigError(f"{name} {v} is not a multiple of {self.vae_factor}, the "
                                  f"VAE's size factor")
        if init is not None:       # inputs are checked before the model is placed
            image, mask = self._check_init(init)
        self.mesh = sharding.make_mesh(spec.mesh_shape, devices)
        n_data = sharding.data_size(self.mesh)
        if spec.batch_size % n_data:
            raise ConfigError(
                f"batch_size {spec.batch_size} cannot be split over the mesh's data axes "
                f"(data x fsdp = {n_data}, mesh {dict(self.mesh.shape)}); use a multiple "
                f"of {n_data}")
        self.clip_skip = resolve_clip_skip(spec.clip_skip, c)
        sched = c.scheduler
        ac = schedules.alphas_cumprod_for(sched["beta_schedule"], sched["num_train_timesteps"],
                                          sched["beta_start"], sched["beta_end"],
                                          sched.get("rescale_betas_zero_snr", False))
        self.train_sigmas = schedules.sigmas_from_alphas_cumprod(ac)
        self.grid = None   # schedule="model": the folder's diffusers grid and timesteps (H3)
        if spec.schedule == "model":
            from diffjax.diffusion.diffusers_schedule import model_grid
            self.grid = model_grid(dict(sched), spec.steps)
            self.sigmas = jnp.asarray(self.grid.sigmas, jnp.float32)
        else:
            self.sigmas = schedules.make_sigmas(spec.schedule, spec.steps, self.train_sigmas)
        T = sched["num_train_timesteps"]
        self.end_index = (split_index(self.sigmas, self.train_sigmas, spec.denoising_end, T)
                          if spec.denoising_end < 1.0 else spec.steps)
        self.begin_index = (split_index(self.sigmas, self.train_sigmas, spec.denoising_start,
                                        T) if spec.denoising_start > 0 else 0)
        if init is None and self.end_index <= self.begin_index:
            raise ConfigError(f"denoising_start {spec.denoising_start} / denoising_end "
                              f"{spec.denoising_end} leave no step of the {spec.steps}")
        if self.sdxl:
            self.time_ids = sdxl_time_ids(spec, self.height, self.width,
                                          c.requires_aesthetics_score, init is not None)
            check_time_ids(c, self.time_ids[0].shape[0])
            self._empty_ids = tuple(t.tokenize([""]).ids[0] for t in self.tokenizers)
        self._shard_params()
        rep = sharding.replicated(self.mesh)
        # the init image and mask (replicated inputs), placed on first use like the params
        self._init_arrays = () if init is None else (image, mask)
        self._image_inputs = None
        extra = ((sharding.batch_sharding(self.mesh, 4),) if spec.denoising_start > 0
                 else tuple(rep for _ in self._init_arrays))
        self._jitted = jax.jit(self._generate,
                               in_shardings=(self.param_shardings,
                                             sharding.batch_sharding(self.mesh, 2),
                                             sharding.batch_sharding(self.mesh, 2),
                                             sharding.batch_sharding(self.mesh, 1),
                                             *extra),
                               out_shardings=sharding.batch_sharding(self.mesh, 4))
        self._compiled = {}

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """One sample's latent [h, w, c] (the sampler's state)."""
        return (self.height // self.vae_factor, self.width // self.vae_factor,
                self.components.vae_config.latent_channels)

    def _check_init(self, init: InitImage):
        """The init image and mask as checked arrays (the mask all zeros without one); sets
        the image-conditioning attributes."""
        from diffjax import images
        from diffjax.diffusion.image_conditioning import start_index
        c = self.components
        self.strength = images.check_strength(init.strength)
        self.has_mask = init.mask is not None
        mask = (images.check_mask(init.mask, self.height, self.width) if self.has_mask
                else np.zeros((self.height, self.width), np.float32))
        image = images.check_init_image(init.image, self.height, self.width, init.resize)
        lc, inc = c.vae_config.latent_channels, c.unet_config.in_channels
        if inc == lc:
            self.inpaint_unet = False
        elif inc == 2 * lc + 1:
            self.inpaint_unet = True
            if not self.has_mask:
                raise images.ImageConditioningError(
                    f"the UNet has {inc} input channels (an inpainting UNet: latents + mask "
                    f"+ masked-image latents) and needs a mask")
        else:
            raise images.ImageConditioningError(
                f"UNet in_channels {inc} is neither the VAE's {lc} latent channels nor an "
                f"inpainting UNet's {2 * lc + 1}")
        self.init_image_hash = init.image_hash or images.array_sha256(image)
        self.mask_hash = (init.mask_hash or images.array_sha256(mask)) if self.has_mask else None
        self.start = start_index(self.spec.steps, self.strength)
        return image, mask

    # -- params, born sharded ------------------------------------------------------------
    def _text_modules(self):
        """(params key, CLIPTextModel) per text tower, in diffusers' order."""
        from diffjax.models.clip import CLIPTextModel
        c = self.components
        return [(key, CLIPTextModel(cfg)) for key, cfg in (("text", c.text_config),
                                                            ("text_2", c.text_config_2))
                if cfg is not None]

    def _vae_config(self):
        """The VAE's config as it runs: in the job's dtype unless its config has
        force_upcast (diffusers' rule: SD's and SDXL's VAEs overflow in half precision),
        then in float32."""
        c = self.components
        vae_dtype = ("float32" if getattr(c.vae_config, "force_upcast", True)
                     else self.spec.dtype)
        return dataclasses.replace(c.vae_config, dtype=vae_dtype)

    def _modules(self):
        """(first text tower or None, UNet, VAE)."""
        from diffjax.models.clip import CLIPTextModel
        from diffjax.models.unet import UNet2DConditionModel
        from diffjax.models.vae import AutoencoderKL
        c = self.components
        text = CLIPTextModel(c.text_config) if c.text_config is not None else None
        return (text, UNet2DConditionModel(c.unet_config), AutoencoderKL(self._vae_config()))

    def _abstract_and_params(self):
        """({params key: boxed abstract params}, {params key: params}) of every network."""
        from diffjax.models.abstract import abstract_params
        c = self.components
        rows = [("text", c.text_config, c.text_params), ("text_2", c.text_config_2,
                                                          c.text_params_2),
                ("unet", c.unet_config, c.unet_params), ("vae", c.vae_config, c.vae_params)]
        rows = [r for r in rows if r[1] is not None]
        return ({k: abstract_params(cfg) for k, cfg, _ in rows}, {k: p for k, _, p in rows})

    def _inference_dtypes(self):
        """{params key: each param's storage dtype while sampling}
        (`models.inference_dtypes`): the weights a network casts to its bfloat16 compute
        dtype at every call are stored in bfloat16 once, which leaves every output bit
        unchanged and halves their memory and the bytes each call reads."""
        from diffjax.models.inference_dtypes import inference_dtypes
        c = self.components
        configs = {"text": c.text_config, "text_2": c.text_config_2, "unet": c.unet_config,
                   "vae": self._vae_config() if c.vae_config is not None else None}
        return {k: inference_dtypes(cfg) for k, cfg in configs.items() if cfg is not None}

    def _shard_params(self):
        """The params' shardings, from their abstract shapes: nothing is placed yet.
        Building, lowering and compiling need only these (`lower`), so a pipeline of
        Components without params (`preset_components(..., weights=False)`) compiles for
        devices it cannot run on: a TPU topology's (`diffjax plan`). `params` places the
        weights on first use."""
        from diffjax import sharding
        boxed, _ = self._abstract_and_params()
        self.param_shardings = sharding.param_shardings(boxed, self.mesh)
        self._params = None

    def _loaded_params(self):
        _, params = self._abstract_and_params()
        if any(p is None for p in params.values()):
            raise ValueError(f"model {self.components.name!r} was built without params "
                             "(configs only): it can be lowered and compiled, not run")
        return params

    def placed_masters(self):
        """The loaded params on their shardings, as loaded (float32 masters): what a LoRA
        is fused into before the weights are cast for sampling."""
        return jax.device_put(self._loaded_params(), self.param_shardings)

    @property
    def params(self):
        """The params on their shardings in their inference dtypes, placed on first use
        (cast before they are placed: the float32 masters never occupy the devices)."""
        if self._params is None:
            from diffjax.models.inference_dtypes import cast_for_inference
            self._params = jax.device_put(
                cast_for_inference(self._loaded_params(), self._inference_dtypes()),
                self.param_shardings)
        return self._params

    @params.setter
    def params(self, value):
        from diffjax.models.inference_dtypes import cast_for_inference
        self._params = cast_for_inference(value, self._inference_dtypes())

    @property
    def image_inputs(self) -> tuple:
        """The init image and mask as replicated arrays (placed on first use), or ()."""
        if self._image_inputs is None:
            from diffjax import sharding
            rep = sharding.replicated(self.mesh)
            self._image_inputs = tuple(
                jax.make_array_from_callback(a.shape, rep, lambda i, a=a: a[i])
                for a in self._init_arrays)
        return self._image_inputs

    def abstract_params(self):
        """The params as ShapeDtypeStructs on their shardings and in their inference
        dtypes (the loaded params' shapes, or the configs' where there are none): what
        `lower` takes."""
        boxed, params = self._abstract_and_params()
        import flax.linen as nn
        from diffjax.models.inference_dtypes import stored_struct
        shapes = {k: p if p is not None else nn.meta.unbox(boxed[k])
                  for k, p in params.items()}
        structs = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(np.shape(a), a.dtype,
                                                                 sharding=s),
                               shapes, self.param_shardings)
        return jax.tree.map(stored_struct, structs, self._inference_dtypes())

    # -- the one jitted function -----------------------------------------------------------
    def encode_text(self, params, ids, clip_skip: int | None = None):
        """Token ids -> the UNet's context (at the resolved clip_skip).

        SD1/SD2: ids [B, L] -> context [B, L, D]. SDXL: ids a tuple of [B, L] (one per
        tower) -> {"context": [B, L, D1 + D2], "text_embeds": [B, P]}: each tower's
        `hidden_states[-(clip_skip + 2)]` (no final layer norm) concatenated, and the
        last tower's pooled projection (diffusers' `encode_prompt`)."""
        clip_skip = self.clip_skip if clip_skip is None else clip_skip
        towers = self._text_modules()
        if not self.sdxl:
            key, text = towers[0]
            encode = lambda i: text.apply({"params": params[key]}, i,  # noqa: E731
                                          clip_skip=clip_skip).context
            if isinstance(ids, dict):    # A1111 emphasis / 75-token chunks (prompt_weights)
                from diffjax.prompt_weights import encode_chunks
                return encode_chunks(encode, ids["ids"], ids["weights"])
            return encode(ids)
        outs = [text.apply({"params": params[key]}, i) for (key, text), i in zip(towers, ids)]
        context = jnp.concatenate([o.hidden_states[-(clip_skip + 2)] for o in outs], -1)
        return {"context": context, "text_embeds": outs[-1].pooled}

    def _sdxl_contexts(self, params, ids, neg_ids):
        """(context, uncontext) as diffusers' `encode_prompt` builds them, prompts and
        negative prompts through each tower in ONE batched call. The negatives' context is
        the penultimate layer whatever clip_skip (diffusers ignores clip_skip for them);
        rows with no negative prompt get zeros (embeddings and pooled) when the model has
        force_zeros_for_empty_prompt (an empty negative prompt is diffusers'
        `negative_prompt=None`)."""
        if isinstance(ids[0], dict):     # A1111 emphasis / 75-token chunks (prompt_weights)
            context, unctx = self._sdxl_weighted_contexts(params, ids, neg_ids)
            neg_first = neg_ids[0]["ids"]
        else:
            b = ids[0].shape[0]
            outs = [text.apply({"params": params[key]}, jnp.concatenate([i, n]))
                    for (key, text), i, n in zip(self._text_modules(), ids, neg_ids)]
            pick = lambda skip, rows: {  # noqa: E731
                "context": jnp.concatenate([o.hidden_states[-(skip + 2)][rows] for o in outs],
                                           -1),
                "text_embeds": outs[-1].pooled[rows]}
            context, unctx = pick(self.clip_skip, slice(0, b)), pick(0, slice(b, 2 * b))
            neg_first = neg_ids[0]
        if self.components.force_zeros_for_empty_prompt:
            reps = neg_first.shape[-1] // self._empty_ids[0].shape[0]   # every chunk empty
            empty = jnp.all(neg_first == jnp.tile(jnp.asarray(self._empty_ids[0]), reps)[None],
                            axis=-1)
            unctx = jax.tree.map(
                lambda u: jnp.where(empty.reshape((-1,) + (1,) * (u.ndim - 1)), 0.0, u)
                .astype(u.dtype), unctx)
        return context, unctx

    def _sdxl_weighted_contexts(self, params, ids, neg_ids):
        """`_sdxl_contexts` for chunked / emphasised ids ({"ids", "weights"} [B, 77 k] per
        tower): every chunk through each tower, A1111 emphasis per chunk, chunks
        concatenated; the pooled embedding is the first chunk's (as A1111)."""
        from diffjax.prompt_weights import encode_chunks
        b = ids[0]["ids"].shape[0]
        parts, pooled = {"pos": [], "neg": []}, None
        for (key, text), i, n in zip(self._text_modules(), ids, neg_ids):
            both = {k: jnp.concatenate([i[k], n[k]]) for k in ("ids", "weights")}
            k = both["ids"].shape[1] // 77
            out = {}

            def encode(x, text=text, key=key, out=out):
                o = text.apply({"params": params[key]}, x)
                out["pooled"] = o.pooled
                out["neg"] = o.hidden_states[-2]          # negatives: penultimate layer
                return o.hidden_states[-(self.clip_skip + 2)]
            states = encode_chunks(encode, both["ids"], both["weights"])
            neg_states = encode_chunks(lambda x, out=out: out["neg"], both["ids"],
                                       both["weights"])
            parts["pos"].append(states[:b])
            parts["neg"].append(neg_states[b:])
            pooled = out["pooled"].reshape(2 * b, k, -1)[:, 0]
        return ({"context": jnp.concatenate(parts["pos"], -1), "text_embeds": pooled[:b]},
                {"context": jnp.concatenate(parts["neg"], -1), "text_embeds": pooled[b:]})

    def _generate(self, params, ids, neg_ids, seeds, *extra):
        if not self.sdxl:
            return self.generate_from_context(params, self.encode_text(params, ids),
                                              self.encode_text(params, neg_ids), seeds,
                                              *extra)
        context, uncontext = self._sdxl_contexts(params, ids, neg_ids)
        b = seeds.shape[0]
        pos, neg = self.time_ids
        context["time_ids"] = jnp.broadcast_to(jnp.asarray(pos), (b, pos.shape[0]))
        uncontext["time_ids"] = jnp.broadcast_to(jnp.asarray(neg), (b, neg.shape[0]))
        return self.generate_from_context(params, context, uncontext, seeds, *extra)

    def generate_from_context(self, params, context, uncontext, seeds, image=None, mask=None):
        """The sample program after the text encoder: (context, uncontext) [B, L, D] (SDXL:
        pytrees of per-sample arrays, see `encode_text`) and seeds [B] (and, with an
        InitImage, the checked image and mask; with denoising_start, the latents [B, h, w,
        c] to continue in `image`'s place) -> images (or latents). Separate so that
        studies can condition on states no caption produces (tools/mini_heldout_probes.py
        splices two captions')."""
        from diffjax.diffusion import image_conditioning as ic
        from diffjax.diffusion.denoisers import vp_denoiser
        from diffjax.diffusion.guidance import guided_model
        from diffjax.diffusion.sample import FromNoise, sample
        from diffjax.models.vae import from_unet_latents, to_unet_latents
        _, unet, vae = self._modules()
        spec, c = self.spec, self.components
        f = self.vae_factor
        vae_vars = {"params": params["vae"]}

        def network(x, t, ctx):
            if isinstance(ctx, dict):       # SDXL: pooled text embedding and time ids
                added = {"text_embeds": ctx["text_embeds"], "time_ids": ctx["time_ids"]}
                return unet.apply({"params": params["unet"]}, x, t, ctx["context"],
                                  added_cond=added)
            return unet.apply({"params": params["unet"]}, x, t, ctx)

        def encode_image(im):
            return to_unet_latents(c.vae_config, vae.apply(
                vae_vars, im[None] * 2.0 - 1.0, method=vae.encode).mode()[0])

        def decode(latents):
            return vae.apply(vae_vars, from_unet_latents(c.vae_config, latents),
                             method=vae.decode)

        blend = False
        lo, hi = self.begin_index, self.end_index
        if spec.denoising_start > 0:        # continue the given latents (`image` slot)
            start, shape = None, self.latent_shape
        elif image is None:
            shape, start = self.latent_shape[:2] + (c.unet_config.in_channels,), FromNoise("vp")
        else:
            init_latent = encode_image(image)                      # [h, w, c]
            if self.inpaint_unet:
                network = ic.inpainting_network(network, mask,
                                                encode_image(ic.masked_image(image, mask)), f)
            blend = self.has_mask and not self.inpaint_unet
            keep = 1.0 - ic.latent_mask(mask, f, "max") if blend else None  # 1 = keep
            shape, lo = init_latent.shape, self.start
            start = ic.FromImage(init_latent, keep, full_strength=self.start == 0)
        sigmas = self.sigmas[lo:max(hi, lo) + 1]
        denoise = vp_denoiser(guided_model(network, spec.guidance_scale, spec.guidance_rescale),
                              self.train_sigmas, c.scheduler["prediction_type"],
                              grid=self.grid)
        cond = (context, uncontext)
        if start is None:
            latents = continue_latents(lambda x, s, cd: denoise(x, s, *cd), image, seeds,
                                       spec.sampler, sigmas, cond,
                                       dict(spec.sampler_options), self._seed_axes())
        elif sigmas.shape[0] == 1:          # no step: the image (or x_T)
            latents = jnp.broadcast_to(init_latent, (seeds.shape[0], *shape))
        else:
            latents = sample(lambda x, s, cd: denoise(x, s, *cd), shape, seeds,
                             spec.sampler, sigmas, cond=cond,
                             options=dict(spec.sampler_options), initial_state=start,
                             spmd_axis_name=self._seed_axes())
        if self.output == "latents":
            return latents
        images = decode(latents)
        if blend and self.init.paste_back:
            images = ic.paste_back(images, decode(init_latent[None]), mask)
        return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)

    # -- running ---------------------------------------------------------------------------
    def _ids(self, prompts, prompts_2):
        """Token ids of one padded batch: an array, or with SDXL a tuple per tower (the
        first tower reads `prompts`, the second `prompts_2`; the refiner's only tower
        reads `prompts`, as diffusers zips prompts with the tokenizers present)."""
        if not self.sdxl:
            return self.tokenizer.tokenize(prompts).ids
        texts = [prompts, [p2 or p for p, p2 in zip(prompts, prompts_2)]]
        return tuple(t.tokenize(x).ids for t, x in zip(self.tokenizers, texts))

    def _weighted_ids(self, prompts, prompts_2, negatives, negatives_2):
        """(ids, neg_ids) with A1111's syntax (`prompt_weights`): plain arrays, exactly as
        `_ids`, when no prompt of the call has emphasis or more than 75 tokens; otherwise
        {"ids", "weights"} [B, 77 k] per tower, prompts and negatives (and SDXL's towers)
        padded to one chunk count k with empty-prompt chunks. Truncation only with
        spec.max_prompt_chunks (reported in `self.truncated`)."""
        from diffjax import prompt_weights as pw
        items = self._weighted_items(prompts, prompts_2, negatives, negatives_2)
        flat = [it for sides in items for side in sides for it in side]
        self.truncated = max(it.n_truncated for it in flat)
        if self.truncated:
            import logging
            logging.getLogger(__name__).warning(
                "prompt truncated to max_prompt_chunks=%d chunks of 75 tokens: %d token(s) "
                "dropped", self.spec.max_prompt_chunks, self.truncated)
        k = _chunk_key(flat)
        if k == 0:
            out = [[np.stack([it.ids[0] for it in side]) for side in sides] for sides in items]
        else:
            out = []
            for tok, sides in zip(self.tokenizers, items):
                empty = pw.empty_chunk(tok)
                pad = lambda it: (np.concatenate([it.ids] + [empty[None]] * (k - len(it.ids))),  # noqa
                                  np.concatenate([it.weights, np.ones((k - len(it.ids), 77),
                                                                      np.float32)]))
                out.append([{"ids": np.stack([pad(it)[0].reshape(-1) for it in side]),
                             "weights": np.stack([pad(it)[1].reshape(-1) for it in side])}
                            for side in sides])
        if not self.sdxl:
            return out[0][0], out[0][1]
        return tuple(o[0] for o in out), tuple(o[1] for o in out)

    def _weighted_items(self, prompts, prompts_2, negatives, negatives_2):
        """`prompt_weights.tokenize_weighted` of every text: [tower][prompts, negatives][i]."""
        from diffjax import prompt_weights as pw
        texts = [[prompts, negatives]]
        if self.sdxl:
            texts = [[prompts, negatives], [[b or a for a, b in zip(prompts, prompts_2)],
                                            [b or a for a, b in zip(negatives, negatives_2)]]]
            texts = texts[:len(self.tokenizers)]
        limit = self.spec.max_prompt_chunks
        return [[[pw.tokenize_weighted(tok, t, limit) for t in side] for side in sides]
                for tok, sides in zip(self.tokenizers, texts)]

    def prompt_groups(self, prompts, negatives, prompts_2=None, negatives_2=None):
        """The positions of a call grouped by the program their own prompts need (plain
        ids, or A1111-syntax ids of k chunks). Padding a prompt with empty chunks changes
        its image, so a call that mixes chunk counts runs one program per group and each
        image depends only on its own prompt and seed, never on its batch neighbours."""
        n = len(prompts)
        if self.spec.prompt_syntax != "a1111" or n == 1:
            return [list(range(n))]
        p2 = list(prompts_2 or [self.spec.prompt_2] * n)
        n2 = list(negatives_2 or [self.spec.negative_prompt_2] * n)
        groups: dict[int, list[int]] = {}
        for i in range(n):
            items = self._weighted_items([prompts[i]], [p2[i]], [negatives[i]], [n2[i]])
            key = _chunk_key([it for sides in items for side in sides for it in side])
            groups.setdefault(key, []).append(i)
        return list(groups.values())

    def _global_inputs(self, prompts, negatives, seeds, prompts_2=None, negatives_2=None,
                       latents=None):
        from diffjax import sharding
        n, b = len(prompts), self.spec.batch_size
        if not 0 < n <= b:
            raise ValueError(f"a call takes 1..{b} items (batch_size), got {n}")
        pad = lambda xs: list(xs) + [xs[-1]] * (b - n)  # noqa: E731  (padding is dropped)
        p2 = pad(prompts_2 or [self.spec.prompt_2] * n)
        n2 = pad(negatives_2 or [self.spec.negative_prompt_2] * n)
        if self.spec.prompt_syntax == "a1111":
            ids, neg = self._weighted_ids(pad(prompts), p2, pad(negatives), n2)
        else:
            ids, neg = self._ids(pad(prompts), p2), self._ids(pad(negatives), n2)
        seeds = np.asarray(pad([int(s) for s in seeds]), np.uint32)

        def put(a, ndim):
            sh = sharding.batch_sharding(self.mesh, ndim)
            return jax.make_array_from_callback(a.shape, sh, lambda idx: a[idx])
        ids, neg = (jax.tree.map(lambda a: put(a, 2), x) for x in (ids, neg))
        if self.spec.denoising_start > 0:
            if latents is None:
                raise ValueError("denoising_start > 0: give the latents to continue")
            if latents.shape[0] != b:     # a refiner after its base gets the base's rows
                latents = np.asarray(latents)
                latents = np.concatenate([latents, np.repeat(latents[-1:], b - n, 0)])
            if not isinstance(latents, jax.Array) or latents.sharding != \
                    sharding.batch_sharding(self.mesh, 4):
                latents = put(np.asarray(latents, np.float32), 4)
            return ids, neg, put(seeds, 1), latents
        return ids, neg, put(seeds, 1), *self.image_inputs

    def input_structs(self, batch_size: int | None = None, chunks: int = 0):
        """The abstract inputs of the sample program after `params` (ids, neg_ids, seeds,
        extra): what `lower` needs, from shapes alone. chunks > 0: A1111-syntax ids of that
        many 75-token chunks with their weights (`_weighted_ids`)."""
        b = batch_size or self.spec.batch_size
        one = jax.ShapeDtypeStruct((b, self.tokenizer.max_length), jnp.int32)
        if chunks:
            one = {"ids": jax.ShapeDtypeStruct((b, 77 * chunks), jnp.int32),
                   "weights": jax.ShapeDtypeStruct((b, 77 * chunks), jnp.float32)}
        ids = tuple(one for _ in self.tokenizers) if self.sdxl else one
        seeds = jax.ShapeDtypeStruct((b,), jnp.uint32)
        extra = ((jax.ShapeDtypeStruct((b, *self.latent_shape), jnp.float32),)
                 if self.spec.denoising_start > 0 else
                 tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in self._init_arrays))
        return ids, ids, seeds, *extra

    def lower(self, batch_size: int | None = None, chunks: int = 0):
        """The sample program lowered from abstract params and inputs (`jax.stages.Lowered`):
        `.compile()` it, read `memory_analysis()` / `cost_analysis()`. Places nothing."""
        params, inputs = self.abstract_params(), self.input_structs(batch_size, chunks)
        with self._mesh_context():
            return self._jitted.lower(params, *inputs)

    def _mesh_context(self):
        """`jax.set_mesh(self.mesh)` while a Pallas-attention job is traced: its kernel runs
        under a `shard_map` that needs the mesh (XLA cannot partition a Mosaic kernel);
        other jobs are traced as before."""
        if self.spec.attention == "pallas":
            return jax.set_mesh(self.mesh)
        return contextlib.nullcontext()

    def _seed_axes(self):
        """The mesh axes the seed vmap is split over, for a Pallas job (the kernel's
        `shard_map` then keeps each device's seeds local), else None."""
        from diffjax import sharding
        return sharding.DATA_AXES if self.spec.attention == "pallas" else None

    def _executable(self, chunks: int = 0):
        """The compiled program for plain ids (chunks 0) or for A1111-syntax ids of
        `chunks` chunks: one compile per shape a job meets."""
        b = self.spec.batch_size
        key = b if not chunks else (b, chunks)
        if key not in self._compiled:
            self._compiled[key] = self.lower(b, chunks).compile()
        return self._compiled[key]

    def compile_seconds(self, batch_size: int | None = None) -> float:
        """Compile (or load from the persistent cache) now; return the seconds it took."""
        t0 = time.perf_counter()
        self._executable()
        return time.perf_counter() - t0

    def memory_plan(self) -> dict:
        """XLA's memory plan of the batch's sample program, in bytes (compiles if needed):
        what its arguments, outputs and temporaries need, so a batch can be sized to the
        device before it runs. Empty where the backend gives no analysis."""
        return memory_plan(self._executable())

    def run_global(self, prompts, negatives, seeds, prompts_2=None, negatives_2=None,
                   latents=None):
        """One fixed-size batch as the program's global output array (batch-sharded;
        rows past len(prompts) are padding)."""
        inputs = self._global_inputs(prompts, negatives, seeds, prompts_2, negatives_2,
                                     latents)
        first = inputs[0][0] if self.sdxl else inputs[0]
        chunks = first["ids"].shape[1] // 77 if isinstance(first, dict) else 0
        return self._executable(chunks)(self.params, *inputs)

    def generate_local(self, prompts: Sequence[str], negatives: Sequence[str],
                       seeds: Sequence[int], prompts_2=None, negatives_2=None, latents=None):
        """One fixed-size batch. Returns (images [n, H, W, 3] float32 in [0, 1], positions
        this process owns) — every position on one process; on many, each writes its own.
        prompts_2 / negatives_2: SDXL's second-tower texts per item (default the spec's);
        latents: what a denoising_start > 0 program continues."""
        groups = self.prompt_groups(prompts, negatives, prompts_2, negatives_2)
        if len(groups) > 1:
            return _by_group(self.generate_local, groups, prompts, negatives, seeds,
                             prompts_2, negatives_2, latents=latents)
        out = self.run_global(prompts, negatives, seeds, prompts_2, negatives_2, latents)
        return local_rows(out, len(prompts))

    def __call__(self, prompts, seeds, negative_prompts=None, latents=None) -> np.ndarray:
        """Images [len(prompts), H, W, 3] float32 in [0, 1] (single-process use); latents
        [len(prompts), h, w, c]: what a denoising_start > 0 program continues."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(seeds)
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        negatives = negative_prompts or [""] * len(prompts)
        if isinstance(negatives, str):
            negatives = [negatives] * len(prompts)
        b = self.spec.batch_size
        chunks = [self.generate_local(prompts[i:i + b], negatives[i:i + b], seeds[i:i + b],
                                      latents=None if latents is None else latents[i:i + b])[0]
                  for i in range(0, len(prompts), b)]
        return np.concatenate(chunks)

    def metadata(self, prompt: str, negative_prompt: str, seed: int) -> dict:
        """A PNG's parameters; sampler options and the init image only where there are
        some (a text-to-image PNG with the sampler's defaults has the keys it always had)."""
        from diffjax import __version__
        s = self.spec
        meta = dict(prompt=prompt, negative_prompt=negative_prompt, seed=int(seed),
                    steps=s.steps, sampler=s.sampler, schedule=s.schedule,
                    guidance_scale=s.guidance_scale, guidance_rescale=s.guidance_rescale,
                    width=self.width, height=self.height, model=self.components.name,
                    clip_skip=self.clip_skip, version=__version__)
        if s.sampler_options:
            meta["sampler_options"] = dict(s.sampler_options)
        if self.init is not None:
            meta.update(init_image_sha256=self.init_image_hash, strength=self.strength)
            if self.has_mask:
                meta["mask_sha256"] = self.mask_hash
        if self.sdxl:
            pos, neg = self.time_ids
            meta.update(time_ids=[float(v) for v in pos],
                        negative_time_ids=[float(v) for v in neg])
            if s.prompt_2 or s.negative_prompt_2:
                meta.update(prompt_2=s.prompt_2, negative_prompt_2=s.negative_prompt_2)
        if s.denoising_end < 1.0:
            meta["denoising_end"] = s.denoising_end
        if s.denoising_start > 0.0:
            meta["denoising_start"] = s.denoising_start
        # A1111's hashes (#27): the single file's, the LoRAs' and embeddings' (load_pipeline)
        source = getattr(self.components, "source_file", None)
        if source:
            from diffjax.a1111 import model_hash
            meta["model_hash"] = model_hash(source)
        for key in ("lora_hashes", "ti_hashes"):
            if getattr(self, key, None):
                meta[key] = dict(getattr(self, key))
        return meta


def _chunk_key(items) -> int:
    """The program a prompt's tokenized texts need: 0 = plain ids (one chunk, no
    emphasis), else the chunk count k of the A1111-syntax program."""
    k = max(len(it.ids) for it in items)
    return 0 if k == 1 and all(np.all(it.weights == 1.0) for it in items) else k


def _by_group(generate_local, groups, prompts, negatives, seeds, prompts_2, negatives_2,
              **extra):
    """`generate_local` run on each group of positions (`prompt_groups`), its rows put
    back in the call's order: (images [n, ...], positions this process owns)."""
    n, images, owned = len(prompts), None, []
    for rows in groups:
        pick = lambda xs: None if xs is None else [xs[r] for r in rows]  # noqa: E731
        sub = {k: (None if v is None else v[np.asarray(rows)]) for k, v in extra.items()}
        got, mine = generate_local(pick(prompts), pick(negatives), pick(seeds),
                                   pick(prompts_2), pick(negatives_2), **sub)
        if images is None:
            images = np.zeros((n, *got.shape[1:]), got.dtype)
        images[np.asarray(rows)] = got
        owned += [rows[j] for j in mine]
    return images, sorted(owned)


def local_rows(out, n: int):
    """(rows [n, ...] of a batch-sharded global array this process can read, positions it
    owns): each row belongs to the lowest process index holding it."""
    images = np.zeros((n, *out.shape[1:]), np.float32)
    owner: dict[int, int] = {}
    for device, index in out.sharding.devices_indices_map(out.shape).items():
        rows = range(*index[0].indices(out.shape[0]))
        for r in rows:
            owner[r] = min(owner.get(r, device.process_index), device.process_index)
    me = jax.process_index()
    for shard in out.addressable_shards:
        start = shard.index[0].start or 0
        data = np.asarray(shard.data)
        for k in range(data.shape[0]):
            if start + k < n:
                images[start + k] = data[k]
    owned = [r for r in range(n) if owner.get(r) == me]
    return images, owned


class BaseRefiner:
    """SDXL's ensemble of experts: the base denoises down to `spec.refiner_switch`
    (denoising_end), its latents stay on the devices and the refiner continues from there
    (denoising_start), both with the job's sampler, steps and schedule, as diffusers'
    base(denoising_end=s, output_type="latent") -> refiner(image=latents,
    denoising_start=s). Same interface as TextToImage for commands."""

    def __init__(self, base, refiner, spec: SampleSpec, devices=None,
                 output: str = "images", init: InitImage | None = None):
        """base / refiner: Components."""
        base_spec = dataclasses.replace(spec, refiner="", denoising_end=spec.refiner_switch)
        ref_spec = dataclasses.replace(spec, refiner="", denoising_start=spec.refiner_switch)
        self.spec = spec
        self.base = TextToImage(base, base_spec, devices, output="latents", init=init)
        self.refiner = TextToImage(refiner, ref_spec, devices, output=output)
        if self.base.latent_shape != self.refiner.latent_shape:
            raise ConfigError(f"refiner latents {self.refiner.latent_shape} differ from the "
                              f"base's {self.base.latent_shape}")
        self.height, self.width = self.base.height, self.base.width
        self.components, self.mesh = base, self.base.mesh

    def compile_seconds(self, batch_size: int | None = None) -> float:
        return self.base.compile_seconds() + self.refiner.compile_seconds()

    def memory_plan(self) -> dict:
        """Both programs' plans as one: both models' params stay on the devices
        (arguments add up), the programs run one after the other (temporaries: the
        larger), the base's latents are alive during the refiner's run (outputs add)."""
        a, b = self.base.memory_plan(), self.refiner.memory_plan()
        if not a or not b:
            return {}
        return {"argument_bytes": a["argument_bytes"] + b["argument_bytes"],
                "output_bytes": a["output_bytes"] + b["output_bytes"],
                "temp_bytes": max(a["temp_bytes"], b["temp_bytes"])}

    def generate_local(self, prompts, negatives, seeds, prompts_2=None, negatives_2=None):
        groups = self.base.prompt_groups(prompts, negatives, prompts_2, negatives_2)
        if len(groups) > 1:
            return _by_group(self.generate_local, groups, prompts, negatives, seeds,
                             prompts_2, negatives_2)
        latents = self.base.run_global(prompts, negatives, seeds, prompts_2, negatives_2)
        out = self.refiner.run_global(prompts, negatives, seeds, prompts_2, negatives_2,
                                      latents=latents)
        return local_rows(out, len(prompts))

    def __call__(self, prompts, seeds, negative_prompts=None) -> np.ndarray:
        if isinstance(prompts, str):
            prompts = [prompts] * len(seeds)
        negatives = negative_prompts or [""] * len(prompts)
        if isinstance(negatives, str):
            negatives = [negatives] * len(prompts)
        b = self.spec.batch_size
        return np.concatenate([self.generate_local(prompts[i:i + b], negatives[i:i + b],
                                                   seeds[i:i + b])[0]
                               for i in range(0, len(prompts), b)])

    def metadata(self, prompt: str, negative_prompt: str, seed: int) -> dict:
        meta = self.base.metadata(prompt, negative_prompt, seed)
        meta.pop("denoising_end", None)
        meta.update(refiner=self.refiner.components.name,
                    refiner_switch=self.spec.refiner_switch)
        return meta


# ----------------------------------------------------------------------------------------
# SDXL pieces: pure functions of the spec and arrays
# ----------------------------------------------------------------------------------------
def sdxl_time_ids(spec: SampleSpec, height: int, width: int, aesthetics: bool,
                  img2img: bool) -> tuple[np.ndarray, np.ndarray]:
    """(time ids, negative time ids) float32, as diffusers' SDXL pipelines build them:
    original_size + crops_coords_top_left + target_size (defaults: the output size, (0,
    0)); with requires_aesthetics_score the target size is replaced by the aesthetic
    score (the refiner). Negative ones: text-to-image uses the positive ids unless both
    negative sizes are given; img2img (StableDiffusionXLImg2ImgPipeline) defaults each
    negative size to the positive one and, without aesthetics, uses the POSITIVE crop."""
    size = (height, width)
    orig, target = spec.original_size or size, spec.target_size or size
    crop = spec.crops_coords_top_left
    neg_orig, neg_target = spec.negative_original_size, spec.negative_target_size
    neg_crop = spec.negative_crops_coords_top_left
    if aesthetics:
        pos = orig + crop + (spec.aesthetic_score,)
        neg = (neg_orig or orig) + neg_crop + (spec.negative_aesthetic_score,)
    elif img2img:
        pos = orig + crop + target
        neg = (neg_orig or orig) + crop + (neg_target or target)
    else:
        pos = orig + crop + target
        neg = neg_orig + neg_crop + neg_target if neg_orig and neg_target else pos
    return np.asarray(pos, np.float32), np.asarray(neg, np.float32)


def check_time_ids(components, n_ids: int) -> None:
    """The UNet's added embedding must take n_ids time ids plus the pooled embedding (a
    refiner needs requires_aesthetics_score: 5 ids; the base 6)."""
    u = components.unet_config
    if getattr(u, "addition_embed_type", None) != "text_time":
        raise ConfigError(f"model {components.name!r} has two text towers but its UNet has "
                          "no addition_embed_type 'text_time'")
    pooled = components.text_config_2.projection_dim or components.text_config_2.hidden_size
    passed = u.addition_time_embed_dim * n_ids + pooled
    expected = u.projection_class_embeddings_input_dim
    if passed != expected:
        hint = {u.addition_time_embed_dim: " (is requires_aesthetics_score set? the UNet "
                                           "wants one more time id)",
                -u.addition_time_embed_dim: " (requires_aesthetics_score is set but the "
                                            "UNet wants a target size, not a score)"}
        raise ConfigError(f"the UNet's added embedding takes {expected} inputs but "
                          f"{n_ids} time ids x {u.addition_time_embed_dim} + pooled "
                          f"{pooled} = {passed}" + hint.get(expected - passed, ""))


def split_index(sigmas, train_sigmas, fraction: float, num_train_timesteps: int) -> int:
    """Where `denoising_end` = fraction stops a run (and `denoising_start` = fraction
    starts one) on the sigma grid: the number of steps whose starting sigma has timestep
    t(sigma) >= round(T - fraction * T), T = num_train_timesteps.

    This is diffusers' rule (it keeps the discrete timesteps >= that cutoff for the base
    and those below it for the refiner) with each sigma's timestep taken as the continuous
    t of `schedules.sigma_to_t` (log-sigma interpolation, exact at the training sigmas):
    for diffusers' own discrete grids (leading, trailing, linspace) it is the same cut,
    and it puts any other grid (karras, exponential, ...) at the same noise level, so
    every sampler can hand over. Steps are whole sampler steps (for Heun-type samplers
    diffusers' +1 rule on doubled timesteps gives the same cut)."""
    s = np.asarray(sigmas, np.float64)[:-1]
    log_train = np.log(np.asarray(train_sigmas, np.float64))
    t = np.interp(np.log(np.maximum(s, 1e-10)), log_train, np.arange(log_train.shape[0]))
    cutoff = int(round(num_train_timesteps - fraction * num_train_timesteps))
    return int(np.sum(t >= cutoff - 1e-3))     # integer timesteps up to float32 rounding


def continue_latents(denoise, latents, seeds, sampler: str, sigmas, cond, options,
                     spmd_axis_name=None):
    """Run `sampler` over `sigmas` from given per-seed latents (a refiner after its base:
    diffusers adds no noise with denoising_start). Each seed's per-step noise comes from
    its own key, folded apart from the base's (`diffusion.sample.seed_keys`)."""
    from diffjax.diffusion.samplers import get_sampler
    from diffjax.diffusion.sample import seed_keys
    info = get_sampler(sampler)
    sigmas = jnp.asarray(sigmas)

    def one(seed, x, c):
        key = jax.random.fold_in(seed_keys(seed)[1], 1)
        return info.fn(lambda y, s: denoise(y, s, c), x, sigmas, key, **options)

    return jax.vmap(one, spmd_axis_name=spmd_axis_name)(
        jnp.asarray(seeds, jnp.uint32), latents.astype(sigmas.dtype), cond)


def memory_plan(compiled) -> dict:
    """Bytes of a compiled executable's arguments, outputs and temporaries (XLA's plan)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {"argument_bytes": int(m.argument_size_in_bytes),
            "output_bytes": int(m.output_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes)}


def load_pipeline(path_or_preset: str, config=None, seed: int = 0, loras=(), embeddings=(),
                  prediction_type: str | None = None, allow_pickle: bool = False,
                  **kwargs) -> TextToImage:
    """A TextToImage from a preset name (random weights), a diffusers-format folder, a
    diffjax checkpoint (`diffjax convert`) or a single-file checkpoint.

    config: a SampleSpec, a sample ConfigDict (`diffjax.configs.sample`), or None for
    defaults. loras: "FILE:SCALE" strings or `weights.lora.LoraSpec`s, fused into the
    params on their devices; embeddings: textual-inversion files (token: the file's own or
    its name). prediction_type / allow_pickle: see `weights.load.load`.
    """
    from diffjax.weights.load import load
    if config is None:
        spec = SampleSpec()
    elif isinstance(config, SampleSpec):
        spec = config
    else:
        spec = spec_from_config(config)
    comps = load(path_or_preset, spec.dtype, spec.attention, seed, prediction_type,
                 allow_pickle)
    ti_hashes = add_embeddings(comps, embeddings, allow_pickle)
    if spec.refiner:
        pipe = BaseRefiner(comps, load(spec.refiner, spec.dtype, spec.attention, seed + 10),
                           spec, **kwargs)
    else:
        pipe = TextToImage(comps, spec, **kwargs)
    return fuse_loras(pipe, loras, allow_pickle, ti_hashes)


def model_options(config) -> dict:
    """`weights.load.load`'s single-file options from a sample config (absent keys of an
    older config.json: the defaults)."""
    return dict(prediction_type=config.get("prediction_type") or None,
                allow_pickle=bool(config.get("allow_pickle", False)))


def fuse_loras(pipe, loras, allow_pickle: bool = False, ti_hashes=None):
    """LoRAs fused into a built pipeline's params on their shardings (the base's, with a
    refiner), their and the embeddings' A1111 hashes kept for the metadata."""
    base = pipe.base if isinstance(pipe, BaseRefiner) else pipe
    base.ti_hashes = dict(ti_hashes or {})
    if loras:
        from diffjax.weights import lora
        deltas, base.lora_hashes = lora.load_loras(base.components, loras, allow_pickle)
        base.params = lora.fuse_placed(base.placed_masters(), deltas)
    return pipe


def add_embeddings(components, paths, allow_pickle: bool = False) -> dict[str, str]:
    """Textual-inversion files added to `components` (tokenizers and token embeddings);
    {token: A1111 TI hash} for the metadata."""
    from diffjax.a1111 import embedding_hash
    from diffjax.weights.textual_inversion import add_embedding
    hashes = {}
    for path in paths:
        token, _ = add_embedding(components, path, allow_pickle=allow_pickle)
        hashes[token] = embedding_hash(path)
    return hashes
