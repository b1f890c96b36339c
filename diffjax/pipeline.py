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
`StableDiffusionXLPipeline.encode_prompt` / `_get_add_time_ids` build them
(`sdxl_conditioning`); guidance stacks the pytree (cond and uncond in one UNet call).
`denoising_end` / `denoising_start` cut the sigma grid where diffusers cuts its timesteps
(`diffusion.denoising_range`), and `base_refiner.BaseRefiner` hands the base's latents to
the refiner ("ensemble of experts").

The pieces live beside it: what a job asks for (`sample_spec`), its params on the mesh
(`job_params`), the prompts' token ids and grouping (`prompt_batches`), and a pipeline from
files (`pipeline_loading.load_pipeline`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import prompt_batches, sdxl_conditioning
from diffjax.compiled_memory import memory_parts
from diffjax.diffusion.denoising_range import continue_latents, split_index
from diffjax.job_params import JobParams
from diffjax.sample_spec import InitImage, SampleSpec
from diffjax.sharding import local_rows
from diffjax.spec import ConfigError


def enable_compilation_cache(path: str) -> None:
    """Persistent XLA cache: a second `diffjax sample` skips compilation."""
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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
            self.time_ids = sdxl_conditioning.sdxl_time_ids(
                spec, self.height, self.width, c.requires_aesthetics_score, init is not None)
            sdxl_conditioning.check_time_ids(c, self.time_ids[0].shape[0])
            # rows whose negative prompt is empty get zeros (force_zeros_for_empty_prompt)
            self._zeroed_empty_ids = (self.tokenizers[0].tokenize([""]).ids[0]
                                      if c.force_zeros_for_empty_prompt else None)
        self.weights = JobParams(c, self._vae_config(), self.mesh)
        self.param_shardings = self.weights.shardings
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

    def placed_masters(self):
        """The loaded params on their shardings as loaded (float32 masters): what a LoRA
        is fused into (`pipeline_loading.fuse_loras`)."""
        return self.weights.placed_masters()

    @property
    def params(self):
        """The params on their shardings in their inference dtypes, placed on first use
        (`job_params`)."""
        return self.weights.placed

    @params.setter
    def params(self, value):
        self.weights.placed = value

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
        dtypes: what `lower` takes."""
        return self.weights.abstract()

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
        return sdxl_conditioning.encode(towers, params, ids, clip_skip)

    def _generate(self, params, ids, neg_ids, seeds, *extra):
        if not self.sdxl:
            return self.generate_from_context(params, self.encode_text(params, ids),
                                              self.encode_text(params, neg_ids), seeds,
                                              *extra)
        context, uncontext = sdxl_conditioning.contexts(
            self._text_modules(), params, ids, neg_ids, self.clip_skip, self._zeroed_empty_ids)
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
    def prompt_groups(self, prompts, negatives, prompts_2=None, negatives_2=None):
        """The positions of a call grouped by the program their own prompts need (plain
        ids, or A1111-syntax ids of k chunks): a call that mixes chunk counts runs one
        program per group (`prompt_batches`)."""
        n = len(prompts)
        if self.spec.prompt_syntax != "a1111" or n == 1:
            return [list(range(n))]
        return prompt_batches.prompt_groups(
            self.tokenizers, self.sdxl, self.spec.max_prompt_chunks, prompts, negatives,
            list(prompts_2 or [self.spec.prompt_2] * n),
            list(negatives_2 or [self.spec.negative_prompt_2] * n))

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
            ids, neg, _ = prompt_batches.weighted_ids(   # truncation is logged there
                self.tokenizers, self.sdxl, self.spec.max_prompt_chunks, pad(prompts), p2,
                pad(negatives), n2)
        else:
            ids, neg = (prompt_batches.plain_ids(self.tokenizers, self.sdxl, x, x2)
                        for x, x2 in ((pad(prompts), p2), (pad(negatives), n2)))
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
        """XLA's memory plan of the batch's sample program, in bytes per device (compiles
        if needed; `compiled_memory.memory_parts`), so a batch can be sized to the device
        before it runs. Empty where the backend gives no analysis."""
        return memory_parts(self._executable())

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
            return prompt_batches.by_group(self.generate_local, groups, prompts, negatives,
                                           seeds, prompts_2, negatives_2, latents=latents)
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
