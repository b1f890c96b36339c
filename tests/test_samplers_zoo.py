"""The samplers added for #26 (cfg_pp.py, exponential.py, dpm_adaptive.py, distilled.py,
restart.py): parity with their reference code, observed order, NFE, and the CFG++
unconditional-prediction path.

Parity: k-diffusion 0.0.16's own sampling.py (dpm_fast, dpm_adaptive, dpmpp_2s = 2S
ancestral with eta 0) and diffusers' LCMScheduler / TCDScheduler run in torch float64 with
our per-step noise injected; ComfyUI cannot be installed, so its res_multistep, CFG++ and
ER-SDE are re-run here from its code transcribed to numpy float64 (`_comfy_*`). Our side
runs in float64 too (jax x64) unless stated, so parity tolerances are 1e-9 relative
(measured 1e-16 .. 4e-16: the same float64 arithmetic, reassociated); the diffusers ones are
1e-5 (our float32 side, as the other scheduler parity tests).

Order: a Gaussian with per-dimension stds, whose probability-flow ODE has the closed-form
solution x(sigma) = mu + (x_T - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_T^2)); grids end at
sigma = 0.05 (a final step to 0 returns D exactly and hides the order).
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
from diffjax.diffusion import guidance, samplers, schedules
from diffjax.diffusion.gaussian_mixture import make_gaussian_mixture
from diffjax.diffusion.samplers import (cfg_pp, distilled, dpm_adaptive, exponential,
                                        restart)
from diffjax.diffusion.samplers.base import step_noise

GM = make_gaussian_mixture(shape=(6,), n_components=3, seed=0, spread=1.0, std=0.4)
X_T = np.random.default_rng(1).normal(size=6) * 14.6
RTOL = 1e-9


def _grid(n, final_zero=True, lo=0.03, hi=14.6):
    g = schedules.karras_sigmas(n, lo, hi)
    return g if final_zero else g[:-1]


def _run(fn, denoise, grid, key=None, **options):
    with jax.enable_x64(True):
        out = jax.jit(lambda x: fn(denoise, x, jnp.asarray(grid, jnp.float64), key,
                                   **options))(jnp.asarray(X_T, jnp.float64))
        return np.asarray(out)


def _np_denoise(denoise):
    """A float64 numpy view of a JAX denoiser (jitted in x64), for the transcribed
    references."""
    fn = jax.jit(denoise)

    def d(x, sigma):
        with jax.enable_x64(True):
            return np.asarray(fn(jnp.asarray(x, jnp.float64), jnp.asarray(sigma, jnp.float64)))
    return d


# ---------------------------------------------------------------- k-diffusion's own code
def _kd_model(denoise):
    """A k-diffusion model (batch of 1, torch float64) calling the denoiser jitted in x64."""
    fn = jax.jit(denoise)

    def model(x, sigma, **_):
        with jax.enable_x64(True):
            out = fn(jnp.asarray(x[0].numpy(), jnp.float64),
                     jnp.asarray(float(sigma[0]), jnp.float64))
            return torch.tensor(np.asarray(out))[None]
    return model


@pytest.fixture(scope="module")
def kd():
    """k-diffusion's sampling module, run with float64 as torch's default dtype (its
    dpm_solver_fast builds the t grid with torch.linspace, float32 by default)."""
    import reference_imports
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield reference_imports.k_diffusion_sampling()
    torch.set_default_dtype(previous)


@pytest.mark.parity
def test_dpm_fast_matches_k_diffusion(kd):
    """N = 7 (orders 3, 3, 1) on a grid ending at 0, N = 9 (3, 3, 2, 1) on one ending at
    sigma_min: k-diffusion gets (last nonzero sigma, sigma_max, N) as ComfyUI passes them."""
    for n, final_zero in ((7, True), (9, False)):
        grid = _grid(n if final_zero else n + 1, final_zero)
        lo = grid[-2] if final_zero else grid[-1]
        want = kd.sample_dpm_fast(_kd_model(GM.denoise), torch.tensor(X_T)[None], lo, grid[0],
                                  len(grid) - 1, disable=True)[0].numpy()
        got = _run(dpm_adaptive.sample_dpm_fast, GM.denoise, grid)
        assert R.rel_err(got, want) <= RTOL, (n, R.rel_err(got, want))


@pytest.mark.parity
@pytest.mark.parametrize("options", [{}, dict(order=2, rtol=0.02, atol=0.002)])
def test_dpm_adaptive_matches_k_diffusion_with_its_nfe(kd, options):
    """The adaptive solve and its counters (nfe, steps, accepted, rejected) equal
    k-diffusion's; the step-size controller takes the same decisions, in float64."""
    grid = _grid(10)
    want, info = kd.sample_dpm_adaptive(_kd_model(GM.denoise), torch.tensor(X_T)[None],
                                        grid[-2], grid[0], disable=True, return_info=True,
                                        **options)
    with jax.enable_x64(True):
        got, ours = jax.jit(lambda x: dpm_adaptive.dpm_adaptive_with_info(
            GM.denoise, x, jnp.asarray(grid), None, **options))(jnp.asarray(X_T))
    assert R.rel_err(np.asarray(got), want[0].numpy()) <= RTOL
    assert {k: int(v) for k, v in ours.items()} == {k: info[k] for k in ours}
    assert info["n_reject"] >= 0 and info["nfe"] > 0


