"""The diffusion train step, written against a generic `apply_fn(params, x_noisy, t, context)`.

Why generic: the same step trains the tiny UNet of diffjax-mini and fine-tunes SD; the model
only enters through `apply_fn`. Randomness is `fold_in(key, state.step)`, so the noise and
timesteps of step k do not depend on how the run got to step k (exact resume).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from diffjax.diffusion import losses
from diffjax.train.state import TrainState


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation, alphas_cumprod, *,
                    prediction_type: str = "epsilon", snr_gamma: float | None = None,
                    ema_decay: float = 0.999, compute_dtype=jnp.float32) -> Callable:
    """Returns `step(state, batch, key) -> (state, metrics)` (pure; jit it yourself).

    batch: {"x0": clean (latent) images [B, ...], "context": conditioning, passed through
    to apply_fn}. metrics: loss, grad_norm (before clipping), learning-rate-free.
    compute_dtype: params and inputs are cast to it for the forward pass; gradients,
    params and the optimizer stay float32.
    """
    losses._check_prediction_type(prediction_type)  # noqa: SLF001 - same package family
    acp = jnp.asarray(alphas_cumprod, jnp.float32)
    num_t = acp.shape[0]

    def loss_fn(params, x0, context, noise, t):
        p = jax.tree.map(lambda w: w.astype(compute_dtype), params)
        x_t = losses.add_noise(x0, noise, acp, t)
        pred = apply_fn(p, x_t.astype(compute_dtype), t, context)
        tgt = losses.target(prediction_type, x0, noise, acp, t)
        w = losses.loss_weights(prediction_type, acp, t, snr_gamma)
        return losses.weighted_mse(pred, tgt, w)

    def step(state: TrainState, batch: dict, key: jax.Array):
        x0 = jnp.asarray(batch["x0"], jnp.float32)
        k_noise, k_t = jax.random.split(jax.random.fold_in(key, state.step))
        noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, num_t)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x0, batch["context"], noise, t)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                           state.ema_params, params)
        new = TrainState(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state)
        return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return step


def jit_train_step(step: Callable, state_shardings, batch_sharding: NamedSharding) -> Callable:
    """jit with shardings and the state donated; checks the batch splits over its axes.

    state_shardings: a TrainState-shaped pytree of shardings (or one sharding for all);
    batch_sharding: the sharding of every batch leaf (batch axis over the data axes).
    """
    mesh = batch_sharding.mesh
    spec0 = batch_sharding.spec[0] if len(batch_sharding.spec) else None
    axes = () if spec0 is None else ((spec0,) if isinstance(spec0, str) else tuple(spec0))
    ways = math.prod(mesh.shape[a] for a in axes)
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jax.jit(step, in_shardings=(state_shardings, batch_sharding, replicated),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)

    def run(state, batch, key):
        for name, leaf in jax.tree_util.tree_leaves_with_path(batch):
            if leaf.shape[0] % ways:
                raise ValueError(
                    f"batch leaf {jax.tree_util.keystr(name)} has batch size {leaf.shape[0]}, "
                    f"not divisible by the {ways} devices of mesh axes {axes}")
        return jitted(state, batch, key)

    return run
