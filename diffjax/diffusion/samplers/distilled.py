"""Samplers for distilled few-step models: LCM and TCD.

LCM (Luo et al. 2023, "Latent Consistency Models", arXiv:2310.04378, Alg. 3): the model's
x0 prediction, re-noised to the next sigma with fresh noise; ComfyUI's sample_lcm, and
diffusers' LCMScheduler up to the boundary-condition scalings c_skip / c_out, which belong
to the model (ComfyUI's ModelSamplingDiscreteDistilled applies them in the denoiser).

TCD (Zheng et al. 2024, "Trajectory Consistency Distillation", arXiv:2402.19159, strategic
stochastic sampling), as diffusers' TCDScheduler: from x0 and eps at sigma, a DDIM step down
to the intermediate timestep s = floor((1 - gamma) t_next), then forward noise from s up to
sigma_next. s is an INTEGER training timestep, so TCD needs the model's training sigmas:
`train_sigmas` picks SD's (scaled_linear, 1000 steps), the schedule of every TCD model
published (SD 1.5, SDXL); gamma = 0 is DDIM, gamma = 1 is LCM's re-noising from t = 0.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.diffusion.samplers.base import SamplerInfo, SamplerOptionError, step_noise
from diffjax.diffusion.samplers.classic import scan_steps


def sample_lcm(denoise, x, sigmas, key):
    """x_next = D(x, sigma) + sigma_next z (ComfyUI sample_lcm); D on the step to 0."""
    def step(x, i, s, s_next):
        d = denoise(x, s)
        return d + jnp.where(s_next > 0, s_next, 0.0) * step_noise(key, i, x)
    return scan_steps(step, x, sigmas)


def _sd_train_sigmas():
    from diffjax.diffusion import schedules
    return schedules.sigmas_from_alphas_cumprod(schedules.alphas_cumprod_for("scaled_linear"))


def sample_tcd(denoise, x, sigmas, key, gamma=0.3):
    """TCD's strategic stochastic sampling (diffusers TCDScheduler.step, eta = gamma):
    x_s = D + sigma_s eps with sigma_s the training sigma at floor((1 - gamma) t_next),
    then x_next = x_s + sqrt(sigma_next^2 - sigma_s^2) z; D on a step to sigma = 0."""
    if not 0.0 <= gamma <= 1.0:
        raise SamplerOptionError(f"tcd gamma must be in [0, 1], got {gamma!r}")
    from diffjax.diffusion.schedules import sigma_to_t
    train = jnp.asarray(_sd_train_sigmas(), sigmas.dtype)

    def step(x, i, s, s_next):
        d = denoise(x, s)
        eps = (x - d) / s
        t_next = jnp.round(sigma_to_t(jnp.maximum(s_next, train[0]), train))
        t_s = jnp.floor((1 - gamma) * t_next).astype(jnp.int32)
        sigma_s = jnp.minimum(train[t_s], s_next)
        x_s = d + sigma_s * eps
        noise = jnp.sqrt(jnp.maximum(s_next ** 2 - sigma_s ** 2, 0.0))
        if gamma > 0:
            x_s = x_s + noise * step_noise(key, i, x)
        return jnp.where(s_next > 0, x_s, d)
    return scan_steps(step, x, sigmas)


SAMPLERS = {
    "lcm": SamplerInfo(
        fn=sample_lcm,
        nfe=lambda n: n,
        order=1,
        stochastic=True,
        reference="Luo et al. 2023 (LCM, arXiv:2310.04378) Alg. 3; ComfyUI sample_lcm; "
                  "diffusers LCMScheduler",
    ),
    "tcd": SamplerInfo(
        fn=sample_tcd,
        nfe=lambda n: n,
        order=1,
        stochastic=True,
        reference="Zheng et al. 2024 (TCD, arXiv:2402.19159); diffusers TCDScheduler",
    ),
}
