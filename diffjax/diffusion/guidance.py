"""Classifier-free guidance: a wrapper around a VP network, used inside the denoiser.

`guided_model(network, scale, rescale)` turns `network(x, t, context)` (batched) into
`model(x_in, t, context, uncond_context)` (one sample), the `model` that
`denoisers.vp_denoiser` wraps. A context is any pytree of per-sample arrays (SD1/SD2: the
text encoder's hidden states; SDXL adds the pooled embedding and the time ids), so extra
conditioning travels the same path. Guidance acts on the network's own prediction (eps or v), as
diffusers does, so guidance rescale means the same thing as there. Every caller goes
through this one function, whatever the scale: scale 1 is the unguided network.

CFG++ samplers (samplers/cfg_pp.py) also need the UNCONDITIONAL prediction of the same
network call. The signature every sampler shares stays `denoise(x, sigma) -> x0`; a sampler
that wants the unconditional x0 calls `denoise_with_uncond(denoise, x, sigma)`, which opens
a trace-time capture around the call: `cfg_model` records its unconditional prediction
there, and the wrapper that turns predictions into x0 (`denoisers.vp_denoiser`, or any
x0-space guided denoiser through `report_uncond`) converts it. It is ComfyUI's
`post_cfg_function` hook, made safe for tracing: the capture lives only while the sampler
traces that one call, and the value is read right after it, in the same trace. Ordinary
samplers never open a capture, so nothing changes for them. Without guidance (no capture
filled) the unconditional x0 is the denoised value itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class UncondCapture:
    """What one denoiser call under `capture_uncond` left: the unconditional prediction in
    the network's own space (eps / v / x0, from cfg_model) and the unconditional x0."""

    prediction: object = None
    x0: object = None


_CAPTURES: list[UncondCapture] = []   # open captures, innermost last (trace time only)


@contextlib.contextmanager
def capture_uncond():
    """Open a capture for the denoiser calls traced inside the `with` block."""
    cap = UncondCapture()
    _CAPTURES.append(cap)
    try:
        yield cap
    finally:
        _CAPTURES.pop()


def capturing_uncond() -> bool:
    """True while a CFG++ sampler traces a denoiser call (so scale 1 must still compute the
    unconditional branch, as ComfyUI's disable_cfg1_optimization)."""
    return bool(_CAPTURES)


def report_uncond_prediction(pred) -> None:
    """cfg_model: the unconditional network prediction of the call being traced."""
    if _CAPTURES:
        _CAPTURES[-1].prediction = pred


def convert_uncond(to_x0: Callable) -> None:
    """A prediction -> x0 wrapper (vp_denoiser): turn the captured unconditional prediction
    into x0 with the same conversion as the guided one."""
    if _CAPTURES and _CAPTURES[-1].prediction is not None and _CAPTURES[-1].x0 is None:
        _CAPTURES[-1].x0 = to_x0(_CAPTURES[-1].prediction)
        _CAPTURES[-1].prediction = None


def report_uncond(x0_uncond) -> None:
    """An x0-space guided denoiser (e.g. the Gaussian-mixture benchmark's): its
    unconditional x0 for the call being traced."""
    if _CAPTURES:
        _CAPTURES[-1].x0 = x0_uncond


def denoise_with_uncond(denoise: Callable, x, sigma):
    """(guided x0, unconditional x0) of one denoiser call; the unconditional x0 is the
    guided one when the denoiser reports none (no guidance)."""
    with capture_uncond() as cap:
        x0 = denoise(x, sigma)
    return x0, (x0 if cap.x0 is None else cap.x0.astype(x0.dtype))


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
        report_uncond_prediction(uncond_pred)
        out = uncond_pred + guidance_scale * (cond_pred - uncond_pred)
        if guidance_rescale > 0:
            out = rescale_guidance(out, cond_pred, guidance_rescale)
        return out

    return guided


def guided_model(network: Callable, guidance_scale: float, guidance_rescale: float = 0.0):
    """`model(x_in, t, context, uncond_context)` for any scale: at scale 1 the guided
    prediction is the conditional one, so the network runs once on a batch of one (half
    the work of `cfg_model`) and the uncond context is not used, except while a CFG++
    sampler captures the unconditional prediction."""
    full = cfg_model(network, guidance_scale, guidance_rescale)
    if guidance_scale != 1.0:
        return full

    def model(x, t, ctx, unctx):
        if capturing_uncond():   # a CFG++ sampler needs the unconditional branch even here
            return full(x, t, ctx, unctx)
        return network(x[None], t[None], jax.tree.map(lambda c: c[None], ctx))[0]
    return model