@pytest.mark.parity
def test_dpmpp_2s_matches_k_diffusion(kd):
    for final_zero in (True, False):
        grid = _grid(8, final_zero)
        want = kd.sample_dpmpp_2s_ancestral(_kd_model(GM.denoise), torch.tensor(X_T)[None],
                                            torch.tensor(grid), eta=0.0, disable=True)
        got = _run(exponential.sample_dpmpp_2s, GM.denoise, grid)
        assert R.rel_err(got, want[0].numpy()) <= RTOL


# ---------------------------------------------------------------- ComfyUI, transcribed
def _comfy_res_multistep(model, x, sigmas):
    """ComfyUI res_multistep(eta=0, cfg_pp=False), float64 numpy."""
    t_fn = lambda s: -np.log(s)  # noqa: E731
    phi1 = lambda t: np.expm1(t) / t  # noqa: E731
    phi2 = lambda t: (phi1(t) - 1.0) / t  # noqa: E731
    old_sigma_down = old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down = sigmas[i + 1]
        if sigma_down == 0 or old_denoised is None:
            x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
        else:
            t, t_old, t_next, t_prev = (t_fn(sigmas[i]), t_fn(old_sigma_down),
                                        t_fn(sigma_down), t_fn(sigmas[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            b1 = np.nan_to_num(phi1(-h) - phi2(-h) / c2)
            b2 = np.nan_to_num(phi2(-h) / c2)
            x = np.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        old_denoised, old_sigma_down = denoised, sigma_down
    return x


def _comfy_euler_ancestral_cfg_pp(model, x, sigmas, eta, noises):
    """ComfyUI sample_euler_ancestral_cfg_pp (VE: alpha = 1); model -> (guided, uncond)."""
    for i in range(len(sigmas) - 1):
        denoised, uncond = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        d = (x - uncond) / sigmas[i]
        s, sn = sigmas[i], sigmas[i + 1]
        if eta:
            su = min(sn, eta * (sn ** 2 * (s ** 2 - sn ** 2) / s ** 2) ** 0.5)
            sd = (sn ** 2 - su ** 2) ** 0.5
        else:
            sd, su = sn, 0.0
        x = denoised + sd * d
        if eta > 0:
            x = x + noises[i] * su
    return x


def _comfy_dpmpp_2m_cfg_pp(model, x, sigmas):
    t_fn = lambda s: -np.log(s)  # noqa: E731
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised, uncond = model(x, sigmas[i])
        with np.errstate(divide="ignore"):
            t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -np.exp(-h) * uncond
        else:
            r = (t - t_fn(sigmas[i - 1])) / h
            mix = -np.exp(-h) * uncond - np.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + np.exp(-h) * x
        old_uncond = uncond
    return x


def _comfy_er_sde(model, x, sigmas, noises, s_noise=1.0, max_stage=3):
    """ComfyUI sample_er_sde on a VE model (er_lambda = sigma, alpha = 1)."""
    ns = lambda v: v * (np.exp(v ** 0.3) + 10.0)  # noqa: E731
    idx = np.arange(0, 200.0)
    old_denoised = old_denoised_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            ls, lt = sigmas[i], sigmas[i + 1]
            r = ns(lt) / ns(ls)
            x = r * x + (1 - r) * denoised
            if stage >= 2:
                dt = lt - ls
                step = -dt / 200.0
                pos = lt + idx * step
                sp = ns(pos)
                s = np.sum(1 / sp) * step
                dd = (denoised - old_denoised) / (ls - sigmas[i - 1])
                x = x + (dt + s * ns(lt)) * dd
                if stage >= 3:
                    s_u = np.sum((pos - ls) / sp) * step
                    du = (dd - old_denoised_d) / ((ls - sigmas[i - 2]) / 2)
                    x = x + ((dt ** 2) / 2 + s_u * ns(lt)) * du
                old_denoised_d = dd
            x = x + noises[i] * s_noise * np.nan_to_num(np.sqrt(lt ** 2 - ls ** 2 * r ** 2))
        old_denoised = denoised
    return x


def _noises(key, n, like):
    with jax.enable_x64(True):
        return [np.asarray(step_noise(key, i, jnp.asarray(like, jnp.float64))) for i in range(n)]


def _guided_gm(w):
    """The Gaussian mixture guided towards component 0 in x0 space; reports its uncond."""
    mu, s2 = GM.means[0], GM.stds[0] ** 2

    def denoise(x, sigma):
        du = GM.denoise(x, sigma)
        dc = mu + s2 / (s2 + sigma ** 2) * (x - mu)
        guidance.report_uncond(du)
        return du + w * (dc - du)

    @jax.jit
    def both_jax(x, sigma):
        with guidance.capture_uncond() as cap:
            g = denoise(x, sigma)
        return g, cap.x0

    def both(x, sigma):
        with jax.enable_x64(True):
            g, u = both_jax(jnp.asarray(x, jnp.float64), jnp.asarray(sigma, jnp.float64))
            return np.asarray(g), np.asarray(u)
    return denoise, both


@pytest.mark.parametrize("final_zero", [True, False])
def test_res_multistep_matches_comfyui(final_zero):
    grid = _grid(9, final_zero)
    want = _comfy_res_multistep(_np_denoise(GM.denoise), X_T, grid)
    assert R.rel_err(_run(exponential.sample_res_multistep, GM.denoise, grid), want) <= RTOL


def test_cfg_pp_samplers_match_comfyui():
    """Guidance 1.5 towards a component (CFG++'s uncond re-noising differs from plain
    samplers only then); the ancestral one with our noise injected."""
    denoise, both = _guided_gm(1.5)
    key = jax.random.key(3)
    noises = _noises(key, 8, X_T)
    cases = [(cfg_pp.sample_euler_cfg_pp, True,
              lambda g: _comfy_euler_ancestral_cfg_pp(both, X_T, g, 0.0, noises)),
             (cfg_pp.sample_euler_ancestral_cfg_pp, True,
              lambda g: _comfy_euler_ancestral_cfg_pp(both, X_T, g, 1.0, noises)),
             (cfg_pp.sample_dpmpp_2m_cfg_pp, True, lambda g: _comfy_dpmpp_2m_cfg_pp(both, X_T, g)),
             (cfg_pp.sample_dpmpp_2m_cfg_pp, False, lambda g: _comfy_dpmpp_2m_cfg_pp(both, X_T, g))]
    for fn, final_zero, ref in cases:
        grid = _grid(8 if final_zero else 9, final_zero)
        got, want = _run(fn, denoise, grid, key), ref(grid)
        assert R.rel_err(got, want) <= RTOL, (fn.__name__, R.rel_err(got, want))


def test_cfg_pp_without_guidance_is_the_plain_sampler():
    """No uncond reported (no guidance): CFG++ re-noises along the guided direction, i.e.
    the plain sampler, in float64 up to reassociation (1e-10 relative: x ~ 15 at sigma
    14.6 and the two forms of the step cancel differently)."""
    key = jax.random.key(5)
    pairs = [("euler_cfg_pp", "euler"), ("euler_ancestral_cfg_pp", "euler_ancestral"),
             ("dpmpp_2m_cfg_pp", "dpmpp_2m")]
    with jax.enable_x64(True):
        grid = jnp.asarray(_grid(8))
        outs = jax.jit(lambda x: [(samplers.SAMPLERS[a].fn(GM.denoise, x, grid, key),
                                   samplers.SAMPLERS[b].fn(GM.denoise, x, grid, key))
                                  for a, b in pairs])(jnp.asarray(X_T))
    for (pp, _), (a, b) in zip(pairs, outs):
        assert R.rel_err(np.asarray(a), np.asarray(b)) <= 1e-10, pp


def test_uncond_reaches_cfg_pp_through_the_pipeline_denoiser():
    """vp_denoiser(guided_model(network)): denoise_with_uncond gives the guided x0 and the
    x0 of the network run on the uncond context alone; at scale 1 the capture still runs
    the unconditional branch (ComfyUI's disable_cfg1_optimization) while a plain call does
    not (one network row)."""
    from diffjax.diffusion.denoisers import vp_denoiser
    lin = R.LinearEps(dim=6, seed=0)
    rows = []

    def network(x, t, ctx):   # batched eps-model whose output depends on the context
        rows.append(x.shape[0])
        return lin.jax(x, t[:, None]) + ctx

    ctx, unctx = jnp.full((6,), 0.3), jnp.full((6,), -0.2)
    x, sigma = jnp.asarray(X_T[:6] / 3, jnp.float32), jnp.asarray(2.5, jnp.float32)
    for scale in (7.5, 1.0):
        den = vp_denoiser(guidance.guided_model(network, scale), R.TRAIN_SIGMAS)
        rows.clear()
        g, u = jax.jit(lambda x, s: guidance.denoise_with_uncond(
            lambda x, s: den(x, s, ctx, unctx), x, s))(x, sigma)
        assert rows == [2]
        want_u, want_g = jax.jit(lambda x, s: (vp_denoiser(
            lambda x, t, c, uc: network(x[None], t[None], uc[None])[0], R.TRAIN_SIGMAS)(
                x, s, ctx, unctx), den(x, s, ctx, unctx)))(x, sigma)
        np.testing.assert_allclose(np.asarray(u), np.asarray(want_u), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(g), np.asarray(want_g), rtol=1e-6, atol=1e-6)
        rows.clear()
        jax.jit(lambda x, s: den(x, s, ctx, unctx))(x, sigma)
        assert rows == ([2] if scale != 1.0 else [1])


def test_er_sde_matches_comfyui_with_the_same_noise():
    key = jax.random.key(7)
    for final_zero, options in ((True, {}), (True, dict(max_stage=2)),
                                (False, dict(s_noise=0.0))):
        grid = _grid(9, final_zero)
        if True:
            want = _comfy_er_sde(_np_denoise(GM.denoise), X_T, grid, _noises(key, 9, X_T),
                                 **options)
            got = _run(exponential.sample_er_sde, GM.denoise, grid, key, **options)
            assert R.rel_err(got, want) <= RTOL, (options, R.rel_err(got, want))


# ---------------------------------------------------------------- diffusers: LCM and TCD
def _boundary_denoiser(sched):
    """LCM's boundary condition (diffusers applies it in the scheduler, ComfyUI in the
    model): D' = c_out(t) D + c_skip(t) x_vp at the step's integer timestep."""
    base = R.LinearEps(dim=6, seed=0).denoiser()
    sd, scale = sched.config.get("sigma_data", 0.5), sched.config.timestep_scaling

    def den(x, sigma):
        t = jnp.round(schedules.sigma_to_t(sigma, R.TRAIN_SIGMAS)) * scale
        c_skip = sd ** 2 / (t ** 2 + sd ** 2)
        c_out = t / jnp.sqrt(t ** 2 + sd ** 2)
        return c_out * base(x, sigma) + c_skip * x / jnp.sqrt(1 + sigma ** 2)
    return den


@pytest.mark.parity
@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_lcm_tcd_match_diffusers_with_our_noise(name):
    """Final latents equal diffusers' (1e-5 relative, our float32 side) when diffusers draws
    our per-step noise; TCD for gamma 0.3 (default) and 0 (DDIM)."""
    lin = R.LinearEps(dim=6, seed=0)
    x_t = np.random.default_rng(2).normal(size=(1, 6))
    key = jax.random.key(11)
    for gamma in ((0.3, 0.0) if name == "tcd" else (None,)):
        cls = "LCMScheduler" if name == "lcm" else "TCDScheduler"
        sched = getattr(diffusers, cls)(**{k: v for k, v in R.SD_CONFIG.items()
                                           if k != "steps_offset"})
        sched.set_timesteps(4)
        final = "zero" if name == "lcm" else "sigma_min"
        grid = R.grid_from(sched, final)
        like = jnp.zeros((1, 6), jnp.float32)
        noises = [torch.tensor(np.asarray(step_noise(key, i, like)), dtype=torch.float64)
                  for i in range(4)]
        with R.injected_noise(f"scheduling_{name}", noises):
            kwargs = {} if gamma is None else dict(eta=gamma)
            want = R.run_diffusers(sched, 4, x_t, lin.torch, step_kwargs=kwargs)
        den = _boundary_denoiser(sched) if name == "lcm" else lin.denoiser()
        options = {} if gamma is None else dict(gamma=gamma)
        fn = samplers.SAMPLERS[name].fn
        got = jax.jit(lambda x: fn(den, x, jnp.asarray(grid, jnp.float32), key, **options))(
            jnp.asarray(R.vp_to_ve(x_t, grid[0]), jnp.float32))
        assert R.rel_err(R.ve_to_vp(np.asarray(got), grid[-1]), want) <= 1e-5, gamma


# ---------------------------------------------------------------- restart
def test_restart_without_restarts_is_heun_and_restarts_as_a1111():
    """restart_times = 0 is Heun exactly; with restarts the trajectory is Heun down to the
    grid sigma nearest 0.1, then (per restart) noise up to the grid sigma nearest 2 and 9
    Heun steps on a Karras sub-grid, as A1111's restart_sampler, re-run here in float64."""
    grid = _grid(12)
    key = jax.random.key(2)
    heun = _run(samplers.SAMPLERS["heun"].fn, GM.denoise, grid)
    np.testing.assert_allclose(_run(restart.sample_restart, GM.denoise, grid, key,
                                    restart_times=0), heun, rtol=1e-12)
    d = _np_denoise(GM.denoise)

    def heun_step(x, s, sn):
        dx = (x - d(x, s)) / s
        x2 = x + dx * (sn - s)
        if sn == 0:
            return x2
        return x + (dx + (x2 - d(x2, sn)) / sn) / 2 * (sn - s)
    lo, hi = int(np.argmin(np.abs(grid - 0.1))), int(np.argmin(np.abs(grid - 2.0)))
    ramp = np.linspace(0, 1, 10)
    sub = (grid[hi] ** (1 / 7) + ramp * (grid[lo] ** (1 / 7) - grid[hi] ** (1 / 7))) ** 7
    steps = [(grid[i], grid[i + 1]) for i in range(lo)]
    for k in range(2):
        steps += [("noise", k)] + list(zip(sub[:-1], sub[1:]))
    steps += [(grid[i], grid[i + 1]) for i in range(lo, len(grid) - 1)]
    x = X_T.copy()
    for a, b in steps:
        if a == "noise":
            with jax.enable_x64(True):
                z = np.asarray(step_noise(jax.random.fold_in(key, 1), b,
                                          jnp.asarray(x, jnp.float64)))
            x = x + z * np.sqrt(sub[0] ** 2 - sub[-1] ** 2)
        else:
            x = heun_step(x, a, b)
    got = _run(restart.sample_restart, GM.denoise, grid, key, restart_times=2)
    assert R.rel_err(got, x) <= RTOL


# ---------------------------------------------------------------- NFE
NEW = ["euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "dpmpp_2s",
       "res_multistep", "er_sde", "dpm_fast", "dpm_adaptive", "lcm", "tcd", "restart",
       "sa_solver"]


def test_nfe_matches_catalogue():
    """Denoiser calls counted at run time (jax.debug.callback under jit + scan/cond/while)
    equal the catalogue's NFE at 12 steps; dpm_adaptive's equal its reported NFE."""
    sig = jnp.asarray(_grid(12), jnp.float32)
    calls = {name: [] for name in NEW}

    def counting(name):
        def den(x, s):
            jax.debug.callback(lambda: calls[name].append(1))
            return GM.denoise(x, s)
        return den

    def run_all(x):
        outs = {n: samplers.SAMPLERS[n].fn(counting(n), x, sig, jax.random.key(0))
                for n in NEW if n != "dpm_adaptive"}
        outs["dpm_adaptive"], rep = dpm_adaptive.dpm_adaptive_with_info(
            counting("dpm_adaptive"), x, sig, None)
        return outs, rep
    outs, rep = jax.block_until_ready(jax.jit(run_all)(jnp.asarray(X_T, jnp.float32)))
    for name in NEW:
        want = int(rep["nfe"]) if name == "dpm_adaptive" else samplers.SAMPLERS[name].nfe(12)
        assert len(calls[name]) == want, name
        assert np.all(np.isfinite(np.asarray(outs[name]))), name
    assert samplers.SAMPLERS["dpm_adaptive"].nfe(12) is None


def test_catalogue_has_every_new_sampler_with_a_reference():
    assert len(samplers.SAMPLERS) >= 28
    for name in NEW:
        info = samplers.SAMPLERS[name]
        assert info.reference and info.order >= 1, name
    ipndm = samplers.SAMPLERS["ipndm"].reference   # k-diffusion has no sample_ipndm
    assert "k-diffusion" not in ipndm and "ComfyUI sample_ipndm" in ipndm


def _comfy_ipndm(model, x, sigmas, max_order=4):
    """ComfyUI sample_ipndm, float64 numpy."""
    buf = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur)
        d = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x = denoised
        elif order == 1:
            x = x + (t_next - t_cur) * d
        elif order == 2:
            x = x + (t_next - t_cur) * (3 * d - buf[-1]) / 2
        elif order == 3:
            x = x + (t_next - t_cur) * (23 * d - 16 * buf[-1] + 5 * buf[-2]) / 12
        else:
            x = x + (t_next - t_cur) * (55 * d - 59 * buf[-1] + 37 * buf[-2] - 9 * buf[-3]) / 24
        buf = (buf + [d])[-(max_order - 1):]
    return x


def test_ipndm_matches_comfyui():
    """The reference ipndm now cites: ComfyUI's sample_ipndm, on grids ending at 0 (its
    last step returns D) and at sigma_min, max_order 4 and 2."""
    for final_zero, max_order in ((True, 4), (False, 2)):
        grid = _grid(9, final_zero)
        want = _comfy_ipndm(_np_denoise(GM.denoise), X_T, grid, max_order)
        got = _run(samplers.SAMPLERS["ipndm"].fn, GM.denoise, grid, max_order=max_order)
        assert R.rel_err(got, want) <= RTOL


# ---------------------------------------------------------------- order
def _gaussian():
    mu = np.linspace(-1.0, 1.0, 6)
    s = np.linspace(0.2, 1.5, 6)

    def denoise(x, sigma):
        s2 = jnp.asarray(s, x.dtype) ** 2
        return jnp.asarray(mu, x.dtype) + s2 / (s2 + sigma ** 2) * (x - jnp.asarray(mu, x.dtype))

    def exact(x_t, sigma_t, sigma):
        return mu + (x_t - mu) * np.sqrt((s ** 2 + sigma ** 2) / (s ** 2 + sigma_t ** 2))
    return denoise, exact


# (name, options, expected order, step counts). Measured slopes: 2.06, 2.10, 2.02, 1.01,
# 3.26 (dpm_fast is pre-asymptotic, 3.6, below N = 30: its steps are 3 times longer than the
# others'), 3.18 (SA-Solver's deterministic predictor-corrector, eta = 0).
ORDER_CASES = [("dpmpp_2s", {}, 2, [8, 12, 16, 24]),
               ("res_multistep", {}, 2, [16, 24, 32, 48]),
               ("dpmpp_2m_cfg_pp", {}, 2, [16, 24, 32, 48]),
               ("euler_cfg_pp", {}, 1, [16, 24, 32, 48]),
               ("dpm_fast", {}, 3, [30, 45, 60, 90]),   # NFE; floor(N/3)+1 steps
               ("sa_solver", dict(eta=0.0), 3, [16, 32, 48])]   # 3 points: compile time


@pytest.mark.parametrize("name, options, order, steps", ORDER_CASES,
                         ids=[c[0] for c in ORDER_CASES])
def test_order_of_convergence_on_the_exact_gaussian_solution(name, options, order, steps):
    """Log-log slope of the max error vs the closed-form ODE solution at sigma = 0.05, over
    an exponential grid from 10 (float64): within 0.3 of the catalogue's order."""
    denoise, exact = _gaussian()
    x_t = X_T / 14.6 * 10.0
    want = exact(x_t, 10.0, 0.05)
    fn = samplers.SAMPLERS[name].fn
    errs = []
    for n in steps:
        grid = schedules.exponential_sigmas(n, 0.05, 10.0)[:-1]
        with jax.enable_x64(True):
            got = jax.jit(lambda x, g=jnp.asarray(grid): fn(denoise, x, g, None, **options))(
                jnp.asarray(x_t))
        errs.append(float(np.max(np.abs(np.asarray(got) - want))))
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert samplers.SAMPLERS[name].order == order
    assert abs(slope - order) <= 0.3, (slope, errs)


def test_dpm_adaptive_meets_its_tolerance_and_spends_more_on_tighter_ones():
    """Adaptive steps on the exact Gaussian: the error falls with rtol/atol and the NFE
    rises (k-diffusion's controller, order 3)."""
    denoise, exact = _gaussian()
    x_t = X_T / 14.6 * 10.0
    grid = jnp.asarray(schedules.exponential_sigmas(8, 0.05, 10.0)[:-1])
    res = []
    with jax.enable_x64(True):
        for tol in (0.05, 0.005, 0.0005):
            got, info = jax.jit(lambda x, tol=tol: dpm_adaptive.dpm_adaptive_with_info(
                denoise, x, grid, None, rtol=tol, atol=tol / 6))(jnp.asarray(x_t))
            res.append((float(np.max(np.abs(np.asarray(got) - exact(x_t, 10.0, 0.05)))),
                        int(info["nfe"])))
    errs, nfes = zip(*res)
    assert errs[0] > errs[1] > errs[2] and nfes[0] < nfes[1] < nfes[2], res


# ---------------------------------------------------------------- SA-Solver
def _comfy_exp_coeffs(s, t, order, tau):
    from math import lgamma, log
    tau_mul = 1 + tau ** 2
    h = t - s
    p = np.arange(order)
    terms = t ** p - s ** p * np.exp(-tau_mul * h)
    depth = p[:, None] - p[None, :]
    lf = np.asarray([lgamma(k + 1) for k in p])
    coeff = lf[:, None] - lf[None, :]
    if tau > 0:
        coeff = coeff - depth * log(tau_mul)
    signs = np.where(depth % 2 == 0, 1.0, -1.0)
    return np.tril(np.exp(coeff) * signs) @ terms


def _comfy_b(sigma_next, lams, lam_s, lam_t, tau):
    integrals = _comfy_exp_coeffs(lam_s, lam_t, len(lams), tau)
    vt = np.vander(lams, len(lams), increasing=True).T
    return sigma_next * np.exp(lam_t) * np.linalg.solve(vt, integrals)


def _comfy_sa_solver(model, x, sigmas, noises, predictor_order=3, corrector_order=4,
                     start=5.09240759066568, end=0.5711888666489997, eta=1.0):
    """ComfyUI sample_sa_solver (use_pece=False, simple_order_2=False), float64 numpy."""
    with np.errstate(divide="ignore"):
        lambdas = -np.log(sigmas)
    tau_func = lambda s: eta if start >= s >= end else 0.0  # noqa: E731
    max_order = max(predictor_order, corrector_order)
    x_pred, h, tau_t, noise, preds = x, 0.0, 0.0, 0.0, []
    lower = sigmas[-1] == 0
    for i in range(len(sigmas) - 1):
        denoised = model(x_pred, sigmas[i])
        preds = (preds + [denoised])[-max_order:]
        p_used = min(predictor_order, len(preds))
        c_used = 0 if i == 0 or sigmas[i + 1] == 0 else min(corrector_order, len(preds))
        if lower:
            p_used = min(p_used, len(sigmas) - 2 - i)
            c_used = min(c_used, len(sigmas) - 1 - i)
        if c_used == 0:
            x = x_pred
        else:
            b = _comfy_b(sigmas[i], lambdas[i - c_used + 1:i + 1], lambdas[i - 1], lambdas[i],
                         tau_t)
            x = (sigmas[i] / sigmas[i - 1] * np.exp(-(tau_t ** 2) * h) * x
                 + sum(bj * pj for bj, pj in zip(b, preds[-c_used:])))
            if tau_t > 0:
                x = x + noise
        if sigmas[i + 1] == 0:
            x_pred = denoised
        else:
            tau_t = tau_func(sigmas[i + 1])
            b = _comfy_b(sigmas[i + 1], lambdas[i - p_used + 1:i + 1], lambdas[i],
                         lambdas[i + 1], tau_t)
            h = lambdas[i + 1] - lambdas[i]
            x_pred = (sigmas[i + 1] / sigmas[i] * np.exp(-(tau_t ** 2) * h) * x
                      + sum(bj * pj for bj, pj in zip(b, preds[-p_used:])))
            if tau_t > 0:
                noise = noises[i] * sigmas[i + 1] * np.sqrt(-np.expm1(-2 * tau_t ** 2 * h))
                x_pred = x_pred + noise
    return x_pred


def test_sa_solver_matches_comfyui_with_the_same_noise():
    """Default orders (3, 4) on a grid ending at 0 (so the orders also drop at the end);
    eta 1 (noise inside ComfyUI's default sigma interval). Measured 1.2e-16."""
    from diffjax.diffusion.samplers import sa_solver
    key = jax.random.key(13)
    for final_zero, orders in ((True, (3, 4)),):
        grid = _grid(10, final_zero)
        want = _comfy_sa_solver(_np_denoise(GM.denoise), X_T, grid, _noises(key, 10, X_T),
                                *orders)
        got = _run(sa_solver.sample_sa_solver, GM.denoise, grid, key,
                   predictor_order=orders[0], corrector_order=orders[1])
        assert R.rel_err(got, want) <= RTOL, (orders, R.rel_err(got, want))


def test_compare_refuses_the_adaptive_sampler_by_name():
    """A study grid is indexed by step counts; dpm_adaptive has none (NFE None): a named
    CompareError (a ConfigError: exit 2) before anything compiles."""
    from diffjax.config import load_config
    from diffjax.studies.compare_samplers import CompareError, make_plan
    config = load_config("diffjax.configs.compare.gmm_schedules",
                         ["samplers=euler,dpm_adaptive", "steps=5"])
    with pytest.raises(CompareError, match="'dpm_adaptive' chooses its own steps"):
        make_plan(config)
