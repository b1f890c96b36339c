"""Train the KL autoencoder (AutoencoderKL) on images: reconstruction + beta * KL.

    state, metrics = train_and_evaluate(config, workdir)   # config: configs/train/vae.py

Why this loss: it is the KL-f8 objective of latent diffusion without the LPIPS and GAN
terms (neither has a JAX reference here; for 32px shapes pixel L1/L2 suffices). The KL is
to N(0, I) per latent element, summed over latent dims and averaged over the batch, as
diffusers' DiagonalGaussianDistribution.kl; the reconstruction is per-pixel mean. The
posterior sample's noise is fold_in(key, step), so resume is exact.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from diffjax.train import runner
from diffjax.train.state import TrainState


def kl_to_standard_normal(mean, logvar) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)), summed over all but the batch axis, [B]."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl, axis=tuple(range(1, kl.ndim)))


def edge_map(x) -> jax.Array:
    """[B,H,W,C] images in [-1, 1] -> [B,H,W] in [0, 1]: per pixel, the largest absolute
    difference to its four neighbours (edges replicated), max over channels, halved."""
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = x.shape[1], x.shape[2]
    nbrs = (p[:, :h, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :w], p[:, 1:-1, 2:])
    return 0.5 * jnp.max(jnp.stack([jnp.abs(x - n) for n in nbrs]), axis=(0, -1))


def vae_loss(recon, x, mean, logvar, *, kl_weight: float, recon_loss: str = "l1",
             edge_weight: float = 0.0):
    """(loss, metrics): recon (pixel mean of |.| or (.)^2) + kl_weight * batch-mean KL.

    edge_weight > 0 weighs each pixel's error by 1 + edge_weight * edge_map(x) (the mean
    weight normalised to 1). Why: on `shapes` an unweighted L1 is nearly blind to the
    tips of a small star (a few pixels of 1,024): the mini decoder drew 1% of small stars
    as stars after 7,000 steps, while its latents, optimised for the same L1, give 42%.
    """
    diff = recon - x
    if recon_loss == "l1":
        err = jnp.abs(diff)
    elif recon_loss == "l2":
        err = jnp.square(diff)
    else:
        raise ValueError(f"recon_loss must be 'l1' or 'l2', got {recon_loss!r}")
    if edge_weight < 0:
        raise ValueError(f"edge_weight must be >= 0, got {edge_weight}")
    if edge_weight:
        w = 1.0 + edge_weight * edge_map(x)[..., None]
        rec = jnp.mean(w * err) / jnp.mean(w)
    else:
        rec = jnp.mean(err)
    kl = jnp.mean(kl_to_standard_normal(mean, logvar))
    return rec + kl_weight * kl, {"recon": rec, "kl": kl}


# train.train_only -> the top-level VAE param groups that stay fixed.
FROZEN_GROUPS = {"": (), "decoder": ("encoder", "quant_conv")}


def make_vae_step(vae, *, kl_weight: float, recon_loss: str = "l1", ema_decay: float = 0.999,
                  decode_from: str = "sample", frozen: tuple[str, ...] = (),
                  edge_weight: float = 0.0):
    """tx -> `step(state, {"image": [B,H,W,3] in [-1,1]}, key) -> (state, metrics)`.

    decode_from: "sample" (LDM: the decoder sees a posterior sample) or "mean" (it sees
    the posterior mean; the KL term still regularises the latent's scale). Measured on the
    mini VAE: "mean" was not faster than "sample" over 400 steps, so the recipe samples.
    frozen: top-level param groups kept exactly as they are (e.g. the encoder, so that a
    decoder fine-tune keeps the latents a UNet was trained on, as sd-vae-ft-mse did);
    they enter the loss under stop_gradient, so no backward pass runs through them and
    their (discarded) gradient no longer counts in the optimizer's clipped global norm (the
    mini recipe's decoder rounds 1-2 ran before this change, round 3 after it).
    """
    if decode_from not in ("sample", "mean"):
        raise ValueError(f"decode_from must be 'sample' or 'mean', got {decode_from!r}")
    def with_tx(tx: optax.GradientTransformation):
        def loss_fn(params, x, key):
            params = {k: jax.lax.stop_gradient(v) if k in frozen else v
                      for k, v in params.items()}
            post = vae.apply({"params": params}, x, method=vae.encode)
            z = post.sample(key) if decode_from == "sample" else post.mean
            recon = vae.apply({"params": params}, z, method=vae.decode)
            return vae_loss(recon, x, post.mean, post.logvar, kl_weight=kl_weight,
                            recon_loss=recon_loss, edge_weight=edge_weight)

        def step(state: TrainState, batch: dict, key: jax.Array):
            x = jnp.asarray(batch["image"], jnp.float32)
            k = jax.random.fold_in(key, state.step)
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x, k)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            params = {**params, **{k: state.params[k] for k in frozen}}
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                               state.ema_params, params)
            new = TrainState(step=state.step + 1, params=params, ema_params=ema,
                             opt_state=opt_state)
            return new, {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return step
    return with_tx


def init_vae_params(vae_config, seed: int) -> dict:
    """Seeded random params of an AutoencoderKL (the converter's deterministic init)."""
    import flax.linen as nn

    from diffjax.models.abstract import abstract_params
    from diffjax.weights.components import random_params
    return random_params(nn.meta.unbox(abstract_params(vae_config)), seed)


def train_and_evaluate(config, workdir: str, *, progress: bool = True):
    """Train config.train.num_steps VAE updates; resumes from workdir's latest checkpoint.

    config: a ConfigDict (diffjax.configs.train.vae, a run's config.json), checked into a
    `VAERun` here, or a VAERun. Returns (final TrainState, list of per-step metrics of this
    call).
    """
    from diffjax.models import presets
    from diffjax.models.vae import AutoencoderKL
    from diffjax.train.spec import VAERun, run_spec
    c = run_spec(config, VAERun)
    if c.model.name not in presets.VAE_PRESETS:
        raise ValueError(f"model.name {c.model.name!r} is not a VAE preset; presets: "
                         f"{', '.join(presets.VAE_PRESETS)}")
    vcfg = dataclasses.replace(presets.VAE_PRESETS[c.model.name], sample_size=c.data.resolution)
    vae = AutoencoderKL(vcfg)
    step = make_vae_step(vae, kl_weight=c.train.kl_weight, recon_loss=c.train.recon_loss,
                         decode_from=c.train.decode_from, ema_decay=c.train.ema_decay,
                         frozen=FROZEN_GROUPS[c.train.train_only],
                         edge_weight=c.train.edge_weight)
    init_from = c.model.init_from
    if init_from:  # fine-tune a finished run's EMA params (e.g. its decoder only)
        from diffjax.train.checkpoint import load_params_like
        import flax.linen as nn

        from diffjax.models.abstract import abstract_params
        params = load_params_like(init_from, nn.meta.unbox(abstract_params(vcfg)),
                                  "model.init_from")
    else:
        params = init_vae_params(vcfg, c.seed)
    return runner.run_single_model(c, workdir, params, step,
                                   {"image": 4}, progress=progress)
