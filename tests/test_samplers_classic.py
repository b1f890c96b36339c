"""Classic samplers (classic.py) against diffusers' schedulers and k-diffusion's algorithms,
their NFE counts and their orders of convergence.

Parity runs: diffusers' scheduler loop in torch float64 on a VP eps-model (sampler_refs);
ours in float32 through `vp_denoiser` on `schedules`' sigma grid for the same timesteps.
Tolerance 1e-5 relative to max|x|: the reference is float64, ours float32 (eps 6e-8) with
a few hundred ops per step over <= 20 steps, so honest rounding stays near 1e-6; any
algorithmic difference (a wrong coefficient, an off-by-one timestep) is >= 1e-3.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
except ModuleNotFoundError:
    torch = None

import sampler_refs as R
from diffjax.diffusion import samplers, schedules
from diffjax.diffusion.gaussian_mixture import make_gaussian_mixture
from diffjax.diffusion.samplers import classic
from diffjax.diffusion.samplers.base import step_noise

# diffusers' KDPM2 set_timesteps trips numpy 2's __array_wrap__ deprecation 4000 times.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")

MODEL = R.LinearEps(dim=6, seed=0)
DENOISE = MODEL.denoiser()
X_T = np.random.default_rng(1).normal(size=6)          # x_T in diffusers' unit-variance space
GM = make_gaussian_mixture(shape=(6,), n_components=3, seed=4, spread=1.0, std=0.4)
GM_EPS = R.gm_eps_torch(GM)
RTOL = 1e-5


def ours(name, sigmas, x_ve, denoise=DENOISE, key=0, **options):
    fn = jax.jit(lambda x, s: samplers.run_sampler(name, denoise, x, s, jax.random.key(key),
                                                   **options))
    return np.asarray(fn(jnp.asarray(x_ve, jnp.float32), jnp.asarray(sigmas, jnp.float32)))


def our_noise(steps, key=0, shape=(6,)):
    """Our step_noise draws for steps 0..steps-1 (float64 torch, for injection)."""
    return [torch.tensor(np.asarray(step_noise(jax.random.key(key), i,
                                               jnp.zeros(shape, jnp.float32)), np.float64))
            for i in range(steps)]


def sd_scheduler(cls, **kw):
    import diffusers
    return getattr(diffusers, cls)(**R.SD_CONFIG, **kw)


# ------------------------------------------------------------------ deterministic, VE space
@pytest.mark.parity
@pytest.mark.parametrize("name,cls,steps,model", [
    ("euler", "EulerDiscreteScheduler", 20, "linear"),
    ("euler", "EulerDiscreteScheduler", 20, "gmm"),
    ("heun", "HeunDiscreteScheduler", 10, "linear"),
    ("heun", "HeunDiscreteScheduler", 10, "gmm"),
    ("lms", "LMSDiscreteScheduler", 20, "linear"),
    ("dpm_2", "KDPM2DiscreteScheduler", 10, "linear"),
    ("dpm_2", "KDPM2DiscreteScheduler", 10, "gmm"),
])
def test_matches_diffusers_ve_schedulers(name, cls, steps, model):
    """Euler/Heun/LMS/KDPM2 schedulers already work in VE space (x = x_vp sqrt(1+sigma^2),
    init_noise_sigma = sqrt(sigma_max^2 + 1) for leading spacing): same x, no mapping.
    The mixture's eps-model maps t -> sigma by the same log-sigma interpolation, so its
    exact D is our denoiser (KDPM2's midpoint t is fractional: this checks the round trip)."""
    eps_fn, denoise = (MODEL.torch, DENOISE) if model == "linear" else (GM_EPS, GM.denoise)
    sched = sd_scheduler(cls, timestep_spacing="leading")
    want = R.run_diffusers(sched, steps, X_T, eps_fn)
    sigmas = schedules.make_sigmas("leading", steps, R.TRAIN_SIGMAS)
    want_sigmas = np.unique(sched.sigmas.numpy())[::-1]           # Heun/KDPM2 repeat sigmas
    # 5e-6: diffusers takes the cumprod of 1000 betas in float32 (drift ~2.5e-6 seen), we
    # in float64; the trajectories below differ by that much at most.
    np.testing.assert_allclose(np.asarray(sigmas), want_sigmas, rtol=5e-6)
    got = ours(name, sigmas, X_T * float(sched.init_noise_sigma), denoise=denoise)
    assert R.rel_err(got, want) <= RTOL


# ------------------------------------------------------------------ deterministic, VP space
@pytest.mark.parity
@pytest.mark.parametrize("name,cls,extra,steps", [
    ("ddim", "DDIMScheduler", dict(clip_sample=False), 20),
    ("plms", "PNDMScheduler", dict(skip_prk_steps=True), 20),
])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_matches_diffusers_vp_schedulers(name, cls, extra, steps, spacing):
    """DDIM/PNDM step x_vp and end at sigma(t=0) > 0 (set_alpha_to_one=False, SD's config):
    we start from x_T * sqrt(1 + sigma_0^2) and map the end back with 1/sqrt(1 + sigma_min^2)."""
    sched = sd_scheduler(cls, set_alpha_to_one=False, timestep_spacing=spacing, **extra)
    want = R.run_diffusers(sched, steps, X_T, MODEL.torch)
    sigmas = schedules.make_sigmas(spacing, steps, R.TRAIN_SIGMAS, final="sigma_min")
    np.testing.assert_allclose(np.asarray(sigmas), R.grid_from(sched, "sigma_min"), rtol=1e-7)
    got = ours(name, sigmas, R.vp_to_ve(X_T, sigmas[0]))
    assert R.rel_err(R.ve_to_vp(got, sigmas[-1]), want) <= RTOL


@pytest.mark.parity
@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_trajectory_matches_every_step(name):
    """Every intermediate latent, not just the last: ours one step at a time from our own
    previous state (single-step samplers only), against diffusers' x after each step."""
    steps = 6
    if name == "ddim":
        sched = sd_scheduler("DDIMScheduler", set_alpha_to_one=False, clip_sample=False,
                             timestep_spacing="leading")
        final, to_vp = "sigma_min", R.ve_to_vp                  # DDIM steps x_vp
    else:
        sched = sd_scheduler("EulerDiscreteScheduler", timestep_spacing="leading")
        final, to_vp = "zero", (lambda x, s: x)                 # Euler steps x_ve already
    _, traj = R.run_diffusers(sched, steps, X_T, MODEL.torch, trajectory=True)
    sigmas = np.asarray(schedules.make_sigmas("leading", steps, R.TRAIN_SIGMAS, final=final))
    x = R.vp_to_ve(X_T, sigmas[0])          # = X_T * init_noise_sigma for Euler (leading)
    for i in range(steps):
        x = ours(name, sigmas[i:i + 2], x)
        assert R.rel_err(to_vp(x, sigmas[i + 1]), traj[i]) <= RTOL, i


# ------------------------------------------------------------------ stochastic, injected noise
@pytest.mark.parity
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_matches_diffusers(eta):
    """diffusers takes `variance_noise`; in VP space the noise is std_vp * z and in ours
    std_vp / sqrt(abar_next) * z with the same z = our step_noise."""
    steps = 10
    sched = sd_scheduler("DDIMScheduler", set_alpha_to_one=False, clip_sample=False,
                         timestep_spacing="leading")
    sched.set_timesteps(steps)
    noise = our_noise(steps)
    x = torch.tensor(X_T)
    for i, t in enumerate(sched.timesteps):
        x = sched.step(MODEL.torch(x, t.double()), t, x, eta=eta,
                       variance_noise=noise[i]).prev_sample
    sigmas = schedules.make_sigmas("leading", steps, R.TRAIN_SIGMAS, final="sigma_min")
    got = ours("ddim", sigmas, R.vp_to_ve(X_T, sigmas[0]), eta=eta)
    assert R.rel_err(R.ve_to_vp(got, sigmas[-1]), x.numpy()) <= RTOL


@pytest.mark.parity
def test_ddpm_matches_diffusers():
    """DDPMScheduler (fixed_small variance, leading + offset, last prev abar = 1) with our
    noise injected through its randn_tensor."""
    steps = 10
    sched = sd_scheduler("DDPMScheduler", clip_sample=False, timestep_spacing="leading")
    x_t = X_T[None]          # diffusers' DDPM step reads shape[1]; ours takes any shape
    with R.injected_noise("scheduling_ddpm", our_noise(steps, shape=x_t.shape)):
        want = R.run_diffusers(sched, steps, x_t, MODEL.torch)
    sigmas = schedules.make_sigmas("leading", steps, R.TRAIN_SIGMAS)   # ends at 0
    got = ours("ddpm", sigmas, R.vp_to_ve(x_t, sigmas[0]))
    assert R.rel_err(got, want) <= RTOL


@pytest.mark.parity
def test_euler_ancestral_matches_diffusers():
    steps = 12
    sched = sd_scheduler("EulerAncestralDiscreteScheduler", timestep_spacing="leading")
    with R.injected_noise("scheduling_euler_ancestral_discrete", our_noise(steps)):
        want = R.run_diffusers(sched, steps, X_T, MODEL.torch)
    sigmas = schedules.make_sigmas("leading", steps, R.TRAIN_SIGMAS)
    got = ours("euler_ancestral", sigmas, X_T * float(sched.init_noise_sigma))
    assert R.rel_err(got, want) <= RTOL


def _kdiffusion_dpm_2_ancestral(den, x, sigmas, noise, eta=1.0):
    """k-diffusion's sample_dpm_2_ancestral, float64 numpy, with given noise. (diffusers'
    KDPM2Ancestral feeds the network the next step's timestep at the midpoint sigma, a
    different algorithm, so k-diffusion's is the reference.)"""
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        d = (x - den(x, s)) / s
        su = min(sn, eta * np.sqrt(sn ** 2 * (s ** 2 - sn ** 2) / s ** 2))
        sd = np.sqrt(sn ** 2 - su ** 2)
        if sd == 0:
            x = x + d * (sd - s)
        else:
            sm = np.exp((np.log(s) + np.log(sd)) / 2)
            x2 = x + d * (sm - s)
            x = x + (x2 - den(x2, sm)) / sm * (sd - s)
        x = x + noise[i] * su
    return x


def _kdiffusion_heun(den, x, sigmas, noise, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al. 2022 Alg. 2 as k-diffusion's sample_heun, float64 numpy."""
    n = len(sigmas) - 1
    for i in range(n):
        s, sn = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (gamma + 1)
        if gamma > 0:
            x = x + noise[i] * s_noise * np.sqrt(s_hat ** 2 - s ** 2)
        d = (x - den(x, s_hat)) / s_hat
        if sn == 0:
            x = x + d * (sn - s_hat)
        else:
            x2 = x + d * (sn - s_hat)
            d2 = (x2 - den(x2, sn)) / sn
            x = x + (d + d2) / 2 * (sn - s_hat)
    return x


def _np_denoise(x, s):
    with jax.enable_x64(True):
        return np.asarray(GM.denoise(jnp.asarray(x, jnp.float64), jnp.asarray(s, jnp.float64)))


@pytest.mark.parity
@pytest.mark.parametrize("name", ["dpm_2_ancestral", "heun_churn"])
def test_stochastic_match_kdiffusion_algorithm(name):
    steps = 10
    sigmas = np.asarray(schedules.karras_sigmas(steps, 0.03, 14.6), np.float64)
    x0 = np.random.default_rng(5).normal(size=6) * sigmas[0]
    noise = [z.numpy() for z in our_noise(steps, key=3)]
    if name == "heun_churn":
        opts = dict(s_churn=4.0, s_tmin=0.1, s_tmax=5.0, s_noise=1.003)
        want = _kdiffusion_heun(_np_denoise, x0, sigmas, noise, **opts)
        got = ours("heun", sigmas, x0, denoise=GM.denoise, key=3, **opts)
    else:
        want = _kdiffusion_dpm_2_ancestral(_np_denoise, x0, sigmas, noise, eta=0.8)
        got = ours("dpm_2_ancestral", sigmas, x0, denoise=GM.denoise, key=3, eta=0.8)
    assert R.rel_err(got, want) <= RTOL


# ------------------------------------------------------------------ NFE
CLASSIC = sorted(classic.SAMPLERS)


@pytest.mark.parametrize("name,options", [(n, {}) for n in CLASSIC]
                         + [("heun", dict(s_churn=2.0)), ("lms", dict(order=2))])
def test_nfe_matches_catalogue(name, options):
    """Calls counted at run time (jax.debug.callback fires once per executed call inside the
    jitted scan and lax.cond branches), for a grid ending at 0 and one ending above 0."""
    for last in (0.0, 0.03):
        calls = []

        def counting(x, s):
            jax.debug.callback(lambda: calls.append(1))
            return GM.denoise(x, s)
        steps = 5
        grid = np.asarray(schedules.karras_sigmas(steps, 0.05, 14.6))
        grid[-1] = last
        out = jax.jit(lambda x: classic.SAMPLERS[name].fn(
            counting, x, jnp.asarray(grid, jnp.float32), jax.random.key(1), **options)
        )(jnp.ones(6) * 14.6)
        jax.block_until_ready(out)
        assert np.all(np.isfinite(np.asarray(out)))
        want = classic.SAMPLERS[name].nfe(steps)
        if last > 0 and name in ("heun", "dpm_2", "dpm_2_ancestral"):
            want += 1                     # the last step is no longer the Euler shortcut
        assert len(calls) == want, (last, len(calls), want)


# ------------------------------------------------------------------ order of convergence
@pytest.fixture(scope="module")
def order_problem():
    """Gaussian mixture with its exact denoiser, float64 throughout (the test is about the
    algorithm, not float32 rounding). Exponential grid on [0.05, 10] that ends at 0.05, not
    0: the step to 0 returns D exactly and would hide the order. Reference: heun with 4096
    steps (global error ~ C h^2 with h = log(200)/4096 = 1.3e-3, i.e. ~1e-6, far below the
    fitted errors >= 1e-4)."""
    gm = make_gaussian_mixture(shape=(8,), n_components=3, seed=3, spread=1.0, std=0.5)
    x0 = np.random.default_rng(2).normal(size=8) * 10.0

    def grid(n):
        return jnp.asarray(schedules.exponential_sigmas(n, 0.05, 10.0)[:-1], jnp.float64)

    with jax.enable_x64(True):
        ref = np.asarray(jax.jit(lambda x: classic.sample_heun(gm.denoise, x, grid(4096)))(
            jnp.asarray(x0, jnp.float64)))
    return gm, x0, grid, ref


@pytest.mark.parametrize("name", sorted(n for n, i in classic.SAMPLERS.items()
                                        if not i.stochastic))
def test_order_of_convergence(order_problem, name):
    gm, x0, grid, ref = order_problem
    info = classic.SAMPLERS[name]
    steps = [16, 24, 32, 48]
    errs = []
    with jax.enable_x64(True):
        run = jax.jit(lambda x, g: info.fn(gm.denoise, x, g, None))
        for n in steps:
            errs.append(float(np.max(np.abs(np.asarray(run(jnp.asarray(x0), grid(n))) - ref))))
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - info.order) <= 0.3, (slope, errs)
