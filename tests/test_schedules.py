"""schedules.py against diffusers' schedulers: betas, alphas_cumprod, zero-terminal-SNR,
timestep spacings, Karras/exponential grids, sigma <-> t, dtypes and named errors.

diffusers builds betas and alphas_cumprod in float32 torch; we build them in float64, so
comparisons of derived quantities allow float32 rounding (stated per assertion). Pure
integer things (timesteps) must be equal.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import diffusers
    import torch
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as hf_rescale
except ModuleNotFoundError:
    diffusers = torch = hf_rescale = None

import sampler_refs as R
from diffjax.diffusion import schedules

T = 1000


@pytest.mark.parity
@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_and_alphas_cumprod_match_diffusers(name):
    sched = diffusers.DDPMScheduler(beta_schedule=name, beta_start=0.00085, beta_end=0.012)
    ours = schedules.betas_for(name, T, 0.00085, 0.012)
    # 1e-6: diffusers' betas are float32 (eps 6e-8; linspace endpoints rounded).
    np.testing.assert_allclose(ours, sched.betas.numpy(), rtol=1e-6)
    abar = schedules.alphas_cumprod_for(name, T, 0.00085, 0.012)
    # 2e-5: a float32 cumprod of 1000 factors drifts by up to ~1000 * 6e-8 relative.
    np.testing.assert_allclose(abar, sched.alphas_cumprod.numpy(), rtol=2e-5)


@pytest.mark.parity
def test_zero_terminal_snr_matches_diffusers():
    betas = schedules.betas_for("scaled_linear")
    want = hf_rescale(torch.tensor(betas, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(schedules.rescale_zero_terminal_snr(betas), want, rtol=1e-12,
                               atol=1e-15)   # same float64 arithmetic
    abar = schedules.alphas_cumprod_for(zero_terminal_snr=True)
    assert abar[-1] == 0.0 and np.all(np.diff(abar) < 0)
    sig = schedules.sigmas_from_alphas_cumprod(abar)
    assert sig[-1] == 4096.0 and np.all(np.isfinite(sig))   # diffusers' 2**-24 clamp
    # Euler with zero-SNR + trailing starts at sigma 4096, as ours does.
    euler = diffusers.EulerDiscreteScheduler(**R.SD_CONFIG, rescale_betas_zero_snr=True,
                                             timestep_spacing="trailing")
    euler.set_timesteps(10)
    grid = np.asarray(schedules.make_sigmas("trailing", 10, sig))
    np.testing.assert_allclose(grid, euler.sigmas.numpy(), rtol=2e-5)


@pytest.mark.parity
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 20, 50, 999])
def test_timestep_spacings_equal_diffusers(spacing, steps):
    sched = diffusers.DDIMScheduler(**R.SD_CONFIG, timestep_spacing=spacing,
                                    set_alpha_to_one=False)
    sched.set_timesteps(steps)
    np.testing.assert_array_equal(schedules.timesteps_for(spacing, steps, T, 1),
                                  sched.timesteps.numpy())


def test_discrete_grids_and_finals():
    sig = R.TRAIN_SIGMAS
    lead = np.asarray(schedules.make_sigmas("leading", 20, sig))
    ts = schedules.timesteps_for("leading", 20)
    np.testing.assert_allclose(lead[:-1], sig[ts].astype(np.float32))
    assert lead[-1] == 0.0 and lead.shape == (21,)
    end = np.asarray(schedules.make_sigmas("leading", 20, sig, final="sigma_min"))
    np.testing.assert_allclose(end[-1], np.float32(sig[0]))         # sigma(t=0) > 0
    np.testing.assert_array_equal(end[:-1], lead[:-1])
    for name in ("karras", "exponential", "polyexponential", "vp", "uniform"):
        g = np.asarray(schedules.make_sigmas(name, 9, sig, final="sigma_min"))
        assert g.shape == (10,) and g[-1] > 0 and np.all(np.diff(g) < 0), name


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["karras", "exponential"])
def test_continuous_grids_match_diffusers(kind):
    sched = diffusers.EulerDiscreteScheduler(**R.SD_CONFIG, timestep_spacing="leading",
                                             **{f"use_{kind}_sigmas": True})
    sched.set_timesteps(15)
    # diffusers takes sigma_min/max from its 15-step leading grid, not the training range.
    base = np.asarray(schedules.make_sigmas("leading", 15, R.TRAIN_SIGMAS))
    got = np.asarray(schedules.make_sigmas(kind, 15, R.TRAIN_SIGMAS, sigma_min=float(base[-2]),
                                           sigma_max=float(base[0])))
    # 2e-5: diffusers' float32 alphas_cumprod (see above) moves its endpoints by ~3e-6.
    np.testing.assert_allclose(got, sched.sigmas.numpy(), rtol=2e-5)


def test_closed_forms_of_other_grids():
    """Endpoints from the formulas (Karras et al. 2022 eq. 5; Song et al. VP SDE; k-diffusion
    polyexponential with rho=1 equals exponential)."""
    k = schedules.karras_sigmas(5, 0.1, 10.0, rho=7.0)
    np.testing.assert_allclose(k[[0, 4, 5]], [10.0, 0.1, 0.0], rtol=1e-12)
    mid = ((10.0 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7
    np.testing.assert_allclose(k[2], mid, rtol=1e-12)
    np.testing.assert_allclose(schedules.polyexponential_sigmas(6, 0.1, 10.0),
                               schedules.exponential_sigmas(6, 0.1, 10.0), rtol=1e-12)
    vp = schedules.vp_sigmas(4)
    np.testing.assert_allclose(vp[0], np.sqrt(np.exp(19.9 / 2 + 0.1) - 1), rtol=1e-12)
    np.testing.assert_allclose(vp[3], np.sqrt(np.exp(19.9 * 1e-6 / 2 + 0.1 * 1e-3) - 1),
                               rtol=1e-9)
    u = schedules.uniform_t_sigmas(3, R.TRAIN_SIGMAS)
    np.testing.assert_allclose(u[[0, 2]], R.TRAIN_SIGMAS[[999, 0]], rtol=1e-12)
    np.testing.assert_allclose(u[1], np.exp((np.log(R.TRAIN_SIGMAS[499]) * 0.5
                                             + np.log(R.TRAIN_SIGMAS[500]) * 0.5)), rtol=1e-9)


@pytest.mark.parity
def test_sigma_to_t_and_back():
    sig = R.TRAIN_SIGMAS
    with jax.enable_x64(True):
        t = np.asarray(schedules.sigma_to_t(jnp.asarray(sig), sig))
        np.testing.assert_allclose(t, np.arange(T), atol=1e-9)         # exact at the grid
        s = np.exp(np.random.default_rng(0).uniform(np.log(sig[0]), np.log(sig[-1]), 50))
        hf = diffusers.EulerDiscreteScheduler(**R.SD_CONFIG)
        want = hf._sigma_to_t(s, np.log(sig))
        got = np.asarray(schedules.sigma_to_t(jnp.asarray(s), sig))
        np.testing.assert_allclose(got, want, rtol=1e-9)                 # float64 both
        back = np.asarray(schedules.t_to_sigma(jnp.asarray(got), sig))
        np.testing.assert_allclose(back, s, rtol=1e-9)
    # float32 default: exact at the grid to float32 rounding of log-sigma (t within 2e-3).
    t32 = schedules.sigma_to_t(jnp.asarray(sig, jnp.float32), sig)
    assert t32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(t32), np.arange(T), atol=2e-3)


def test_dtypes():
    g = schedules.make_sigmas("karras", 4, R.TRAIN_SIGMAS)
    assert g.dtype == jnp.float32
    with jax.enable_x64(True):
        assert schedules.make_sigmas("karras", 4, R.TRAIN_SIGMAS).dtype == jnp.float64


def test_named_errors():
    sig = R.TRAIN_SIGMAS
    with pytest.raises(ValueError, match="unknown schedule 'karas'; valid: karras"):
        schedules.make_sigmas("karas", 5, sig)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        schedules.make_sigmas("karras", 0, sig)
    with pytest.raises(ValueError, match="final must be one of"):
        schedules.make_sigmas("karras", 5, sig, final="one")
    with pytest.raises(ValueError, match="schedule 'leading' got unexpected options \\['rho'\\]"):
        schedules.make_sigmas("leading", 5, sig, rho=3.0)
    with pytest.raises(ValueError, match="train_sigmas must be a 1-D increasing array"):
        schedules.make_sigmas("karras", 5, sig[::-1])
    with pytest.raises(ValueError, match="schedule 'linspace' with 5 steps and final='sigma_min' "
                       "is not strictly decreasing"):
        schedules.make_sigmas("linspace", 5, sig, final="sigma_min")
    with pytest.raises(ValueError, match="beta_schedule 'cosine' is not one of"):
        schedules.betas_for("cosine")
    with pytest.raises(ValueError, match="timestep spacing 'even' is not one of"):
        schedules.timesteps_for("even", 5)


def test_interp_loop_free_equals_jnp_interp():
    """The sampler's sigma -> t interpolation (no searchsorted loop: jaxlib 0.11.2's GPU
    compiler failed on it inside a scan) is jnp.interp, inside, at the knots and clamped
    outside; 1e-6 relative: the same two-point formula, float32 rounding."""
    import jax.numpy as jnp

    from diffjax.diffusion.schedules import interp_loop_free
    rng = np.random.default_rng(0)
    xp = jnp.asarray(np.sort(rng.normal(size=200)), jnp.float32)
    fp = jnp.asarray(rng.normal(size=200), jnp.float32)
    x = jnp.concatenate([jnp.asarray(rng.normal(size=300) * 2, jnp.float32), xp[:5],
                         jnp.asarray([-50.0, 50.0], jnp.float32)]).reshape(-1, 1, 1)
    got, want = interp_loop_free(x, xp, fp), jnp.interp(x, xp, fp)
    assert got.shape == want.shape == x.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------
# ComfyUI's schedulers and Align Your Steps, against their reference code re-run in float64
# (ComfyUI cannot be installed here; each reference below is ComfyUI's comfy/samplers.py
# function transcribed line for line with python floats, or NVIDIA's / ComfyUI's numpy
# code). Tolerance 1e-6 relative (the issue's); measured <= 1e-12: both sides are float64.
# ----------------------------------------------------------------------------------------
def _comfy_sigma(t, log_sigmas):
    """ComfyUI ModelSamplingDiscrete.sigma: floor/ceil/frac log-sigma interpolation."""
    t = min(max(float(t), 0.0), len(log_sigmas) - 1)
    lo, hi = int(np.floor(t)), int(np.ceil(t))
    w = t - np.floor(t)
    return float(np.exp((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]))


def _comfy_timestep(sigma, log_sigmas):
    """ComfyUI ModelSamplingDiscrete.timestep: the nearest training log-sigma's index."""
    return int(np.argmin(np.abs(np.log(sigma) - log_sigmas)))


