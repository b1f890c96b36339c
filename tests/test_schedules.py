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
