"""First- and second-order single-step samplers, LMS/PLMS, and DDIM/DDPM on the sigma grid.

All in VE form (x = y + sigma n, d = (x - D) / sigma) after k-diffusion's `sampling.py`
and Karras et al. 2022; DDIM, DDPM and PNDM's PLMS are the same algorithms as diffusers'
schedulers, rewritten on the sigma grid (x_ve = x_vp / sqrt(abar)). Each loop is one
`lax.scan`; a step that lands on sigma = 0 takes the Euler step (= the denoised sample)
because higher-order corrections divide by the final sigma.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.samplers.base import SamplerInfo, SamplerOptionError, step_noise, to_d


def scan_steps(step, carry, sigmas):
    """Run `step(carry, i, sigma, sigma_next) -> carry` for i = 0..N-1 in one lax.scan."""
    n = sigmas.shape[0] - 1
    xs = (jnp.arange(n), sigmas[:-1], sigmas[1:])
    carry, _ = jax.lax.scan(lambda c, a: (step(c, *a), None), carry, xs)
    return carry


def ancestral_step(sigma, sigma_next, eta=1.0):
    """k-diffusion's get_ancestral_step: split the move to sigma_next into a deterministic
    move to sigma_down and fresh noise of std sigma_up (sigma_down^2 + sigma_up^2 = next^2)."""
    sigma_up = jnp.minimum(sigma_next, eta * jnp.sqrt(jnp.maximum(
        sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2, 0.0)))
    sigma_down = jnp.sqrt(jnp.maximum(sigma_next ** 2 - sigma_up ** 2, 0.0))
    return sigma_down, sigma_up


# ----------------------------------------------------------------------------------------
def sample_euler(denoise, x, sigmas, key=None):
    """Euler on the probability-flow ODE (Karras et al. 2022, Alg. 2 without churn).
    Equals DDIM with eta = 0 on the same grid."""
    def step(x, i, s, s_next):
        return x + to_d(x, s, denoise(x, s)) * (s_next - s)
    return scan_steps(step, x, sigmas)


def sample_euler_ancestral(denoise, x, sigmas, key, eta=1.0, s_noise=1.0):
    """Euler step to sigma_down, then add noise up to sigma_next (k-diffusion)."""
    def step(x, i, s, s_next):
        sigma_down, sigma_up = ancestral_step(s, s_next, eta)
        x = x + to_d(x, s, denoise(x, s)) * (sigma_down - s)
        return x + step_noise(key, i, x) * s_noise * sigma_up
    return scan_steps(step, x, sigmas)


def sample_heun(denoise, x, sigmas, key=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                s_noise=1.0):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2): optional churn raises sigma to
    sigma_hat = sigma (1 + gamma), then Heun's 2nd-order step; Euler on the last step."""
    n = sigmas.shape[0] - 1

    def step(x, i, s, s_next):
        gamma = jnp.where((s >= s_tmin) & (s <= s_tmax),
                          min(s_churn / n, 2 ** 0.5 - 1), 0.0)
        s_hat = s * (gamma + 1)
        if s_churn > 0:
            # sqrt(s_hat^2 - s^2) written as s sqrt(gamma (gamma + 2)): the difference form
            # can round (fused multiply-add) to a tiny negative when gamma = 0, giving NaN.
            x = x + step_noise(key, i, x) * s_noise * s * jnp.sqrt(gamma * (gamma + 2))
        d = to_d(x, s_hat, denoise(x, s_hat))
        dt = s_next - s_hat
        x_euler = x + d * dt

        def correct(_):
            d2 = to_d(x_euler, s_next, denoise(x_euler, s_next))
            return x + (d + d2) / 2 * dt
        return jax.lax.cond(s_next > 0, correct, lambda _: x_euler, None)
    return scan_steps(step, x, sigmas)


def sample_dpm_2(denoise, x, sigmas, key=None):
    """DPM-Solver-2 as in k-diffusion (Karras et al. 2022, Alg. 2 variant): a midpoint step
    at the geometric mean sigma; Euler on the last step."""
    def step(x, i, s, s_next):
        d = to_d(x, s, denoise(x, s))

        def midpoint(_):
            s_mid = jnp.exp((jnp.log(s) + jnp.log(s_next)) / 2)
            x2 = x + d * (s_mid - s)
            return x + to_d(x2, s_mid, denoise(x2, s_mid)) * (s_next - s)
        return jax.lax.cond(s_next > 0, midpoint, lambda _: x + d * (s_next - s), None)
    return scan_steps(step, x, sigmas)


