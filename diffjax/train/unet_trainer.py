"""Train (or fine-tune) the UNet in latent space with a frozen text encoder and VAE.

    state, metrics = train_and_evaluate(config, workdir)   # config: configs/train/unet.py

Why this shape: the same three-part model as Stable Diffusion, the same code paths; the
frozen parts come from a preset (random init: smoke tests) or a diffusers-format folder
(e.g. the trained mini VAE + CLIP). The frozen params are an argument of the jitted step,
not constants baked into it. Params are replicated over the mesh (the tiny/mini models
The UNet's params, EMA and Adam moments are sharded by their logical axes over the config's
mesh (`sharding.param_shardings`: fsdp/tensor axes, what does not divide is replicated),
so an SD-size UNet trains FSDP-style; the frozen CLIP/VAE are replicated. Latents are the
VAE posterior's mean (deterministic: exact resume needs no extra RNG stream) times the
VAE's scaling factor; with `train.cache_latents` they are computed once for the whole set
before training (latent_cache.py) instead of in every step.
"""

from __future__ import annotations

import dataclasses
import os
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax import sharding
from diffjax.data import builders, pipeline
from diffjax.diffusion import schedules
from diffjax.train import loop
from diffjax.train.run_log import RunLogger
from diffjax.train.runner import (batch_maker, make_mesh_checked, pipeline_config,
                                  start_or_resume)
from diffjax.train.spec import UNetRun, run_spec, spec_dict
from diffjax.train.state import TrainState, create_train_state, make_optimizer
from diffjax.train.step import make_train_step
from diffjax.weights.components import resolve_clip_skip


def unet_state_shardings(unet, comps, tx, state, mesh) -> TrainState:
    """Shardings of the TrainState: params and EMA by the UNet's logical axes, the Adam
    moments like the params they belong to, counters replicated."""
    import optax

    from diffjax.models.abstract import abstract_params
    ps = sharding.param_shardings(abstract_params(comps.unet_config), mesh)
    repl = sharding.replicated(mesh)
    opt = optax.tree_map_params(tx, lambda _, sh: sh, state.opt_state, ps,
                                transform_non_params=lambda _: repl)
    return TrainState(step=repl, params=ps, ema_params=ps, opt_state=opt)


def _initial_unet_params(c, comps):
    """The model folder's UNet, or with `model.init_from` a finished run's EMA UNet: how a
    second stage continues a first (fresh optimizer and schedule, same architecture)."""
    init_from = c.model.init_from
    if not init_from:
        return comps.unet_params
    from diffjax.train.checkpoint import load_params_like
    return load_params_like(init_from, comps.unet_params, "model.init_from")


@dataclasses.dataclass(frozen=True)
class UNetStep:
    """The jitted UNet train step `jitted(state, frozen, batch, key)` and what feeds it."""

    jitted: typing.Callable
    tx: typing.Any                    # the optax optimizer
    state_shardings: TrainState
    frozen_sharding: typing.Any       # the frozen CLIP (+ VAE) params: replicated
    batch_spec: dict                  # batch key -> sharding ("image" or "latent", "ids")
    clip_skip: int
    encode: typing.Callable           # (vae_params, pixels in [-1, 1]) -> scaled latents


def make_unet_step(c: UNetRun, comps, mesh, cache: bool) -> UNetStep:
    """The train step of run `c` on `mesh`, from the Components' configs alone (no params
    are read: `lower_unet_step` compiles it for devices it cannot run on). cache: the batch
    holds cached latents instead of images (the step never reads the VAE)."""
    from diffjax.models.abstract import abstract_params
    from diffjax.models.clip import CLIPTextModel
    from diffjax.models.unet import UNet2DConditionModel
    from diffjax.models.vae import AutoencoderKL
    text, unet, vae = (CLIPTextModel(comps.text_config), UNet2DConditionModel(comps.unet_config),
                       AutoencoderKL(comps.vae_config))
    sched = comps.scheduler
    acp = schedules.alphas_cumprod_for(sched["beta_schedule"], sched["num_train_timesteps"],
                                       sched["beta_start"], sched["beta_end"],
                                       sched.get("rescale_betas_zero_snr", False))
    scaling = comps.vae_config.scaling_factor
    tx = make_optimizer(c.optimizer)

    def apply_fn(p, x, t, ctx):
        return unet.apply({"params": p}, x, t, ctx)

    inner = make_train_step(apply_fn, tx, acp, prediction_type=sched["prediction_type"],
                            snr_gamma=c.train.snr_gamma or None, ema_decay=c.train.ema_decay,
                            compute_dtype=jnp.dtype(c.train.compute_dtype))

    # The text layer the UNet is conditioned on: by default the model's own (a folder that
    # declares one, e.g. diffjax-mini's 2), so a fine-tune keeps what sampling will feed it.
    clip_skip = resolve_clip_skip(c.train.clip_skip, comps, "train.clip_skip")

    def encode(vae_params, pixels):
        return vae.apply({"params": vae_params}, pixels,
                         method=AutoencoderKL.encode).mean * scaling

    def full_step(state, frozen, batch, key):
        latents = batch["latent"] if cache else encode(frozen["vae"], batch["image"])
        context = text.apply({"params": frozen["text"]}, batch["ids"],
                             clip_skip=clip_skip).context
        return inner(state, {"x0": jax.lax.stop_gradient(latents),
                             "context": jax.lax.stop_gradient(context)}, key)

    repl = sharding.replicated(mesh)
    abstract_state = jax.eval_shape(lambda p: create_train_state(p, tx),
                                    nn.meta.unbox(abstract_params(comps.unet_config)))
    state_shardings = unet_state_shardings(unet, comps, tx, abstract_state, mesh)
    batch_spec = {"latent" if cache else "image": sharding.batch_sharding(mesh, 4),
                  "ids": sharding.batch_sharding(mesh, 2)}
    jitted = jax.jit(full_step, in_shardings=(state_shardings, repl, batch_spec, repl),
                     out_shardings=(state_shardings, repl), donate_argnums=0)
    return UNetStep(jitted, tx, state_shardings, repl, batch_spec, clip_skip, encode)


