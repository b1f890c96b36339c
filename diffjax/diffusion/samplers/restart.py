"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes",
arXiv:2306.14878), as AUTOMATIC1111's `restart_sampler` (modules/sd_samplers_extra.py)
runs it on a given grid: Heun ODE steps (EDM's second-order step; Euler on the step to 0),
and once the solve reaches the grid sigma nearest `restart_sigma_min`, `restart_times`
times: add forward noise back up to the grid sigma nearest `restart_sigma_max` (std
sqrt(max^2 - min^2)) and solve down again with `restart_steps` Heun steps on a Karras
(rho = 7) sub-grid. The noise is per seed and restart (`fold_in(key, k)`).

Unlike A1111, the main grid is the one given (A1111 replaces it by a Karras grid shortened
by the restart steps when it picks the restart parameters itself).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.samplers.base import SamplerInfo, SamplerOptionError, step_noise, to_d


def _heun(denoise, x, s, s_next):
    """EDM's Heun step (Karras et al. 2022, Alg. 1); Euler when s_next = 0."""
    d = to_d(x, s, denoise(x, s))
    x_euler = x + d * (s_next - s)

    def correct(_):
        sn = jnp.where(s_next > 0, s_next, 1.0)
        d2 = to_d(x_euler, sn, denoise(x_euler, sn))
        return x + (d + d2) / 2 * (s_next - s)
    return jax.lax.cond(s_next > 0, correct, lambda _: x_euler, None)


def _karras(n, lo, hi, rho=7.0):
    """n Karras sigmas from hi down to lo (no final 0); traced ends allowed."""
    ramp = jnp.linspace(0, 1, n).astype(lo.dtype)
    return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def sample_restart(denoise, x, sigmas, key, s_noise=1.0, restart_sigma_min=0.1,
                   restart_sigma_max=2.0, restart_steps=9, restart_times=1):
    """Heun on `sigmas` with `restart_times` restarts between the grid sigmas nearest
    restart_sigma_min and restart_sigma_max (A1111's defaults: 0.1, 2, 9 + 1 Karras
    points, once); restart_times = 0 is Heun."""
    if restart_steps < 1 or restart_times < 0:
        raise SamplerOptionError(f"restart needs restart_steps >= 1 and restart_times >= 0, "
                                 f"got {restart_steps}, {restart_times}")
    n = sigmas.shape[0] - 1
    min_idx = jnp.argmin(jnp.abs(sigmas - restart_sigma_min))
    max_idx = jnp.argmin(jnp.abs(sigmas - restart_sigma_max))
    sub = _karras(restart_steps + 1, sigmas[min_idx], sigmas[max_idx])

    def restart(x):
        def once(x, k):
            x = x + (step_noise(jax.random.fold_in(key, 1), k, x) * s_noise
                     * jnp.sqrt(jnp.maximum(sub[0] ** 2 - sub[-1] ** 2, 0.0)))
            x, _ = jax.lax.scan(lambda x, a: (_heun(denoise, x, *a), None), x,
                                (sub[:-1], sub[1:]))
            return x, None
        return jax.lax.scan(once, x, jnp.arange(restart_times))[0]

    def step(x, a):
        i, s, s_next = a
        x = _heun(denoise, x, s, s_next)
        go = (i + 1 == min_idx) & (max_idx < min_idx) & (restart_times > 0)
        return jax.lax.cond(go, restart, lambda x: x, x), None
    return jax.lax.scan(step, x, (jnp.arange(n), sigmas[:-1], sigmas[1:]))[0]


SAMPLERS = {
    "restart": SamplerInfo(
        fn=sample_restart,
        # Heun's 2N - 1, plus (when the grid spans the restart interval) restart_times x
        # restart_steps Heun steps of 2 evaluations: 18 with the defaults
        nfe=lambda n: 2 * n - 1 + 18,
        order=2,
        stochastic=True,
        reference="Xu et al. 2023 (Restart, arXiv:2306.14878); AUTOMATIC1111 "
                  "restart_sampler (sd_samplers_extra.py)",
    ),
}
