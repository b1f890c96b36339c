"""Text-to-image: prompts -> ids -> CLIP context -> sampler (UNet) -> VAE -> pixels.

Everything after tokenization is ONE jitted function, `generate(params, ids, neg_ids,
seeds)`, with the seed/batch axis sharded over the mesh's data axes and the params sharded
by the logical-axis rules. Each image's initial noise and per-step noise come from its own
seed (`diffusion.sample.sample` vmaps over seeds), so an image does not depend on batch
size, batch position, device count or mesh shape. Batches have a fixed size (the tail is
padded with copies of its last item and the padding dropped), so a job compiles once.
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

from diffjax.config import ConfigError, check_range, to_dataclass


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """How to sample (the config's non-job part), checked at the module boundary."""

    sampler: str = "dpmpp_2m"
    steps: int = 20
    schedule: str = "karras"
    eta: float = -1.0     # < 0: the sampler's own default
    order: int = 0        # 0: the sampler's own default
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
        check_range("sampler.steps", self.steps, lo=1)
        check_range("batch_size", self.batch_size, lo=1)
        check_range("guidance_scale", self.guidance_scale, lo=0.0)
        check_range("guidance_rescale", self.guidance_rescale, lo=0.0, hi=1.0)
        check_range("clip_skip", self.clip_skip, lo=-1)
        check_range("height", self.height, lo=0)
        check_range("width", self.width, lo=0)


def spec_from_config(config) -> SampleSpec:
    """The sampling part of a `configs/sample.py` config as a checked SampleSpec."""
    from diffjax.diffusion.samplers import SAMPLERS
    if config.sampler.name not in SAMPLERS:
        raise ConfigError(f"sampler.name {config.sampler.name!r} is not a sampler; valid: "
                          f"{', '.join(sorted(SAMPLERS))}")
    return to_dataclass(dict(
        sampler=config.sampler.name, steps=config.sampler.steps,
        schedule=config.sampler.schedule, eta=config.sampler.eta, order=config.sampler.order,
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


# ----------------------------------------------------------------------------------------
class TextToImage:
    """A loaded model + a SampleSpec -> images. `pipe(prompts, seeds)` for Python use;
    `generate_local` for jobs (each process gets the rows its devices computed)."""

    def __init__(self, components, spec: SampleSpec, devices=None, output: str = "images"):
        """devices: the devices of the mesh (default all); output: "images" or "latents"
        (the sampler's result before decoding, for determinism checks and studies)."""
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
        self.mesh = sharding.make_mesh(spec.mesh_shape, devices)
        n_data = sharding.data_size(self.mesh)
        if spec.batch_size % n_data:
            raise ConfigError(
                f"batch_size {spec.batch_size} cannot be split over the mesh's data axes "
                f"(data x fsdp = {n_data}, mesh {dict(self.mesh.shape)}); use a multiple "
                f"of {n_data}")
        self.vae_factor = c.vae_config.downsample_factor
        factor = self.vae_factor * c.unet_config.downsample_factor
        native = c.unet_config.sample_size * self.vae_factor
        self.height, self.width = spec.height or native, spec.width or native
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
        self._jitted = jax.jit(self._generate,
                               in_shardings=(self.param_shardings,
                                             sharding.batch_sharding(self.mesh, 2),
                                             sharding.batch_sharding(self.mesh, 2),
                                             sharding.batch_sharding(self.mesh, 1)),
                               out_shardings=sharding.batch_sharding(self.mesh, 4))
        self._compiled = {}

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
        text, unet, vae = self._modules()
        c = self.components
        s, f = c.unet_config.sample_size, self.vae_factor
        boxed = {
            "text": jax.eval_shape(lambda: text.init(jax.random.key(0), jnp.zeros(
                (1, c.text_config.max_position_embeddings), jnp.int32)))["params"],
            "unet": jax.eval_shape(lambda: unet.init(
                jax.random.key(0), jnp.zeros((1, s, s, c.unet_config.in_channels)),
                jnp.zeros((1,)), jnp.zeros((1, 1, c.unet_config.cross_attention_dim))))["params"],
            "vae": jax.eval_shape(lambda: vae.init(jax.random.key(0), jnp.zeros(
                (1, 2 * f, 2 * f, c.vae_config.in_channels))))["params"],
        }
        self.param_shardings = sharding.param_shardings(boxed, self.mesh)
        params = {"text": c.text_params, "unet": c.unet_params, "vae": c.vae_params}
        self.params = jax.device_put(params, self.param_shardings)

    # -- the one jitted function -----------------------------------------------------------
    def _sampler_options(self) -> dict:
        from diffjax.diffusion.samplers import get_sampler
        info, spec = get_sampler(self.spec.sampler), self.spec
        opts = {}
        if "eta" in info.options and spec.eta >= 0:
            opts["eta"] = spec.eta
        if "order" in info.options and spec.order > 0:
            opts["order"] = spec.order
        return opts

    def encode_text(self, params, ids):
        """Token ids [B, L] -> the UNet's context [B, L, D] (at the resolved clip_skip)."""
        text, _, _ = self._modules()
        return text.apply({"params": params["text"]}, ids, clip_skip=self.clip_skip).context

    def _generate(self, params, ids, neg_ids, seeds):
        return self.generate_from_context(params, self.encode_text(params, ids),
                                          self.encode_text(params, neg_ids), seeds)

    def generate_from_context(self, params, context, uncontext, seeds):
        """The sample program after the text encoder: (context, uncontext) [B, L, D] and
        seeds [B] -> images (or latents). Separate so that studies can condition on
        states no caption produces (tools/mini_heldout_probes.py splices two captions')."""
        from diffjax.diffusion.denoisers import cfg_model, vp_denoiser
        from diffjax.diffusion.sample import sample
        _, unet, vae = self._modules()
        spec, c = self.spec, self.components

        def network(x, t, ctx):
            return unet.apply({"params": params["unet"]}, x, t, ctx)

        if spec.guidance_scale == 1.0:
            model = lambda x, t, ctx, unctx: network(x[None], t[None], ctx[None])[0]  # noqa
        else:
            model = cfg_model(network, spec.guidance_scale, spec.guidance_rescale)
        denoise = vp_denoiser(model, self.train_sigmas, c.scheduler["prediction_type"])
        lh, lw = self.height // self.vae_factor, self.width // self.vae_factor
        latents = sample(lambda x, s, cond: denoise(x, s, *cond),
                         (lh, lw, c.unet_config.in_channels), seeds, spec.sampler, self.sigmas,
                         cond=(context, uncontext), options=self._sampler_options(),
                         init_scale="vp")
        if self.output == "latents":
            return latents
        images = vae.apply({"params": params["vae"]}, latents / c.vae_config.scaling_factor,
                           method=vae.decode)
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
        return put(ids, 2), put(neg, 2), put(seeds, 1)

    def _executable(self):
        b = self.spec.batch_size
        if b not in self._compiled:
            ids = jax.ShapeDtypeStruct((b, self.tokenizer.max_length), jnp.int32)
            seeds = jax.ShapeDtypeStruct((b,), jnp.uint32)
            self._compiled[b] = self._jitted.lower(self.params, ids, ids, seeds).compile()
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
        from diffjax import __version__
        s = self.spec
        return dict(prompt=prompt, negative_prompt=negative_prompt, seed=int(seed),
                    steps=s.steps, sampler=s.sampler, schedule=s.schedule,
                    guidance_scale=s.guidance_scale, guidance_rescale=s.guidance_rescale,
                    width=self.width, height=self.height, model=self.components.name,
                    clip_skip=self.clip_skip, version=__version__)


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

    config: a SampleSpec, a sample ConfigDict (configs/sample.py), or None for defaults.
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
