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
"""

from __future__ import annotations

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
    attention: typing.Literal["auto", "xla", "cudnn", "chunked"] = "auto"
    mesh_shape: tuple[int, ...] = (-1, 1, 1)

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
        mesh_shape=tuple(config.mesh.shape)), SampleSpec)


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
        init: img2img / inpainting from an init image (and mask)."""
        from diffjax import sharding
        from diffjax.diffusion import schedules
        from diffjax.text import load_tokenizer
        from diffjax.weights.components import resolve_clip_skip
        self.components, self.spec = components, spec
        c = components
        self.tokenizer = load_tokenizer(c.tokenizer_dir)
        if output not in ("images", "latents"):
            raise ValueError(f"output must be 'images' or 'latents', got {output!r}")
        self.output = output
        self.vae_factor = c.vae_config.downsample_factor
        native = c.unet_config.sample_size * self.vae_factor
        self.height, self.width = spec.height or native, spec.width or native
        self.init = init
        if init is not None:       # inputs are checked before the model is placed
            image, mask = self._check_init(init)
        self.mesh = sharding.make_mesh(spec.mesh_shape, devices)
        n_data = sharding.data_size(self.mesh)
        if spec.batch_size % n_data:
            raise ConfigError(
                f"batch_size {spec.batch_size} cannot be split over the mesh's data axes "
                f"(data x fsdp = {n_data}, mesh {dict(self.mesh.shape)}); use a multiple "
                f"of {n_data}")
        factor = self.vae_factor * c.unet_config.downsample_factor
        for name, v in (("height", self.height), ("width", self.width)):
            if v % factor:
                raise ConfigError(f"{name} {v} is not a multiple of {factor}, the model's "
                                  f"size factor (VAE x{self.vae_factor}, UNet "
                                  f"x{c.unet_config.downsample_factor})")
        self.clip_skip = resolve_clip_skip(spec.clip_skip, c)
        sched = c.scheduler
        ac = schedules.alphas_cumprod_for(sched["beta_schedule"], sched["num_train_timesteps"],
                                          sched["beta_start"], sched["beta_end"],
                                          sched.get("rescale_betas_zero_snr", False))
        self.train_sigmas = schedules.sigmas_from_alphas_cumprod(ac)
        self.sigmas = schedules.make_sigmas(spec.schedule, spec.steps, self.train_sigmas)
        self._place_params()
        rep = sharding.replicated(self.mesh)
        if init is None:
            self.image_inputs = ()
        else:                      # the init image and mask: replicated inputs
            put = lambda a: jax.make_array_from_callback(a.shape, rep, lambda i: a[i])  # noqa
            self.image_inputs = (put(image), put(mask))
        self._jitted = jax.jit(self._generate,
                               in_shardings=(self.param_shardings,
                                             sharding.batch_sharding(self.mesh, 2),
                                             sharding.batch_sharding(self.mesh, 2),
                                             sharding.batch_sharding(self.mesh, 1),
                                             *(rep for _ in self.image_inputs)),
                               out_shardings=sharding.batch_sharding(self.mesh, 4))
        self._compiled = {}

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
    def _modules(self):
        from diffjax.models.clip import CLIPTextModel
        from diffjax.models.unet import UNet2DConditionModel
        from diffjax.models.vae import AutoencoderKL
        c = self.components
        return (CLIPTextModel(c.text_config), UNet2DConditionModel(c.unet_config),
                AutoencoderKL(c.vae_config))

    def _place_params(self):
        from diffjax import sharding
        from diffjax.models.abstract import abstract_params
        c = self.components
        boxed = {"text": abstract_params(c.text_config), "unet": abstract_params(c.unet_config),
                 "vae": abstract_params(c.vae_config)}
        self.param_shardings = sharding.param_shardings(boxed, self.mesh)
        params = {"text": c.text_params, "unet": c.unet_params, "vae": c.vae_params}
        self.params = jax.device_put(params, self.param_shardings)

    # -- the one jitted function -----------------------------------------------------------
    def encode_text(self, params, ids):
        """Token ids [B, L] -> the UNet's context [B, L, D] (at the resolved clip_skip)."""
        text, _, _ = self._modules()
        return text.apply({"params": params["text"]}, ids, clip_skip=self.clip_skip).context

    def _generate(self, params, ids, neg_ids, seeds, *image_inputs):
        return self.generate_from_context(params, self.encode_text(params, ids),
                                          self.encode_text(params, neg_ids), seeds,
                                          *image_inputs)

    def generate_from_context(self, params, context, uncontext, seeds, image=None, mask=None):
        """The sample program after the text encoder: (context, uncontext) [B, L, D] and
        seeds [B] (and, with an InitImage, the checked image and mask) -> images (or
        latents). Separate so that studies can condition on states no caption produces
        (tools/mini_heldout_probes.py splices two captions')."""
        from diffjax.diffusion import image_conditioning as ic
        from diffjax.diffusion.denoisers import vp_denoiser
        from diffjax.diffusion.guidance import guided_model
        from diffjax.diffusion.sample import FromNoise, sample
        _, unet, vae = self._modules()
        spec, c = self.spec, self.components
        sf, f = c.vae_config.scaling_factor, self.vae_factor
        vae_vars = {"params": params["vae"]}

        def network(x, t, ctx):
            return unet.apply({"params": params["unet"]}, x, t, ctx)

        def encode_image(im):
            return vae.apply(vae_vars, im[None] * 2.0 - 1.0, method=vae.encode).mode()[0] * sf

        blend = False
        if image is None:
            lh, lw = self.height // f, self.width // f
            shape, sigmas, start = (lh, lw, c.unet_config.in_channels), self.sigmas, FromNoise("vp")
        else:
            init_latent = encode_image(image)                      # [h, w, c]
            if self.inpaint_unet:
                network = ic.inpainting_network(network, mask,
                                                encode_image(ic.masked_image(image, mask)), f)
            blend = self.has_mask and not self.inpaint_unet
            keep = 1.0 - ic.latent_mask(mask, f, "max") if blend else None  # 1 = keep
            shape, sigmas = init_latent.shape, self.sigmas[self.start:]
            start = ic.FromImage(init_latent, keep, full_strength=self.start == 0)
        denoise = vp_denoiser(guided_model(network, spec.guidance_scale, spec.guidance_rescale),
                              self.train_sigmas, c.scheduler["prediction_type"])
        if image is not None and self.start == len(self.sigmas) - 1:  # no step: the image
            latents = jnp.broadcast_to(init_latent, (seeds.shape[0], *shape))
        else:
            latents = sample(lambda x, s, cond: denoise(x, s, *cond), shape, seeds,
                             spec.sampler, sigmas, cond=(context, uncontext),
                             options=dict(spec.sampler_options), initial_state=start)
        if self.output == "latents":
            return latents
        images = vae.apply(vae_vars, latents / sf, method=vae.decode)
        if blend and self.init.paste_back:
            images = ic.paste_back(images, vae.apply(vae_vars, init_latent[None] / sf,
                                                     method=vae.decode), mask)
        return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)

    # -- running ---------------------------------------------------------------------------
    def _global_inputs(self, prompts, negatives, seeds):
        from diffjax import sharding
        n, b = len(prompts), self.spec.batch_size
        if not 0 < n <= b:
            raise ValueError(f"a call takes 1..{b} items (batch_size), got {n}")
        pad = lambda xs: list(xs) + [xs[-1]] * (b - n)  # noqa: E731  (padding is dropped)
        ids = self.tokenizer.tokenize(pad(prompts)).ids
        neg = self.tokenizer.tokenize(pad(negatives)).ids
        seeds = np.asarray(pad([int(s) for s in seeds]), np.uint32)

        def put(a, ndim):
            sh = sharding.batch_sharding(self.mesh, ndim)
            return jax.make_array_from_callback(a.shape, sh, lambda idx: a[idx])
        return put(ids, 2), put(neg, 2), put(seeds, 1), *self.image_inputs

    def _executable(self):
        b = self.spec.batch_size
        if b not in self._compiled:
            ids = jax.ShapeDtypeStruct((b, self.tokenizer.max_length), jnp.int32)
            seeds = jax.ShapeDtypeStruct((b,), jnp.uint32)
            self._compiled[b] = self._jitted.lower(self.params, ids, ids, seeds,
                                                   *self.image_inputs).compile()
        return self._compiled[b]
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

    def generate_local(self, prompts: Sequence[str], negatives: Sequence[str],
                       seeds: Sequence[int]):
        """One fixed-size batch. Returns (images [n, H, W, 3] float32 in [0, 1], positions
        this process owns) — every position on one process; on many, each writes its own."""
        n = len(prompts)
        out = self._executable()(self.params, *self._global_inputs(prompts, negatives, seeds))
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

    def __call__(self, prompts, seeds, negative_prompts=None) -> np.ndarray:
        """Images [len(prompts), H, W, 3] float32 in [0, 1] (single-process use)."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(seeds)
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        negatives = negative_prompts or [""] * len(prompts)
        if isinstance(negatives, str):
            negatives = [negatives] * len(prompts)
        b = self.spec.batch_size
        chunks = [self.generate_local(prompts[i:i + b], negatives[i:i + b], seeds[i:i + b])[0]
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
        return meta


def memory_plan(compiled) -> dict:
    """Bytes of a compiled executable's arguments, outputs and temporaries (XLA's plan)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {"argument_bytes": int(m.argument_size_in_bytes),
            "output_bytes": int(m.output_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes)}


def load_pipeline(path_or_preset: str, config=None, seed: int = 0, **kwargs) -> TextToImage:
    """A TextToImage from a preset name (random weights), a diffusers-format folder or a
    diffjax checkpoint (`diffjax convert`).

    config: a SampleSpec, a sample ConfigDict (`diffjax.configs.sample`), or None for
    defaults.
    """
    from diffjax.weights.load import load
    if config is None:
        spec = SampleSpec()
    elif isinstance(config, SampleSpec):
        spec = config
    else:
        spec = spec_from_config(config)
    comps = load(path_or_preset, spec.dtype, spec.attention, seed)
    return TextToImage(comps, spec, **kwargs)
