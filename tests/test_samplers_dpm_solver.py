"""DPM-Solver++ family: SDE/ancestral samplers against k-diffusion's algorithms with injected
noise, 2M/3M against diffusers, the 2M SDE against diffusers' sde-dpmsolver++, NFE counts.

k-diffusion references are re-implemented below from k-diffusion's `sampling.py`
(sample_dpmpp_2s_ancestral, sample_dpmpp_sde, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde) as
plain per-step Python/numpy loops in float64, calling the same denoiser eagerly. The noise
is injected: every reference draws OUR noise, `step_noise(key, i, x)` (noise="gaussian";
dpmpp_sde: fold_in(fold_in(key, 0 or 1), i) for its two stages) or, for the SDE samplers'
default noise="brownian", k-diffusion's own call `noise_sampler(sigma, sigma_next)` answered
by our Brownian path (diffusion/brownian.py) queried eagerly at the same sigmas. Whether
that noise is right in distribution is tests/test_sampler_distribution.py's business. Both
sides run under jax x64 in float64, so the tolerance is 1e-10 relative (rounding only;
measured <= 1e-14).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import diffusers
    import torch
except ModuleNotFoundError:
    diffusers = torch = None

import sampler_refs as R
from diffjax.diffusion import samplers, schedules
from diffjax.diffusion.brownian import BrownianNoise
from diffjax.diffusion.gaussian_mixture import make_gaussian_mixture
from diffjax.diffusion.samplers import dpm_solver as DP
from diffjax.diffusion.samplers.base import step_noise

LIN = R.LinearEps(dim=6, seed=0)
X_T = np.random.default_rng(1).normal(size=(1, 6))
KEY_SEED = 3


# ---------------------------------------------------------------- k-diffusion references
def _ancestral(s, sn, eta):
    su = min(sn, eta * np.sqrt(max(sn ** 2 * (s ** 2 - sn ** 2) / s ** 2, 0.0)))
    return np.sqrt(max(sn ** 2 - su ** 2, 0.0)), su


def _noise(key, i, x):
    return np.asarray(step_noise(key, i, jnp.asarray(x)))


@jax.jit
def _brownian_jit(key, x, s, sn):
    return BrownianNoise(key, x)(s, sn)


def _brownian(key, x, s, sn):
    """k-diffusion's noise_sampler(s, sn), answered by our Brownian path."""
    return np.asarray(_brownian_jit(key, jnp.asarray(x), jnp.asarray(s), jnp.asarray(sn)))


