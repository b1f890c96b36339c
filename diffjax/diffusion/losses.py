"""Diffusion training losses: forward noising, eps / v / x0 targets, min-SNR-gamma weights.

Why these formulas: they are the discrete-time (DDPM) ones that diffusers' schedulers and
`train_text_to_image.py` use, so a model trained here is sampled by the same denoiser
(`denoisers.vp_denoiser`) as a converted Stable Diffusion checkpoint:

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    target: epsilon -> eps;  v_prediction -> sqrt(abar_t) eps - sqrt(1 - abar_t) x0;
            sample -> x0
    SNR(t) = abar_t / (1 - abar_t)
    min-SNR-gamma weight (Hang et al. 2023), per prediction type so that the effective loss
    on x0 is min(SNR, gamma): epsilon -> min(SNR, g) / SNR; v -> min(SNR, g) / (SNR + 1);
    sample -> min(SNR, g).
"""

from __future__ import annotations

import jax.numpy as jnp

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")


def _per_example(a, t, like):
    """abar[t] shaped [B, 1, ..., 1] to broadcast against `like`."""
    v = jnp.asarray(a, jnp.float32)[t]
    return v.reshape(v.shape + (1,) * (like.ndim - 1)).astype(like.dtype)


def add_noise(x0, noise, alphas_cumprod, t):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t int [B] (diffusers add_noise)."""
    a = _per_example(alphas_cumprod, t, x0)
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def target(prediction_type: str, x0, noise, alphas_cumprod, t):
    """What the network is trained to output for this prediction type."""
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    a = _per_example(alphas_cumprod, t, x0)
    return jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0


def snr(alphas_cumprod, t):
    """Signal-to-noise ratio abar_t / (1 - abar_t), float32 [B]."""
    a = jnp.asarray(alphas_cumprod, jnp.float32)[t]
    return a / (1.0 - a)


def loss_weights(prediction_type: str, alphas_cumprod, t, snr_gamma: float | None):
    """Per-example weights [B]: ones (uniform) when snr_gamma is None, else min-SNR-gamma."""
    _check_prediction_type(prediction_type)
    s = snr(alphas_cumprod, t)
    if snr_gamma is None:
        return jnp.ones_like(s)
    if snr_gamma <= 0:
        raise ValueError(f"snr_gamma must be > 0 (or None for uniform), got {snr_gamma}")
    clipped = jnp.minimum(s, snr_gamma)
    if prediction_type == "epsilon":
        return clipped / s
    if prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped


def weighted_mse(pred, tgt, weights):
    """mean_b( w_b * mean_{other axes} (pred - tgt)^2 ), computed in float32."""
    if pred.shape != tgt.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {tgt.shape}")
    err = jnp.square(pred.astype(jnp.float32) - tgt.astype(jnp.float32))
    per_example = err.reshape(err.shape[0], -1).mean(axis=1)
    return jnp.mean(per_example * weights)
