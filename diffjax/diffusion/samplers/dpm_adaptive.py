"""The original DPM-Solver (Lu et al. 2022, arXiv:2206.00927) in noise prediction, as
k-diffusion's `DPMSolver`: DPM-Solver-fast (fixed steps of orders 3, ..., 3, 2|1, evenly
spaced in t = -log sigma) and DPM-Solver-12/23 with adaptive step size (a PID controller on
the embedded lower-order error), as `sample_dpm_fast` / `sample_dpm_adaptive`.

Both take only the grid's ends, as ComfyUI's wrappers call k-diffusion's: sigma_max =
sigmas[0] and sigma_min = the last nonzero sigma; the result is the solve down to sigma_min
(no final step to 0, as in k-diffusion and ComfyUI). dpm_fast spends exactly N = len(sigmas)
- 1 denoiser calls. dpm_adaptive is a `lax.while_loop`, so its NFE is data-dependent:
`dpm_adaptive_with_info` returns it per sample (nfe, steps, n_accept, n_reject); the
catalogue's NFE for it is None.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.samplers.base import SamplerInfo, SamplerOptionError, step_noise
from diffjax.diffusion.samplers.classic import ancestral_step

# the adaptive loop's safety cap on attempted steps (k-diffusion has none; a step size that
# never reaches t_end would otherwise hang a compiled program)
MAX_ADAPTIVE_STEPS = 10_000


def _sigma(t):
    return jnp.exp(-t)


def _ends(sigmas):
    """(t_start, t_end): -log sigma_max and -log of the last nonzero sigma (ComfyUI)."""
    sigma_min = jnp.where(sigmas[-1] > 0, sigmas[-1], sigmas[-2])
    return -jnp.log(sigmas[0]), -jnp.log(sigma_min)


def _eps(denoise, x, t):
    return (x - denoise(x, _sigma(t))) / _sigma(t)


def dpm_solver_1_step(x, t, t_next, eps):
    """DPM-Solver-1 (= DDIM) from (x, t) with its eps."""
    return x - _sigma(t_next) * jnp.expm1(t_next - t) * eps


def dpm_solver_2_step(denoise, x, t, t_next, eps, r1=0.5):
    """DPM-Solver-2: one intermediate eps at s1 = t + r1 h. Returns (x_next, eps_r1)."""
    h = t_next - t
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * jnp.expm1(r1 * h) * eps
    eps_r1 = _eps(denoise, u1, s1)
    x2 = (x - _sigma(t_next) * jnp.expm1(h) * eps
          - _sigma(t_next) / (2 * r1) * jnp.expm1(h) * (eps_r1 - eps))
    return x2, eps_r1


def dpm_solver_3_step(denoise, x, t, t_next, eps, eps_r1=None, r1=1 / 3, r2=2 / 3):
    """DPM-Solver-3 (r1 = 1/3, r2 = 2/3); eps_r1 reused when given (the adaptive 23 pair
    shares it with its DPM-Solver-2 at r1 = 1/3, as k-diffusion's eps cache does)."""
    h = t_next - t
    s1, s2 = t + r1 * h, t + r2 * h
    if eps_r1 is None:
        u1 = x - _sigma(s1) * jnp.expm1(r1 * h) * eps
        eps_r1 = _eps(denoise, u1, s1)
    u2 = (x - _sigma(s2) * jnp.expm1(r2 * h) * eps
          - _sigma(s2) * (r2 / r1) * (jnp.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps))
    eps_r2 = _eps(denoise, u2, s2)
    return (x - _sigma(t_next) * jnp.expm1(h) * eps
            - _sigma(t_next) / r2 * (jnp.expm1(h) / h - 1) * (eps_r2 - eps))


def fast_orders(nfe: int) -> list[int]:
    """k-diffusion's dpm_solver_fast order list for a budget of `nfe` evaluations."""
    m = math.floor(nfe / 3) + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


def _ancestral_target(t, t_next, t_end, eta):
    """(t_next_, sigma_up): the deterministic target and the noise (k-diffusion, eta > 0)."""
    sd, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_next_ = jnp.minimum(t_end, -jnp.log(sd))
    su = jnp.sqrt(jnp.maximum(_sigma(t_next) ** 2 - _sigma(t_next_) ** 2, 0.0))
    return t_next_, su


def sample_dpm_fast(denoise, x, sigmas, key=None, eta=0.0, s_noise=1.0):
    """DPM-Solver-fast (Lu et al. 2022, Sec. 3.4): N evaluations spread over floor(N/3)+1
    steps evenly spaced in t; k-diffusion's sample_dpm_fast(sigma_min, sigma_max, N)."""
    n = sigmas.shape[0] - 1
    orders = fast_orders(n)
    t_start, t_end = _ends(sigmas)
    ts = t_start + (t_end - t_start) * jnp.asarray(np.linspace(0, 1, len(orders) + 1),
                                                     sigmas.dtype)

    def step(x, a):
        i, t, t_next, order = a
        if eta > 0:
            t_next_, su = _ancestral_target(t, t_next, t_end, eta)
        else:
            t_next_, su = t_next, 0.0
        eps = _eps(denoise, x, t)
        x = jax.lax.switch(order - 1, [
            lambda: dpm_solver_1_step(x, t, t_next_, eps),
            lambda: dpm_solver_2_step(denoise, x, t, t_next_, eps)[0],
            lambda: dpm_solver_3_step(denoise, x, t, t_next_, eps)])
        if eta > 0:
            x = x + su * s_noise * step_noise(key, i, x)
        return x, None
    xs = (jnp.arange(len(orders)), ts[:-1], ts[1:], jnp.asarray(orders, jnp.int32))
    return jax.lax.scan(step, x, xs)[0]


def dpm_adaptive_with_info(denoise, x, sigmas, key=None, order=3, rtol=0.05, atol=0.0078,
                           h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
                           accept_safety=0.81, eta=0.0, s_noise=1.0):
    """k-diffusion's dpm_solver_adaptive: (x, info) with info = {nfe, steps, n_accept,
    n_reject} (int32). Each attempt evaluates `order` times (12: DPM-Solver-1 and -2; 23:
    DPM-Solver-2 at r1 = 1/3 and -3 sharing eps_r1); the scaled RMS difference of the pair
    drives k-diffusion's PIDStepSizeController."""
    if order not in (2, 3):
        raise SamplerOptionError(f"dpm_adaptive order must be 2 or 3, got {order!r}")
    t_start, t_end = _ends(sigmas)
    b1 = (pcoeff + icoeff + dcoeff) / (1.5 if eta else order)
    b2 = -(pcoeff + 2 * dcoeff) / (1.5 if eta else order)
    b3 = dcoeff / (1.5 if eta else order)
    dt = sigmas.dtype
    zero = jnp.zeros((), jnp.int32)

    def attempt(st):
        s, x, x_prev, h, errs, first, nfe, steps, n_acc, n_rej = st
        t = jnp.minimum(t_end, s + h)
        if eta > 0:
            t_, su = _ancestral_target(s, t, t_end, eta)
        else:
            t_, su = t, 0.0
        eps = _eps(denoise, x, s)
        if order == 2:
            x_low = dpm_solver_1_step(x, s, t_, eps)
            x_high, _ = dpm_solver_2_step(denoise, x, s, t_, eps)
        else:
            x_low, eps_r1 = dpm_solver_2_step(denoise, x, s, t_, eps, r1=1 / 3)
            x_high = dpm_solver_3_step(denoise, x, s, t_, eps, eps_r1=eps_r1)
        delta = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(x_low), jnp.abs(x_prev)))
        error = jnp.linalg.norm(((x_low - x_high) / delta).ravel()) / math.sqrt(x.size)
        inv = (1 / (error + 1e-8)).astype(dt)
        errs = jnp.where(first, jnp.full((3,), inv, dt), errs).at[0].set(inv)
        factor = errs[0] ** b1 * errs[1] ** b2 * errs[2] ** b3
        factor = 1 + jnp.arctan(factor - 1)
        accept = factor >= accept_safety
        errs = jnp.where(accept, jnp.stack([errs[0], errs[0], errs[1]]), errs)
        x_acc = x_high
        if eta > 0:
            x_acc = x_acc + su * s_noise * step_noise(key, steps, x)
        return (jnp.where(accept, t, s), jnp.where(accept, x_acc, x),
                jnp.where(accept, x_low, x_prev), h * factor, errs, jnp.zeros((), bool),
                nfe + order, steps + 1, n_acc + accept.astype(jnp.int32),
                n_rej + (~accept).astype(jnp.int32))

    def running(st):
        return (st[0] < t_end - 1e-5) & (st[7] < MAX_ADAPTIVE_STEPS)

    st = (t_start, x, x, jnp.asarray(abs(h_init), dt), jnp.ones((3,), dt),
          jnp.ones((), bool), zero, zero, zero, zero)
    st = jax.lax.while_loop(running, attempt, st)
    return st[1], dict(nfe=st[6], steps=st[7], n_accept=st[8], n_reject=st[9])