def ref_2s_ancestral(den, x, sigmas, key, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        d = den(x, s)
        sd, su = _ancestral(s, sn, eta)
        if sd == 0:
            x = x + (x - d) / s * (sd - s)
        else:
            t, t_next = -np.log(s), -np.log(sd)
            h = t_next - t
            s_mid = np.exp(-(t + 0.5 * h))
            x2 = (s_mid / s) * x - np.expm1(-h * 0.5) * d
            d2 = den(x2, s_mid)
            x = (sd / s) * x - np.expm1(-h) * d2
        if sn > 0:
            x = x + _noise(key, i, x) * s_noise * su
    return x


def ref_sde(den, x, sigmas, key, eta=1.0, s_noise=1.0, r=0.5, noise="brownian"):
    key_a, key_b = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        d = den(x, s)
        if sn == 0:
            x = x + (x - d) / s * (sn - s)
            continue
        t, t_next = -np.log(s), -np.log(sn)
        h = t_next - t
        s_r = np.exp(-(t + h * r))
        fac = 1 / (2 * r)
        sd, su = _ancestral(s, s_r, eta)
        x2 = (sd / s) * x - np.expm1(t + np.log(sd)) * d
        x2 = x2 + (_noise(key_a, i, x) if noise == "gaussian" else
                   _brownian(key, x, s, s_r)) * s_noise * su
        d2 = den(x2, s_r)
        sd, su = _ancestral(s, sn, eta)
        dd = (1 - fac) * d + fac * d2
        x_new = (sd / s) * x - np.expm1(t + np.log(sd)) * dd
        x = x_new + (_noise(key_b, i, x) if noise == "gaussian" else
                     _brownian(key, x, s, sn)) * s_noise * su
    return x


def ref_2m_sde(den, x, sigmas, key, eta=1.0, s_noise=1.0, solver_type="midpoint",
               noise="brownian"):
    old, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        d = den(x, s)
        if sn == 0:
            x = d
        else:
            h = np.log(s) - np.log(sn)
            eta_h = eta * h
            x_new = sn / s * np.exp(-eta_h) * x - np.expm1(-h - eta_h) * d
            if old is not None:
                r = h_last / h
                if solver_type == "heun":
                    x_new = x_new + (-np.expm1(-h - eta_h) / (-h - eta_h) + 1) / r * (d - old)
                else:
                    x_new = x_new + 0.5 * -np.expm1(-h - eta_h) / r * (d - old)
            if eta:
                z = _noise(key, i, x) if noise == "gaussian" else _brownian(key, x, s, sn)
                x_new = x_new + z * sn * np.sqrt(-np.expm1(-2 * eta_h)) * s_noise
            x = x_new
        old, h_last = d, h
    return x


def ref_3m_sde(den, x, sigmas, key, eta=1.0, s_noise=1.0, noise="brownian"):
    d_1 = d_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        d = den(x, s)
        if sn == 0:
            x = d
        else:
            h = np.log(s) - np.log(sn)
            h_eta = h * (eta + 1)
            x_new = np.exp(-h_eta) * x - np.expm1(-h_eta) * d
            phi_2 = np.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (d - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x_new = x_new + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x_new = x_new + phi_2 * (d - d_1) / (h_1 / h)
            if eta:
                z = _noise(key, i, x) if noise == "gaussian" else _brownian(key, x, s, sn)
                x_new = x_new + z * sn * np.sqrt(-np.expm1(-2 * h * eta)) * s_noise
            x = x_new
        d_1, d_2 = d, d_1
        h_1, h_2 = h, h_1
    return x


CASES = [
    ("dpmpp_2s_ancestral", ref_2s_ancestral, {}),
    ("dpmpp_2s_ancestral", ref_2s_ancestral, dict(eta=0.6, s_noise=0.9)),
    ("dpmpp_sde", ref_sde, {}),
    ("dpmpp_sde", ref_sde, dict(eta=0.5, r=0.4, noise="gaussian")),
    ("dpmpp_2m_sde", ref_2m_sde, {}),
    ("dpmpp_2m_sde", ref_2m_sde, dict(solver_type="heun", eta=0.7, noise="gaussian")),
    ("dpmpp_2m_sde", ref_2m_sde, dict(eta=0.0)),
    ("dpmpp_3m_sde", ref_3m_sde, {}),
    ("dpmpp_3m_sde", ref_3m_sde, dict(eta=0.5, s_noise=1.1, noise="gaussian")),
]


@pytest.mark.parametrize("model", ["linear", "gm"])
@pytest.mark.parametrize("name,ref,options", CASES)
def test_matches_kdiffusion_algorithm(name, ref, options, model):
    """Karras grid (k-diffusion's default use), 8 steps ending at 0, float64 both sides."""
    with jax.enable_x64(True):
        if model == "linear":
            den = LIN.denoiser()
        else:
            den = make_gaussian_mixture(shape=(1, 6), n_components=3, seed=0).denoise
        sigmas = schedules.karras_sigmas(8, 0.03, 14.6).astype(np.float64)
        key = jax.random.key(KEY_SEED)
        x0 = X_T * sigmas[0]
        want = ref(lambda x, s: np.asarray(den(jnp.asarray(x), jnp.asarray(s))), x0, sigmas,
                   key, **options)
        got = jax.jit(lambda x, s: DP.SAMPLERS[name].fn(den, x, s, key, **options))(
            jnp.asarray(x0), jnp.asarray(sigmas))
        assert got.dtype == jnp.float64
        assert R.rel_err(got, want) <= 1e-10


# ---------------------------------------------------------------- diffusers parity
@pytest.mark.parity
@pytest.mark.parametrize("order,name", [(2, "dpmpp_2m"), (3, "dpmpp_3m")])
def test_multistep_matches_diffusers(order, name):
    """DPMSolverMultistepScheduler(dpmsolver++, SD config), final sigma 0, 15 steps,
    latents after 3, 8 and 15 steps. Ours float32 vs torch float64: 1e-5 relative (measured <= 1e-6)."""
    sched = diffusers.DPMSolverMultistepScheduler(**R.SD_CONFIG, solver_order=order,
                                                  algorithm_type="dpmsolver++")
    _, traj = R.run_diffusers(sched, 15, X_T, LIN.torch, trajectory=True)
    sigmas = R.grid_from(sched)
    fn = DP.SAMPLERS[name].fn
    x0 = jnp.asarray(R.vp_to_ve(X_T, sigmas[0]), jnp.float32)
    # Intermediate latents: our sampler on the first k+1 sigmas equals diffusers' k-th
    # latent (its lower-order final steps only apply at the last step / below 15 steps).
    for k in (3, 8, 15):
        got = jax.jit(lambda x, s: fn(LIN.denoiser(), x, s, None))(
            x0, jnp.asarray(sigmas[:k + 1], jnp.float32))
        err = R.rel_err(R.ve_to_vp(np.asarray(got), sigmas[k]), traj[k - 1])
        assert err <= 1e-5, (k, err)


@pytest.mark.parity
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_2m_sde_matches_diffusers_with_injected_noise(solver_type):
    """diffusers' sde-dpmsolver++ 2M is k-diffusion's 2M SDE at eta = 1; its noise term
    sigma_vp,t * z becomes sigma_t * z in VE form, so our step noise is injected as is
    (through `variance_noise`; diffusers draws independent normals per step, our
    noise="gaussian"). 12 steps, final sigma 0, float32 vs float64: 1e-5."""
    sched = diffusers.DPMSolverMultistepScheduler(**R.SD_CONFIG, solver_order=2,
                                                  algorithm_type="sde-dpmsolver++",
                                                  solver_type=solver_type)
    sched.set_timesteps(12)
    sigmas = R.grid_from(sched)
    key = jax.random.key(KEY_SEED)
    x = torch.tensor(X_T)
    for i, t in enumerate(sched.timesteps):
        z = torch.tensor(np.asarray(step_noise(key, i, jnp.zeros((1, 6), jnp.float32)),
                                    np.float64))
        x = sched.step(LIN.torch(x, t.double()), t, x, variance_noise=z).prev_sample
    got = jax.jit(lambda x, s: DP.sample_dpmpp_2m_sde(LIN.denoiser(), x, s, key,
                                                      solver_type=solver_type,
                                                      noise="gaussian"))(
        jnp.asarray(R.vp_to_ve(X_T, sigmas[0]), jnp.float32), jnp.asarray(sigmas, jnp.float32))
    assert R.rel_err(np.asarray(got), x.numpy()) <= 1e-5


# ---------------------------------------------------------------- NFE and options
@pytest.mark.parametrize("name", sorted(DP.SAMPLERS))
def test_nfe_matches_catalogue(name):
    calls = []
    den = LIN.denoiser()

    def counting(x, s):
        jax.debug.callback(lambda: calls.append(1))
        return den(x, s)
    steps = 6
    sigmas = jnp.asarray(schedules.karras_sigmas(steps, 0.03, 14.6), jnp.float32)
    out = jax.jit(lambda x: DP.SAMPLERS[name].fn(counting, x, sigmas, jax.random.key(1)))(
        jnp.ones(6) * 14.6)
    jax.block_until_ready(out)
    assert np.all(np.isfinite(np.asarray(out)))
    assert len(calls) == DP.SAMPLERS[name].nfe(steps)


def test_bad_solver_type_is_named():
    with pytest.raises(ValueError, match="solver_type must be 'midpoint' or 'heun', got 'rk4'"):
        DP.sample_dpmpp_2m_sde(LIN.denoiser(), jnp.ones(6), jnp.asarray([10.0, 1.0, 0.0]),
                               jax.random.key(0), solver_type="rk4")


# ---------------------------------------------------------------- singlestep
SINGLESTEP_CONFIG = {k: v for k, v in R.SD_CONFIG.items() if k != "steps_offset"}  # no such arg


@pytest.mark.parity
@pytest.mark.parametrize("order,solver_type,steps,final,lower_order_final", [
    (2, "midpoint", 12, "zero", True), (2, "heun", 13, "zero", True),
    (3, "midpoint", 13, "zero", True), (3, "heun", 12, "zero", True),
    (3, "heun", 12, "sigma_min", False), (2, "midpoint", 12, "sigma_min", True)])
def test_singlestep_matches_diffusers(order, solver_type, steps, final, lower_order_final):
    """DPMSolverSinglestepScheduler(dpmsolver++): even/odd N exercise its order lists (groups
    1,2(,3) and the lower-order tails); float32 vs float64: 1e-5 (measured <= 1.1e-6)."""
    sched = diffusers.DPMSolverSinglestepScheduler(
        **SINGLESTEP_CONFIG, solver_order=order, solver_type=solver_type,
        final_sigmas_type=final, lower_order_final=lower_order_final)
    want = R.run_diffusers(sched, steps, X_T, LIN.torch)
    sigmas = R.grid_from(sched, final)
    got = jax.jit(lambda x, s: DP.sample_dpm_solver_singlestep(
        LIN.denoiser(), x, s, None, order=order, solver_type=solver_type,
        lower_order_final=lower_order_final))(
        jnp.asarray(R.vp_to_ve(X_T, sigmas[0]), jnp.float32), jnp.asarray(sigmas, jnp.float32))
    assert R.rel_err(R.ve_to_vp(np.asarray(got), sigmas[-1]), want) <= 1e-5


@pytest.mark.parametrize("name,options,order", [
    ("dpm_solver_singlestep", dict(order=2, lower_order_final=False), 2),
    ("dpm_solver_singlestep", dict(order=3, lower_order_final=False), 3),
    ("dpmpp_2m", {}, 2),
    ("dpmpp_3m", {}, 3),
])
def test_order_of_convergence(name, options, order):
    """Gaussian mixture, exponential grid on [0.05, 10] ending at sigma_min, float64, step
    counts divisible by 2 and 3 (whole singlestep groups); reference: UniPC-3 with 2048
    steps (3.5e-8 from DPM++(3M) at 4096 steps; fitted errors >= 2e-4). Measured slopes:
    singlestep 1.94 / 2.87 (midpoint), 2M ~1.9, 3M ~2.9."""
    steps = [24, 36, 48, 72]
    fn = samplers.SAMPLERS[name].fn
    with jax.enable_x64(True):
        gm = make_gaussian_mixture(shape=(8,), n_components=3, seed=3, spread=1.0, std=0.5)
        x0 = jnp.asarray(np.random.default_rng(2).normal(size=8) * 10.0, jnp.float64)

        def grid(n):
            return jnp.asarray(schedules.exponential_sigmas(n, 0.05, 10.0)[:-1], jnp.float64)
        from diffjax.diffusion.samplers.unipc_deis import sample_unipc
        ref = jax.jit(lambda x: sample_unipc(gm.denoise, x, grid(2048), None, order=3,
                                             lower_order_final=False))(x0)
        errs = [float(jnp.max(jnp.abs(jax.jit(
            lambda x, g=grid(n): fn(gm.denoise, x, g, None, **options))(x0) - ref)))
            for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - order) <= 0.3, (slope, errs)
    if not options:
        assert samplers.SAMPLERS[name].order == order        # the catalogue says so
    assert DP.SAMPLERS["dpm_solver_singlestep"].order == 2   # default order 2


def test_singlestep_bad_order_is_named():
    with pytest.raises(ValueError, match="dpm_solver_singlestep order must be one of"):
        DP.sample_dpm_solver_singlestep(LIN.denoiser(), jnp.ones(6),
                                        jnp.asarray([10.0, 1.0, 0.0]), None, order=4)