def sample_dpm_2_ancestral(denoise, x, sigmas, key, eta=1.0, s_noise=1.0):
    """DPM-Solver-2 to sigma_down, then noise up to sigma_next (k-diffusion)."""
    def step(x, i, s, s_next):
        sigma_down, sigma_up = ancestral_step(s, s_next, eta)
        d = to_d(x, s, denoise(x, s))

        def midpoint(_):
            s_mid = jnp.exp((jnp.log(s) + jnp.log(sigma_down)) / 2)
            x2 = x + d * (s_mid - s)
            return x + to_d(x2, s_mid, denoise(x2, s_mid)) * (sigma_down - s)
        x = jax.lax.cond(sigma_down > 0, midpoint, lambda _: x + d * (sigma_down - s), None)
        return x + step_noise(key, i, x) * s_noise * sigma_up
    return scan_steps(step, x, sigmas)


# ----------------------------------------------------------------------------------------
_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(8)


def lms_coefficient(sigmas, i, j, order):
    """∫_{sigma_i}^{sigma_{i+1}} of the Lagrange basis polynomial through the last `order`
    sigmas that is 1 at sigma_{i-j} (k-diffusion's linear_multistep_coeff). The integrand is
    a polynomial of degree < 4, which 8-point Gauss-Legendre integrates exactly."""
    a, b = sigmas[i], sigmas[i + 1]
    tau = (b - a) / 2 * jnp.asarray(_GAUSS_NODES, sigmas.dtype) + (a + b) / 2
    prod = jnp.ones_like(tau)
    for k in range(order):
        if k != j:
            num = tau - sigmas[jnp.maximum(i - k, 0)]
            den = sigmas[jnp.maximum(i - j, 0)] - sigmas[jnp.maximum(i - k, 0)]
            prod = prod * num / jnp.where(den == 0, 1.0, den)
    return (b - a) / 2 * jnp.sum(jnp.asarray(_GAUSS_WEIGHTS, sigmas.dtype) * prod)


def sample_lms(denoise, x, sigmas, key=None, order=4):
    """Linear multistep on d (k-diffusion's sample_lms = diffusers' LMSDiscreteScheduler):
    the order grows 1, 2, ... up to `order` as history accumulates."""
    if not 1 <= order <= 4:
        raise SamplerOptionError(f"lms order must be 1..4, got {order}")

    def step(carry, i, s, s_next):
        x, ds = carry                      # ds[k] = derivative k steps ago
        ds = jnp.roll(ds, 1, axis=0).at[0].set(to_d(x, s, denoise(x, s)))
        cur_order = jnp.minimum(i + 1, order)
        update = jnp.zeros_like(x)
        for j in range(order):
            for o in range(1, order + 1):  # coefficient for the order in use this step
                use = (cur_order == o) & (j < o)
                coeff = jnp.where(use, lms_coefficient(sigmas, i, j, o), 0.0)
                update = update + coeff * ds[j]
        return x + update, ds
    ds0 = jnp.zeros((order,) + x.shape, x.dtype)
    return scan_steps(step, (x, ds0), sigmas)[0]


# ----------------------------------------------------------------------------------------
def sample_ddim(denoise, x, sigmas, key=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12) on the sigma grid. With abar = 1/(1+sigma^2):
    x_next = x0 + sqrt((1 - abar_n - std^2)/abar_n) eps + std/sqrt(abar_n) z, std the DDIM
    sigma_t(eta). eta = 0 is Euler; eta = 1 is DDPM's posterior variance."""
    def step(x, i, s, s_next):
        x0 = denoise(x, s)
        eps = (x - x0) / s
        a, a_next = 1 / (1 + s ** 2), 1 / (1 + s_next ** 2)
        var = eta ** 2 * (1 - a_next) / (1 - a) * (1 - a / a_next)
        dir_coef = jnp.sqrt(jnp.maximum(1 - a_next - var, 0.0) / a_next)
        x = x0 + dir_coef * eps
        if eta > 0:
            x = x + jnp.sqrt(var / a_next) * step_noise(key, i, x)
        return x
    return scan_steps(step, x, sigmas)


def sample_ddpm(denoise, x, sigmas, key):
    """DDPM ancestral sampling (Ho et al. 2020) with the posterior variance beta_tilde for
    the grid's timestep pairs, as diffusers' DDPMScheduler ("fixed_small"). On the sigma
    grid this is exactly DDIM with eta = 1 (and k-diffusion's Euler ancestral)."""
    return sample_ddim(denoise, x, sigmas, key, eta=1.0)