def lower_unet_step(c: UNetRun, comps, mesh, cache: bool | None = None):
    """The train step lowered from shapes alone (`jax.stages.Lowered`; nothing placed):
    the TrainState from the UNet config's abstract params, the frozen CLIP (+ VAE) params
    from theirs, a batch of `data.batch_size` at `data.resolution`. `.compile()` it for a
    TPU topology's mesh to read its memory and cost (`diffjax plan`)."""
    from diffjax.models.abstract import abstract_params
    cache = c.train.cache_latents if cache is None else cache
    step = make_unet_step(c, comps, mesh, cache)

    def structs(tree, shardings):
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            tree, shardings)
    state = structs(jax.eval_shape(lambda p: create_train_state(p, step.tx),
                                   nn.meta.unbox(abstract_params(comps.unet_config))),
                    step.state_shardings)
    frozen = {"text": nn.meta.unbox(abstract_params(comps.text_config))}
    if not cache:
        frozen["vae"] = nn.meta.unbox(abstract_params(comps.vae_config))
    frozen = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                         sharding=step.frozen_sharding), frozen)
    b, r = c.data.batch_size, c.data.resolution
    if cache:
        f = comps.vae_config.downsample_factor
        x = jax.ShapeDtypeStruct((b, r // f, r // f, comps.vae_config.latent_channels),
                                 jnp.float32)
    else:
        x = jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((b, comps.text_config.max_position_embeddings), jnp.int32)
    batch = {"latent" if cache else "image": x, "ids": ids}
    key = jax.eval_shape(lambda: jax.random.key(0))
    return step.jitted.lower(state, frozen, batch, key)


def train_and_evaluate(config, workdir: str):
    """Train config.train.num_steps UNet updates; resumes from workdir's latest checkpoint.

    config: a ConfigDict (diffjax.configs.train.unet, a run's config.json), checked into a
    `UNetRun` here, or a UNetRun. Returns (final TrainState, list of per-step metrics of
    this call).
    """
    from diffjax.text import load_tokenizer

    c = run_spec(config, UNetRun)
    from diffjax.weights.load import load
    comps = load(c.model.name, seed=c.seed)
    mesh = make_mesh_checked(c)
    tokenizer = load_tokenizer(comps.tokenizer_dir)
    source = builders.open_source(c.data.dataset, c.data.split, c.data.data_dir or None)
    pcfg = pipeline_config(c)

    # train.cache_latents: the frozen encoder runs once over the set (latent_cache.py), and
    # the step reads the latents; same examples, order and caption dropout as without.
    cache = c.train.cache_latents
    step = make_unet_step(c, comps, mesh, cache)
    tx, clip_skip, batch_spec, jitted = step.tx, step.clip_skip, step.batch_spec, step.jitted
    if cache:
        from diffjax.train import latent_cache
        s = c.data.resolution // comps.vae_config.downsample_factor
        encode_jit = jax.jit(step.encode)
        source = latent_cache.encode_source(
            source, lambda x: encode_jit(comps.vae_params, x),
            (s, s, comps.vae_config.latent_channels), pcfg,
            progress=c.train.progress)
        pcfg = dataclasses.replace(pcfg, latents=True)

    def batches():
        return iter(pipeline.make_dataset(source, pcfg, tokenizer,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count()))

    frozen = {"text": comps.text_params}
    if not cache:  # with the cache, the step never reads the VAE: keep it off the device
        frozen["vae"] = comps.vae_params
    state = create_train_state(_initial_unet_params(c, comps), tx)
    state_shardings = step.state_shardings
    state = jax.device_put(state, state_shardings)
    frozen = jax.device_put(frozen, step.frozen_sharding)

    def step_fn(s, b, k):
        return jitted(s, frozen, b, k)

    make_batch = batch_maker(batch_spec)
    it = batches()
    state, manager = start_or_resume(c, workdir, state, it, state_shardings)
    # Scalars to metrics.jsonl (one line per step, appended across resumes) and TensorBoard
    # event files under workdir/tb; a sample grid PNG every train.sample_every steps.
    on_state = None
    if c.train.sample_every:
        from diffjax.train.sample_grid import GridSampler
        grid = GridSampler(comps, c.train.sample_prompts, c.train.sample_seeds,
                           steps=c.train.sample_steps, guidance_scale=c.train.sample_guidance,
                           clip_skip=clip_skip)

        def on_state(s, m):
            if m["step"] % c.train.sample_every == 0:
                grid(getattr(s, c.train.sample_params),
                     os.path.join(workdir, "samples", f"step_{m['step']:07d}.png"))

    with RunLogger(workdir, c.train.num_steps, int(state.step),
                   progress=c.train.progress, desc="unet") as logger:
        return loop.train_loop(state, step_fn, it, jax.random.key(c.seed),
                               num_steps=c.train.num_steps, make_batch=make_batch,
                               manager=manager, save_every=c.train.save_every,
                               config=spec_dict(c), on_metrics=logger.log,
                               on_state=on_state)