def sample_dpm_adaptive(denoise, x, sigmas, key=None, order=3, rtol=0.05, atol=0.0078,
                        h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81,
                        eta=0.0, s_noise=1.0):
    """DPM-Solver-12/23 with adaptive steps (k-diffusion sample_dpm_adaptive); the sample
    only (dpm_adaptive_with_info also returns the NFE)."""
    return dpm_adaptive_with_info(denoise, x, sigmas, key, order, rtol, atol, h_init, pcoeff,
                                  icoeff, dcoeff, accept_safety, eta, s_noise)[0]


SAMPLERS = {
    "dpm_fast": SamplerInfo(
        fn=sample_dpm_fast,
        nfe=lambda n: n,
        order=3,
        stochastic=False,
        reference="Lu et al. 2022 (DPM-Solver, arXiv:2206.00927) DPM-Solver-fast; "
                  "k-diffusion sample_dpm_fast",
    ),
    "dpm_adaptive": SamplerInfo(
        fn=sample_dpm_adaptive,
        nfe=lambda n: None,
        order=3,
        stochastic=False,
        reference="Lu et al. 2022 (DPM-Solver) DPM-Solver-23 adaptive; k-diffusion "
                  "sample_dpm_adaptive (NFE: dpm_adaptive_with_info)",
    ),
}