def _ref_simple(s, steps):
    sigs, ss = [], len(s) / steps
    for x in range(steps):
        sigs += [float(s[-(1 + int(x * ss))])]
    return sigs + [0.0]


def _ref_ddim_uniform(s, steps):
    x, sigs = 1, [0.0]
    ss = max(len(s) // steps, 1)
    while x < len(s):
        sigs += [float(s[x])]
        x += ss
    return sigs[::-1]


def _ref_normal(s, steps, sgm=False):
    ls = np.log(s)
    start, end = _comfy_timestep(s[-1], ls), _comfy_timestep(s[0], ls)
    ts = np.linspace(start, end, steps + 1)[:-1] if sgm else np.linspace(start, end, steps)
    return [_comfy_sigma(t, ls) for t in ts] + [0.0]


def _ref_beta(s, steps, alpha=0.6, beta=0.6):
    import scipy.stats
    total = len(s) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta) * total)
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs += [float(s[int(t)])]
        last = t
    return sigs + [0.0]


def _ref_linear_quadratic(s, steps, threshold_noise=0.025, linear_steps=None):
    if steps == 1:
        sched = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        lin = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        quad_steps = steps - linear_steps
        qc = diff / (linear_steps * quad_steps ** 2)
        lc = threshold_noise / linear_steps - 2 * diff / (quad_steps ** 2)
        const = qc * (linear_steps ** 2)
        quad = [qc * (i ** 2) + lc * i + const for i in range(linear_steps, steps)]
        sched = [1.0 - x for x in lin + quad + [1.0]]
    return [x * float(s[-1]) for x in sched]


