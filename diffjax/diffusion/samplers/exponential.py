"""More exponential-integrator samplers in data prediction (t = -log sigma, h = t_next - t):
DPM-Solver++(2S) without noise, RES multistep, and the ER-SDE solver, after ComfyUI's
comfy/k_diffusion/sampling.py (VE models: alpha = 1, half-log-SNR = -log sigma).

Each loop is one `lax.scan`; a step that lands on sigma = 0 returns the denoised value
(ComfyUI's "denoising step"), computed with a harmless stand-in for sigma_next in the
discarded branch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.samplers.base import SamplerInfo, SamplerOptionError, step_noise
from diffjax.diffusion.samplers.classic import scan_steps


def _safe(s, s_next):
    return jnp.where(s_next > 0, s_next, s * 0.5)


def sample_dpmpp_2s(denoise, x, sigmas, key=None):
    """DPM-Solver++(2S) (Lu et al. 2022, Alg. 1, data prediction, r = 1/2), as k-diffusion's
    sample_dpmpp_2s_ancestral with eta = 0 (sigma_down = sigma_next, no noise): a midpoint
    evaluation in t per step; Euler (= the denoised value) on the step to 0."""
    def step(x, i, s, s_next):
        d = denoise(x, s)

        def two_stage(_):
            sn = _safe(s, s_next)
            h = jnp.log(s) - jnp.log(sn)
            s_mid = jnp.exp(jnp.log(s) - 0.5 * h)
            x2 = (s_mid / s) * x - jnp.expm1(-0.5 * h) * d
            return (sn / s) * x - jnp.expm1(-h) * denoise(x2, s_mid)
        return jax.lax.cond(s_next > 0, two_stage, lambda _: d, None)
    return scan_steps(step, x, sigmas)


def _phi1(z):
    return jnp.expm1(z) / z


def _phi2(z):
    return (_phi1(z) - 1.0) / z


def sample_res_multistep(denoise, x, sigmas, key=None):
    """RES second-order multistep (Zhang et al. 2023, "Improved order analysis and design of
    exponential integrator for diffusion models sampling", arXiv:2308.02157), exactly as
    ComfyUI's sample_res_multistep (eta = 0): x_next = e^-h x + h (b1 D + b2 D_prev) with
    c2 = (t_prev - t) / h, b1 = phi1(-h) - phi2(-h) / c2, b2 = phi2(-h) / c2; Euler on the
    first step and on the step to 0."""
    def step(carry, i, s, s_next):
        x, old, s_prev = carry
        d = denoise(x, s)
        sn = _safe(s, s_next)
        h = jnp.log(s) - jnp.log(sn)
        c2 = (jnp.log(s) - jnp.log(s_prev)) / h     # (t_prev - t_old) / h, t_old = t
        phi1, phi2 = _phi1(-h), _phi2(-h)
        b1, b2 = phi1 - phi2 / c2, phi2 / c2
        second = jnp.exp(-h) * x + h * (b1 * d + b2 * old)
        euler = x + (x - d) / s * (s_next - s)
        x_new = jnp.where((i > 0) & (s_next > 0), second, euler)
        return x_new, d, s
    carry = (x, jnp.zeros_like(x), sigmas[0] * 2)   # step 0 takes Euler; c2 kept finite
    return scan_steps(step, carry, sigmas)[0]


def er_sde_noise_scaler(v):
    """ER-SDE's default noise scale function (ComfyUI's default_er_sde_noise_scaler)."""
    return v * (jnp.exp(v ** 0.3) + 10.0)


ER_SDE_POINTS = 200   # ComfyUI's num_integration_points


def sample_er_sde(denoise, x, sigmas, key, s_noise=1.0, max_stage=3):
    """ER-SDE-Solver-3 (Cui et al. 2023, "Elucidating the solution space of extended
    reverse-time SDE for diffusion models", arXiv:2309.06169), as ComfyUI's sample_er_sde
    on a VE model (lambda = sigma): a first-order step with the noise scale function's
    ratio r, plus second- and third-stage corrections from previous denoised values whose
    integrals are ComfyUI's 200-point Riemann sums; noise of std sqrt(s_n^2 - s^2 r^2)."""
    if max_stage not in (1, 2, 3):
        raise SamplerOptionError(f"er_sde max_stage must be one of (1, 2, 3), got {max_stage!r}")
    idx = jnp.arange(ER_SDE_POINTS, dtype=sigmas.dtype)
    ns = er_sde_noise_scaler

    def step(carry, i, s, s_next):
        x, old, old_dd, s_prev, s_prev2 = carry
        d = denoise(x, s)
        stage = jnp.minimum(max_stage, i + 1)
        sn = _safe(s, s_next)
        r = ns(sn) / ns(s)
        x_new = r * x + (1 - r) * d
        dt = sn - s
        step_size = -dt / ER_SDE_POINTS
        pos = sn + idx * step_size
        scaled = ns(pos)
        s_int = jnp.sum(1 / scaled) * step_size
        dd = (d - old) / (s - s_prev)
        x2 = x_new + (dt + s_int * ns(sn)) * dd
        s_u = jnp.sum((pos - s) / scaled) * step_size
        du = (dd - old_dd) / ((s - s_prev2) / 2)
        x3 = x2 + (dt ** 2 / 2 + s_u * ns(sn)) * du
        x_new = jnp.where(stage >= 3, x3, jnp.where(stage >= 2, x2, x_new))
        old_dd = jnp.where(stage >= 2, dd, old_dd)
        if s_noise > 0:
            std = jnp.sqrt(jnp.maximum(sn ** 2 - s ** 2 * r ** 2, 0.0))
            x_new = x_new + step_noise(key, i, x) * s_noise * std
        last = s_next <= 0
        return (jnp.where(last, d, x_new), d, jnp.where(last, old_dd, old_dd), s,
                s_prev)
    z = jnp.zeros_like(x)
    # history sigmas of the first steps only feed discarded stages; kept distinct from s
    carry = (x, z, z, sigmas[0] * 2, sigmas[0] * 4)
    return scan_steps(step, carry, sigmas)[0]


SAMPLERS = {
    "dpmpp_2s": SamplerInfo(
        fn=sample_dpmpp_2s,
        nfe=lambda n: 2 * n - 1,
        order=2,
        stochastic=False,
        reference="Lu et al. 2022 (DPM-Solver++) 2S, Alg. 1; k-diffusion "
                  "sample_dpmpp_2s_ancestral with eta=0",
    ),
    "res_multistep": SamplerInfo(
        fn=sample_res_multistep,
        nfe=lambda n: n,
        order=2,
        stochastic=False,
        reference="Zhang et al. 2023 (RES, arXiv:2308.02157); ComfyUI "
                  "sample_res_multistep",
    ),
    "er_sde": SamplerInfo(
        fn=sample_er_sde,
        nfe=lambda n: n,
        order=1,
        stochastic=True,
        reference="Cui et al. 2023 (ER-SDE-Solver-3, arXiv:2309.06169); ComfyUI "
                  "sample_er_sde",
    ),
}