def sample_plms(denoise, x, sigmas, key=None):
    """PNDM's pseudo linear multistep (Liu et al. 2022) exactly as diffusers' PNDMScheduler
    with skip_prk_steps=True (SD): the first step is repeated with the mean of the two eps
    (a pseudo improved Euler step, N + 1 network calls in all), then Adams-Bashforth on eps
    of orders 2, 3, 4. The transfer is DDIM's, i.e. x_next = x + (sigma_next - sigma) eps."""
    def eps_at(x, s):
        return (x - denoise(x, s)) / s

    # step 0, twice (PNDM's warm-up): eps at sigma_0, a trial step, eps at sigma_1, average.
    e0 = eps_at(x, sigmas[0])
    x_trial = x + (sigmas[1] - sigmas[0]) * e0
    e1 = eps_at(x_trial, sigmas[1])
    x = x + (sigmas[1] - sigmas[0]) * (e0 + e1) / 2
    if sigmas.shape[0] == 2:
        return x
    # diffusers keeps e0 (not e1) as the history's first entry.
    hist = jnp.stack([e0, e0, e0])           # hist[0] = newest

    def step(carry, i, s, s_next):
        x, hist = carry
        e = eps_at(x, s)
        n_hist = i + 1                       # entries before this one (i counts from 0)
        e2 = (3 * e - hist[0]) / 2
        e3 = (23 * e - 16 * hist[0] + 5 * hist[1]) / 12
        e4 = (55 * e - 59 * hist[0] + 37 * hist[1] - 9 * hist[2]) / 24
        e_prime = jnp.where(n_hist == 1, e2, jnp.where(n_hist == 2, e3, e4))
        hist = jnp.stack([e, hist[0], hist[1]])
        return x + (s_next - s) * e_prime, hist
    xs = (jnp.arange(sigmas.shape[0] - 2), sigmas[1:-1], sigmas[2:])
    (x, _), _ = jax.lax.scan(lambda c, a: (step(c, *a), None), (x, hist), xs)
    return x


SAMPLERS = {
    "euler": SamplerInfo(
        fn=sample_euler,
        nfe=lambda n: n,
        order=1,
        stochastic=False,
        reference="Karras et al. 2022 (EDM), Alg. 2 without churn; k-diffusion sample_euler",
    ),
    "euler_ancestral": SamplerInfo(
        fn=sample_euler_ancestral,
        nfe=lambda n: n,
        order=1,
        stochastic=True,
        reference="k-diffusion sample_euler_ancestral",
    ),
    "heun": SamplerInfo(
        fn=sample_heun,
        nfe=lambda n: 2 * n - 1,
        order=2,
        stochastic=False,
        reference="Karras et al. 2022 (EDM), Alg. 2",
    ),
    "dpm_2": SamplerInfo(
        fn=sample_dpm_2,
        nfe=lambda n: 2 * n - 1,
        order=2,
        stochastic=False,
        reference="k-diffusion sample_dpm_2 (DPM-Solver-2, Lu et al. 2022)",
    ),
    "dpm_2_ancestral": SamplerInfo(
        fn=sample_dpm_2_ancestral,
        nfe=lambda n: 2 * n - 1,
        order=2,
        stochastic=True,
        reference="k-diffusion sample_dpm_2_ancestral",
    ),
    # order = observed global order: LMS is 4th-order Adams, but its growing-order warm-up
    # limits it to ~3 on the benchmark; PLMS's fixed (uniform-step) Adams coefficients give
    # 2 on non-uniform sigma grids.
    "lms": SamplerInfo(
        fn=sample_lms,
        nfe=lambda n: n,
        order=3,
        stochastic=False,
        reference="k-diffusion sample_lms (4th-order Adams); diffusers LMSDiscreteScheduler",
    ),
    "ddim": SamplerInfo(
        fn=sample_ddim,
        nfe=lambda n: n,
        order=1,
        stochastic=False,
        reference="Song et al. 2021 (DDIM), eq. 12; diffusers DDIMScheduler",
    ),
    "ddpm": SamplerInfo(
        fn=sample_ddpm,
        nfe=lambda n: n,
        order=1,
        stochastic=True,
        reference="Ho et al. 2020 (DDPM), Alg. 2; diffusers DDPMScheduler",
    ),
    "plms": SamplerInfo(
        fn=sample_plms,
        nfe=lambda n: n + 1,
        order=2,
        stochastic=False,
        reference="Liu et al. 2022 (PNDM) PLMS; diffusers PNDMScheduler skip_prk_steps",
    ),
}