def _ref_kl_optimal(s, n):
    adj = np.arange(n, dtype=np.float64) / (n - 1)
    return list(np.tan(adj * np.arctan(s[0]) + (1 - adj) * np.arctan(s[-1]))) + [0.0]


def _ref_ays(levels, steps):
    sigmas = list(levels)
    if steps + 1 != len(sigmas):
        xs = np.linspace(0, 1, len(sigmas))
        ys = np.log(sigmas[::-1])
        sigmas = np.exp(np.interp(np.linspace(0, 1, steps + 1), xs, ys))[::-1].copy()
    sigmas[-1] = 0
    return list(sigmas)


COMFY_CASES = [
    ("simple", _ref_simple), ("ddim_uniform", _ref_ddim_uniform), ("normal", _ref_normal),
    ("sgm_uniform", lambda s, n: _ref_normal(s, n, sgm=True)), ("beta", _ref_beta),
    ("linear_quadratic", _ref_linear_quadratic), ("kl_optimal", _ref_kl_optimal),
    ("ays_sd15", lambda s, n: _ref_ays(schedules.AYS_NOISE_LEVELS["sd15"], n)),
    ("ays_sdxl", lambda s, n: _ref_ays(schedules.AYS_NOISE_LEVELS["sdxl"], n)),
]


