"""Multistep exponential-integrator samplers: UniPC (bh1/bh2), DEIS (log-rho), iPNDM.

All run on the VE sigma grid (x_ve = x_vp / sqrt(abar), lambda = -log sigma) and reproduce
diffusers' schedulers step for step: UniPCMultistepScheduler(predict_x0=True) and
DEISMultistepScheduler(algorithm_type="deis"); iPNDM is ComfyUI's `sample_ipndm`
(comfy/k_diffusion/sampling.py, from zju-pi/diff-sampler; k-diffusion itself has none).
The order each step uses is a static function of (step, N) as in diffusers (warm-up from
first order; lower order on the last steps), so it is precomputed in numpy and fed to the
single `lax.scan`; every candidate order's update is computed and one is selected.
A final sigma of 0 is handled by the formulas' limits (the update becomes the denoised
value for UniPC, and the integral terms vanish at rho = 0 for DEIS).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.samplers.base import SamplerInfo, SamplerOptionError, to_d


def _check_order(name: str, order: int, valid=(1, 2, 3)) -> None:
    if order not in valid:
        raise SamplerOptionError(f"{name} order must be one of {valid}, got {order!r}")


def _history_sigma(sigmas, i, j):
    """sigma_{i-j}, clamped to the grid (clamped values only feed discarded branches)."""
    return sigmas[jnp.maximum(i - j, 0)]


def _select(order, candidates):
    """candidates[o - 1] for the dynamic integer `order`."""
    out = candidates[0]
    for o, c in enumerate(candidates[1:], start=2):
        out = jnp.where(order == o, c, out)
    return out


# ----------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023, "UniPC"), data prediction, diffusers' B(h) variants
# ----------------------------------------------------------------------------------------
def _unipc_b(hh, order, variant):
    """b_k = k! phi_{k+1}(hh) / B(h) for k = 1..order, and h phi_1, B(h) (diffusers)."""
    h_phi_1 = jnp.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else jnp.expm1(hh)
    b, fact = [], 1
    for i in range(1, order + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return jnp.stack(b), h_phi_1, b_h


def _unipc_update(x, s0, s_t, m0, hist, order, variant, model_t=None):
    """One UniPC predictor (model_t None) or corrector update from (x, s0) to s_t.

    hist: [(sigma_{s_i}, D_{s_i})] for i = 1..order-1, older points before s0.
    Predictor: rhos from R[:-1,:-1] (order 2: 1/2); corrector: from the full R (order 1: 1/2),
    the last rho weighting the new model value model_t - m0."""
    h = jnp.log(s0) - jnp.log(s_t)
    hh = -h
    rks = [(jnp.log(s0) - jnp.log(s_i)) / h for s_i, _ in hist[:order - 1]]
    d1s = [(m_i - m0) / rk for rk, (_, m_i) in zip(rks, hist)]
    rks_all = jnp.stack(rks + [jnp.ones_like(h)])
    b, h_phi_1, b_h = _unipc_b(hh, order, variant)
    r = jnp.stack([rks_all ** (i - 1) for i in range(1, order + 1)])
    base = (s_t / s0) * x - h_phi_1 * m0
    if model_t is None:
        if order == 1:
            return base
        rhos = jnp.full((1,), 0.5, x.dtype) if order == 2 else jnp.linalg.solve(
            r[:-1, :-1], b[:-1])
        res = sum(rhos[k] * d1s[k] for k in range(order - 1))
        return base - b_h * res
    rhos = jnp.full((1,), 0.5, x.dtype) if order == 1 else jnp.linalg.solve(r, b)
    res = sum((rhos[k] * d1s[k] for k in range(order - 1)), jnp.zeros_like(x))
    return base - b_h * (res + rhos[-1] * (model_t - m0))


def unipc_orders(steps: int, order: int, lower_order_final: bool = True) -> np.ndarray:
    """Predictor order per step in diffusers: warm-up min(order, k+1), and with
    lower_order_final also at most N-k (first order on the last step)."""
    k = np.arange(steps)
    o = np.minimum(order, k + 1)
    return np.minimum(o, steps - k) if lower_order_final else o


def sample_unipc(denoise, x, sigmas, key=None, order=2, variant="bh2", use_corrector=True,
                 lower_order_final=True):
    """UniPC-p with the UniC corrector (Zhao et al. 2023, Alg. 1-3) as diffusers'
    UniPCMultistepScheduler(solver_order=order, solver_type=variant, predict_x0=True):
    at step k the new denoised value first corrects the sample the previous predictor made
    (no extra network call), then predicts the next one. NFE = N; the corrector is skipped
    at the start (no previous step) and after the final step (nothing evaluates there).
    lower_order_final=False keeps the full order to the end (the order test's setting; a
    final step to sigma = 0 is first order regardless)."""
    _check_order("unipc", order)
    if variant not in ("bh1", "bh2"):
        raise SamplerOptionError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    n = sigmas.shape[0] - 1
    orders = jnp.asarray(unipc_orders(n, order, lower_order_final))
    prev_orders = jnp.concatenate([orders[:1], orders[:-1]])

    def step(carry, a):
        x, x_last, ds = carry                 # ds[j] = D at sigma_{i-1-j}
        i, s, s_next, p_order, c_order = a
        d = denoise(x, s)
        # corrector of the previous predictor's output (uses its order)
        s_prev = _history_sigma(sigmas, i, 1)
        hist_c = [(_history_sigma(sigmas, i, 1 + j), ds[j]) for j in range(1, order)]
        corrected = _select(c_order, [
            _unipc_update(x_last, s_prev, s, ds[0], hist_c, o, variant, model_t=d)
            for o in range(1, order + 1)])
        if use_corrector:
            x = jnp.where(i > 0, corrected, x)
        # predictor to s_next
        sn = jnp.where(s_next > 0, s_next, s * 0.5)
        hist_p = [(_history_sigma(sigmas, i, j), ds[j - 1]) for j in range(1, order)]
        x_new = _select(p_order, [_unipc_update(x, s, sn, d, hist_p, o, variant)
                                  for o in range(1, order + 1)])
        x_new = jnp.where(s_next > 0, x_new, d)   # order is 1 there: the limit is D
        ds = jnp.concatenate([d[None], ds[:-1]])
        return (x_new, x, ds), None

    ds0 = jnp.zeros((max(order, 1),) + x.shape, x.dtype)
    xs = (jnp.arange(n), sigmas[:-1], sigmas[1:], orders, prev_orders)
    (x, _, _), _ = jax.lax.scan(step, (x, x, ds0), xs)
    return x


def sample_unipc_bh1(denoise, x, sigmas, key=None, order=2, lower_order_final=True):
    """UniPC with B(h) = h (bh1; Zhao et al. recommend it for unconditional sampling)."""
    return sample_unipc(denoise, x, sigmas, key, order=order, variant="bh1",
                        lower_order_final=lower_order_final)


def sample_unipc_bh2(denoise, x, sigmas, key=None, order=2, lower_order_final=True):
    """UniPC with B(h) = e^h - 1 (bh2; diffusers' default, for guided sampling)."""
    return sample_unipc(denoise, x, sigmas, key, order=order, variant="bh2",
                        lower_order_final=lower_order_final)


# ----------------------------------------------------------------------------------------
# DEIS (Zhang & Chen 2023), log-rho multistep in eps, diffusers' closed-form integrals
# ----------------------------------------------------------------------------------------
def _deis_ind2(t, b, c):
    """Integral of the Lagrange basis (log t - log c)/(log b - log c) d t; 0 at t = 0."""
    lt = jnp.log(jnp.where(t > 0, t, 1.0))
    return jnp.where(t > 0, t * (-jnp.log(c) + lt - 1) / (jnp.log(b) - jnp.log(c)), 0.0)


def _deis_ind3(t, b, c, d):
    """Integral of the quadratic Lagrange basis in log t through (b, c, d); 0 at t = 0."""
    lt = jnp.log(jnp.where(t > 0, t, 1.0))
    lc, ld = jnp.log(c), jnp.log(d)
    num = t * (lc * (ld - lt + 1) - ld * lt + ld + lt ** 2 - 2 * lt + 2)
    return jnp.where(t > 0, num / ((jnp.log(b) - lc) * (jnp.log(b) - ld)), 0.0)


def deis_orders(steps: int, order: int, lower_order_final: bool = True) -> np.ndarray:
    """Order per step in diffusers: warm-up min(order, k+1); with lower_order_final and
    below 15 steps the last step is first order and the second-to-last at most second."""
    k = np.arange(steps)
    o = np.minimum(order, k + 1)
    if lower_order_final and steps < 15:
        o = np.where(k == steps - 1, 1, o)
        o = np.where(k == steps - 2, np.minimum(o, 2), o)
    return o


def sample_deis(denoise, x, sigmas, key=None, order=2, lower_order_final=True):
    """DEIS-tAB in the log-rho variable (rho = sigma): the eps-prediction is extrapolated
    by a Lagrange polynomial in log sigma through the last `order` points and integrated
    exactly over [sigma, sigma_next] (diffusers' DEISMultistepScheduler; default order 2 as
    there). Order 1 = DDIM. Order 3's first-order warm-up step caps its global order at 2
    (it is still 3-5x more accurate than order 2 at 32-64 steps)."""
    _check_order("deis", order)
    n = sigmas.shape[0] - 1
    orders = jnp.asarray(deis_orders(n, order, lower_order_final))

    def step(carry, a):
        x, es = carry                           # es[j] = eps at sigma_{i-1-j}
        i, s, s_next, o = a
        e = to_d(x, s, denoise(x, s))
        s1, s2 = _history_sigma(sigmas, i, 1), _history_sigma(sigmas, i, 2)
        first = x + (s_next - s) * e
        c1 = _deis_ind2(s_next, s, s1) - _deis_ind2(s, s, s1)
        c2 = _deis_ind2(s_next, s1, s) - _deis_ind2(s, s1, s)
        second = x + c1 * e + c2 * es[0]
        c1 = _deis_ind3(s_next, s, s1, s2) - _deis_ind3(s, s, s1, s2)
        c2 = _deis_ind3(s_next, s1, s2, s) - _deis_ind3(s, s1, s2, s)
        c3 = _deis_ind3(s_next, s2, s, s1) - _deis_ind3(s, s2, s, s1)
        third = x + c1 * e + c2 * es[0] + c3 * es[1]
        x = _select(o, [first, second, third])
        return (x, jnp.concatenate([e[None], es[:-1]])), None

    es0 = jnp.zeros((2,) + x.shape, x.dtype)
    xs = (jnp.arange(n), sigmas[:-1], sigmas[1:], orders)
    (x, _), _ = jax.lax.scan(step, (x, es0), xs)
    return x


# ----------------------------------------------------------------------------------------
# iPNDM (Zhang & Chen 2023, DEIS paper arXiv:2204.13902, improved PNDM; ComfyUI sample_ipndm)
# ----------------------------------------------------------------------------------------
_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
       4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def sample_ipndm(denoise, x, sigmas, key=None, max_order=4):
    """Adams-Bashforth on dx/dsigma with fixed (equal-step) coefficients of growing order
    1..max_order, as ComfyUI's sample_ipndm (from zju-pi/diff-sampler's solvers.py): the
    step to sigma = 0 returns the denoised value. NFE = N. Observed global order 2: the
    Euler start step and the equal-step weights on a non-uniform grid each cap it there."""
    _check_order("ipndm", max_order, (1, 2, 3, 4))

    def step(carry, a):
        x, ds = carry                           # ds[j] = d at sigma_{i-1-j}
        i, s, s_next = a
        d = to_d(x, s, denoise(x, s))
        hist = [d] + [ds[j] for j in range(max_order - 1)]
        cands = [sum(c * hist[j] for j, c in enumerate(_AB[o])) for o in range(1, max_order + 1)]
        slope = _select(jnp.minimum(i + 1, max_order), cands)
        x_next = jnp.where(s_next > 0, x + (s_next - s) * slope, x - s * d)   # x - s d = D
        return (x_next, jnp.concatenate([d[None], ds[:-1]])), None

    ds0 = jnp.zeros((max(max_order - 1, 1),) + x.shape, x.dtype)
    n = sigmas.shape[0] - 1
    (x, _), _ = jax.lax.scan(step, (x, ds0), (jnp.arange(n), sigmas[:-1], sigmas[1:]))
    return x


def _n(n):
    return n


SAMPLERS = {
    "unipc": SamplerInfo(
        fn=sample_unipc,
        nfe=_n,
        order=3,
        stochastic=False,
        reference="Zhao et al. 2023 (UniPC) predictor-corrector; diffusers "
                  "UniPCMultistepScheduler",
    ),
    "unipc_bh1": SamplerInfo(
        fn=sample_unipc_bh1,
        nfe=_n,
        order=3,
        stochastic=False,
        reference="UniPC with B(h)=h (Zhao et al. 2023)",
    ),
    "unipc_bh2": SamplerInfo(
        fn=sample_unipc_bh2,
        nfe=_n,
        order=3,
        stochastic=False,
        reference="UniPC with B(h)=e^h-1 (Zhao et al. 2023)",
    ),
    "deis": SamplerInfo(
        fn=sample_deis,
        nfe=_n,
        order=2,
        stochastic=False,
        reference="Zhang & Chen 2023 (DEIS) log-rho tAB; diffusers "
                  "DEISMultistepScheduler",
    ),
    "ipndm": SamplerInfo(
        fn=sample_ipndm,
        nfe=_n,
        order=2,
        stochastic=False,
        reference="Zhang & Chen 2023 (DEIS paper, iPNDM); ComfyUI sample_ipndm "
                  "(from zju-pi/diff-sampler)",
    ),
}
