"""Classifier-free guidance: a wrapper around a VP network, used inside the denoiser.

`guided_model(network, scale, rescale)` turns `network(x, t, context)` (batched) into
`model(x_in, t, context, uncond_context)` (one sample), the `model` that
`denoisers.vp_denoiser` wraps. A context is any pytree of per-sample arrays (SD1/SD2: the
text encoder's hidden states; SDXL adds the pooled embedding and the time ids), so extra
conditioning travels the same path. Guidance acts on the network's own prediction (eps or v), as
diffusers does, so guidance rescale means the same thing as there. Every caller goes
through this one function, whatever the scale: scale 1 is the unguided network.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def rescale_guidance(guided, cond_pred, rescale: float):
    """Lin et al. 2023, eq. 15-16 (diffusers' `rescale_noise_cfg`): match the guided
    prediction's std to the conditional one's, then mix `rescale` of it back in. The std is
    over the whole array: a per-sample prediction here (diffusers takes it over all but the
    batch axis, i.e. per sample too)."""
    axes = tuple(range(guided.ndim))
    std_cond = jnp.std(cond_pred, axis=axes, keepdims=True)
    std_guided = jnp.std(guided, axis=axes, keepdims=True)
    rescaled = guided * (std_cond / std_guided)
    return rescale * rescaled + (1.0 - rescale) * guided


def cfg_model(network: Callable, guidance_scale: float, guidance_rescale: float = 0.0):
    """Classifier-free guidance around a VP network, cond and uncond in ONE network call.

    Returns `guided(x_in, t, context, uncond_context)`: the network sees a batch of two
    (x stacked with itself, each with its context) and the predictions are combined as
    uncond + scale * (cond - uncond), optionally rescaled.
    """
    def guided(x_in, t, context, uncond_context):
        xs = jnp.stack([x_in, x_in])
        ts = jnp.stack([t, t])
        ctx = jax.tree.map(lambda c, u: jnp.stack([c, u]), context, uncond_context)
        cond_pred, uncond_pred = network(xs, ts, ctx)
        out = uncond_pred + guidance_scale * (cond_pred - uncond_pred)
        if guidance_rescale > 0:
            out = rescale_guidance(out, cond_pred, guidance_rescale)
        return out

    return guided


def guided_model(network: Callable, guidance_scale: float, guidance_rescale: float = 0.0):
    """`model(x_in, t, context, uncond_context)` for any scale: at scale 1 the guided
    prediction is the conditional one, so the network runs once on a batch of one (half
    the work of `cfg_model`) and the uncond context is not used."""
    if guidance_scale == 1.0:
        return lambda x, t, ctx, unctx: network(  # noqa: E731
            x[None], t[None], jax.tree.map(lambda c: c[None], ctx))[0]
    return cfg_model(network, guidance_scale, guidance_rescale)
