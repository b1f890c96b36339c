"""CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance
for Diffusion Models", arXiv:2406.08070), as ComfyUI's comfy/k_diffusion/sampling.py has them.

CFG++ denoises with the guided x0 but re-noises along the UNCONDITIONAL noise direction
(x - x0_uncond) / sigma, which keeps the sample on the data manifold at small guidance scales
(CFG++'s lambda in [0, 1] corresponds to ComfyUI's cfg around 0.5-1.5). The unconditional x0
comes from the same network call through `guidance.denoise_with_uncond`; without guidance it
is the denoised value itself and every sampler here is its plain counterpart (euler,
euler_ancestral, dpmpp_2m), which the tests check.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.diffusion.guidance import denoise_with_uncond
from diffjax.diffusion.samplers.base import SamplerInfo, step_noise
from diffjax.diffusion.samplers.classic import ancestral_step, scan_steps


def sample_euler_ancestral_cfg_pp(denoise, x, sigmas, key, eta=1.0, s_noise=1.0):
    """ComfyUI sample_euler_ancestral_cfg_pp (VE: alpha = 1): x_next = D_guided +
    sigma_down (x - D_uncond) / sigma + sigma_up z; the denoised value on the step to 0."""
    def step(x, i, s, s_next):
        d_guided, d_uncond = denoise_with_uncond(denoise, x, s)
        sigma_down, sigma_up = ancestral_step(s, s_next, eta)
        x_new = d_guided + sigma_down * (x - d_uncond) / s
        if eta > 0 and s_noise > 0:
            x_new = x_new + step_noise(key, i, x) * s_noise * sigma_up
        return jnp.where(s_next > 0, x_new, d_guided)
    return scan_steps(step, x, sigmas)


def sample_euler_cfg_pp(denoise, x, sigmas, key=None):
    """ComfyUI sample_euler_cfg_pp: the ancestral one with eta = 0, i.e. the DDIM step
    x_next = D_guided + sigma_next (x - D_uncond) / sigma."""
    return sample_euler_ancestral_cfg_pp(denoise, x, sigmas, key, eta=0.0, s_noise=0.0)


def sample_dpmpp_2m_cfg_pp(denoise, x, sigmas, key=None):
    """ComfyUI sample_dpmpp_2m_cfg_pp: x_next = D_guided + e^-h (x - D_uncond) - expm1(-h)
    (D_guided - D_uncond_prev) / (2r) with r = h_last / h; first order on the first step
    and on the step to 0 (which gives D_guided)."""
    def step(carry, i, s, s_next):
        x, old_uncond, s_prev = carry
        d_guided, d_uncond = denoise_with_uncond(denoise, x, s)
        sn = jnp.where(s_next > 0, s_next, s * 0.5)
        h = jnp.log(s) - jnp.log(sn)
        h_last = jnp.log(s_prev) - jnp.log(s)
        r = h_last / h
        mix = -jnp.exp(-h) * d_uncond
        second = mix - jnp.expm1(-h) * (1 / (2 * r)) * (d_guided - old_uncond)
        mix = jnp.where(i > 0, second, mix)
        x_new = d_guided + mix + jnp.exp(-h) * x
        return jnp.where(s_next > 0, x_new, d_guided), d_uncond, s
    carry = (x, jnp.zeros_like(x), sigmas[0] * 2)   # step 0's r is unused; kept finite
    return scan_steps(step, carry, sigmas)[0]


_REF = "Chung et al. 2024 (CFG++, arXiv:2406.08070); ComfyUI comfy/k_diffusion/sampling.py "
SAMPLERS = {
    "euler_cfg_pp": SamplerInfo(
        fn=sample_euler_cfg_pp,
        nfe=lambda n: n,
        order=1,
        stochastic=False,
        reference=_REF + "sample_euler_cfg_pp",
    ),
    "euler_ancestral_cfg_pp": SamplerInfo(
        fn=sample_euler_ancestral_cfg_pp,
        nfe=lambda n: n,
        order=1,
        stochastic=True,
        reference=_REF + "sample_euler_ancestral_cfg_pp",
    ),
    "dpmpp_2m_cfg_pp": SamplerInfo(
        fn=sample_dpmpp_2m_cfg_pp,
        nfe=lambda n: n,
        order=2,
        stochastic=False,
        reference=_REF + "sample_dpmpp_2m_cfg_pp",
    ),
}
