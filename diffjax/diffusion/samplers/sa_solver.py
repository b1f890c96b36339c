"""SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of
Diffusion Models", NeurIPS 2023, arXiv:2309.05019), as ComfyUI's sample_sa_solver and
comfy/k_diffusion/sa_solver.py: a stochastic Adams predictor-corrector in data prediction
and half-log-SNR lambda = -log sigma, whose b coefficients integrate the Lagrange basis
through the last k denoised values against exp((1 + tau^2) lambda) (eqs. 15 and 18; the
integrals in closed form by parts, the basis by a Vandermonde solve).

tau(sigma) = eta inside [tau_sigma_min, tau_sigma_max] and 0 outside (ComfyUI's
get_tau_interval_func); the defaults are ComfyUI's percent_to_sigma(0.2) and (0.8) on SD's
training sigmas. The order each step uses depends on (step, N) only, so every order's
update is computed and one is selected (as unipc_deis.py does); NFE = N (PECE: 2N - 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.diffusion.samplers.base import SamplerInfo, SamplerOptionError, step_noise


def exponential_coeffs(s, t, order: int, tau):
    """ComfyUI compute_exponential_coeffs: (1 + tau^2) int_s^t exp((1 + tau^2) x) x^p dx /
    exp((1 + tau^2) t) for p = 0..order-1, by the integration-by-parts recursion."""
    tau_mul = 1 + tau ** 2
    h = t - s
    p = jnp.arange(order)
    pw = lambda v: jnp.stack([v ** k if k else jnp.ones_like(v) for k in range(order)])  # noqa: E731
    terms = pw(t) - pw(s) * jnp.exp(-tau_mul * h)
    depth = p[:, None] - p[None, :]
    log_fact = jnp.asarray([math.lgamma(k + 1) for k in range(order)], s.dtype)
    coeff = log_fact[:, None] - log_fact[None, :] - depth * jnp.log(tau_mul)
    signs = jnp.where(depth % 2 == 0, 1.0, -1.0)
    mat = jnp.tril(jnp.exp(coeff) * signs)
    return mat @ terms


def stochastic_adams_b(sigma_next, lambdas, lambda_s, lambda_t, tau):
    """ComfyUI compute_stochastic_adams_b_coeffs (general case): b_i = alpha_t * the
    integrals of the Lagrange basis polynomials on `lambdas` (oldest first)."""
    k = lambdas.shape[0]
    integrals = exponential_coeffs(lambda_s, lambda_t, k, tau)
    vander_t = jnp.stack([lambdas ** j if j else jnp.ones_like(lambdas) for j in range(k)])
    return sigma_next * jnp.exp(lambda_t) * jnp.linalg.solve(vander_t, integrals)


def sample_sa_solver(denoise, x, sigmas, key, eta=1.0, s_noise=1.0, predictor_order=3,
                     corrector_order=4, use_pece=False, tau_sigma_max=5.09240759066568,
                     tau_sigma_min=0.5711888666489997):
    """ComfyUI sample_sa_solver (simple_order_2=False): per step, evaluate D at the
    predicted state, correct the state with the order-c corrector (plus the predictor's
    noise), then predict the next state with the order-p predictor and fresh noise of std
    sigma_next sqrt(1 - exp(-2 tau^2 h)); lower orders near the end of a grid ending at 0."""
    if not 1 <= predictor_order <= 6 or not 1 <= corrector_order <= 6:
        raise SamplerOptionError(f"sa_solver orders must be in 1..6, got predictor "
                                 f"{predictor_order}, corrector {corrector_order}")
    n = sigmas.shape[0] - 1
    kmax = max(predictor_order, corrector_order)
    safe = jnp.where(sigmas > 0, sigmas, sigmas[-2] * 0.5)
    lambdas = -jnp.log(safe)
    lower_to_end = sigmas[-1] == 0

    def tau_of(sigma):
        return jnp.where((sigma <= tau_sigma_max) & (sigma >= tau_sigma_min), eta, 0.0) \
            if eta > 0 else jnp.zeros_like(sigma)

    def combine(order, sigma_t, end, lam_s, lam_t, tau, hist):
        """sum_j b_j D_j over the last `order` values (hist[0] newest), order dynamic."""
        out = jnp.zeros_like(hist[0])
        for k in range(1, kmax + 1):
            lams = lambdas[jnp.clip(end - k + 1 + jnp.arange(k), 0, n)]
            b = stochastic_adams_b(sigma_t, lams, lam_s, lam_t, tau)
            res = sum(b[j] * hist[k - 1 - j] for j in range(k))
            out = jnp.where(order == k, res, out)
        return out

    def step(carry, i):
        x, x_pred, hist, tau_t, h, noise = carry
        s, s_next = sigmas[i], sigmas[i + 1]
        d = denoise(x_pred, s)
        hist = jnp.concatenate([d[None], hist[:-1]])
        filled = jnp.minimum(i + 1, kmax)
        p_used = jnp.minimum(predictor_order, filled)
        c_used = jnp.where((i == 0) | ((s_next == 0) & (not use_pece)), 0,
                           jnp.minimum(corrector_order, filled))
        p_used = jnp.where(lower_to_end, jnp.minimum(p_used, n - 1 - i), p_used)
        c_used = jnp.where(lower_to_end, jnp.minimum(c_used, n - i), c_used)
        # corrector
        s_prev = sigmas[jnp.maximum(i - 1, 0)]
        corr = combine(c_used, s, i, lambdas[jnp.maximum(i - 1, 0)], lambdas[i], tau_t, hist)
        x_corr = s / s_prev * jnp.exp(-(tau_t ** 2) * h) * x + corr
        x_corr = x_corr + jnp.where((tau_t > 0) & (s_noise > 0), noise, 0.0)
        x = jnp.where(c_used > 0, x_corr, x_pred)
        if use_pece:
            d2 = denoise(x, s)
            hist = jnp.where(c_used > 0, hist.at[0].set(d2), hist)
            d = jnp.where(c_used > 0, d2, d)
        # predictor
        sn = safe[i + 1]
        tau_n = tau_of(sn)
        h_n = lambdas[i + 1] - lambdas[i]
        pred = combine(jnp.maximum(p_used, 1), sn, i, lambdas[i], lambdas[i + 1], tau_n, hist)
        x_new = sn / s * jnp.exp(-(tau_n ** 2) * h_n) * x + pred
        if eta > 0 and s_noise > 0:
            noise_n = (step_noise(key, i, x) * sn
                       * jnp.sqrt(-jnp.expm1(-2 * tau_n ** 2 * h_n)) * s_noise)
            x_new = x_new + jnp.where(tau_n > 0, noise_n, 0.0)
        else:
            noise_n = jnp.zeros_like(x)
        last = s_next == 0
        return (x, jnp.where(last, d, x_new), hist, jnp.where(last, tau_t, tau_n),
                jnp.where(last, h, h_n), jnp.where(last, noise, noise_n)), None

    z = jnp.zeros_like(x)
    carry = (x, x, jnp.zeros((kmax,) + x.shape, x.dtype), jnp.zeros((), sigmas.dtype),
             jnp.zeros((), sigmas.dtype), z)
    return jax.lax.scan(step, carry, jnp.arange(n))[0][1]


SAMPLERS = {
    "sa_solver": SamplerInfo(
        fn=sample_sa_solver,
        nfe=lambda n: n,
        order=3,
        stochastic=True,
        reference="Xue et al. 2023 (SA-Solver, arXiv:2309.05019); ComfyUI sample_sa_solver "
                  "(comfy/k_diffusion/sa_solver.py)",
    ),
}