@pytest.mark.parametrize("name, ref", COMFY_CASES, ids=[c[0] for c in COMFY_CASES])
def test_comfy_and_ays_schedules_equal_their_reference_code(name, ref):
    """SD's training sigmas and the zero-terminal-SNR ones (a 4096 top sigma), steps 2..50
    including non-divisors of 1000 (where ddim_uniform gains a step and beta drops repeats)."""
    for sig in (R.TRAIN_SIGMAS,
                schedules.sigmas_from_alphas_cumprod(schedules.alphas_cumprod_for(
                    zero_terminal_snr=True))):
        for steps in (2, 5, 7, 10, 13, 20, 33, 50):
            with jax.enable_x64(True):
                got = np.asarray(schedules.make_sigmas(name, steps, sig))
            want = np.asarray(ref(np.asarray(sig, np.float64), steps), np.float64)
            assert got.shape == want.shape, (name, steps, got.shape, want.shape)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg=f"{name} {steps}")
            assert got[-1] == 0.0 and np.all(np.diff(got) < 0)


def test_comfy_step_counts_are_comfy_s():
    """ddim_uniform at N = 7 visits t = 1, 143, ..., 995: 8 steps; beta merges equal rounded
    timesteps at large N (199 steps for N = 200; ComfyUI's behaviour, kept)."""
    assert len(schedules.make_sigmas("ddim_uniform", 7, R.TRAIN_SIGMAS)) == 9
    assert len(schedules.make_sigmas("beta", 200, R.TRAIN_SIGMAS)) == 200


def test_beta_quantile_without_scipy_equals_scipy():
    """beta_ppf (bisection on a continued-fraction incomplete beta) against scipy's
    beta.ppf: 1e-12 absolute (measured 7e-15), the edges included."""
    import scipy.stats
    q = np.concatenate([[0.0, 1e-12, 1e-6], np.linspace(0, 1, 21)[1:-1], [1 - 1e-6, 1.0]])
    for a, b in [(0.6, 0.6), (0.5, 2.0), (3.0, 0.7), (1.0, 1.0)]:
        np.testing.assert_allclose(schedules.beta_ppf(q, a, b), scipy.stats.beta.ppf(q, a, b),
                                   rtol=0, atol=1e-12)


def test_ays_levels_are_nvidias_published_ones():
    """ComfyUI's 10-step levels are SD's training sigmas at NVIDIA's published AYS timesteps
    (SD 1.5: 999 850 736 645 545 455 343 233 124 24 0; SDXL: 999 845 730 587 443 310 193
    116 53 13 0): 1e-8 relative (the table's 10 decimals; measured 1.7e-9). 10 steps use
    the table as is."""
    published = {"sd15": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0],
                 "sdxl": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0]}
    for model, ts in published.items():
        np.testing.assert_allclose(schedules.AYS_NOISE_LEVELS[model], R.TRAIN_SIGMAS[ts],
                                   rtol=1e-8)
        g = schedules.ays_sigmas(10, model)
        np.testing.assert_array_equal(g[:10], schedules.AYS_NOISE_LEVELS[model][:10])


def test_comfy_schedule_errors_are_named():
    with pytest.raises(ValueError, match="schedule 'simple' ends at sigma = 0 only"):
        schedules.make_sigmas("simple", 5, R.TRAIN_SIGMAS, final="sigma_min")
    with pytest.raises(ValueError, match="schedule 'beta' got unexpected options \\['rho'\\]"):
        schedules.make_sigmas("beta", 5, R.TRAIN_SIGMAS, rho=3.0)
    with pytest.raises(ValueError, match="ays model 'sd3' is not one of sd15, sdxl"):
        schedules.ays_sigmas(5, "sd3")
    g = np.asarray(schedules.make_sigmas("kl_optimal", 6, R.TRAIN_SIGMAS, final="sigma_min"))
    np.testing.assert_allclose(g[-1], R.TRAIN_SIGMAS[0], rtol=1e-6)
