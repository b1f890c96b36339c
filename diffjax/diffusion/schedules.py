"""Noise schedules: betas -> alphas_cumprod -> sigmas, and sigma grids for sampling.

Everything is computed in numpy float64 and handed to JAX as float32 (float64 where x64 is
enabled): schedules in bf16 give NaNs and banding. Discrete-time models (SD: 1000 training
timesteps) are seen through their sigmas, sigma_t = sqrt((1 - abar_t) / abar_t), so that
every sampler runs on every model. Timestep spacings follow diffusers' schedulers exactly
(the SD scheduler configs name them); continuous grids follow k-diffusion.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


# ----------------------------------------------------------------------------------------
# training noise schedules
# ----------------------------------------------------------------------------------------
def betas_for(name: str, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
              beta_end: float = 0.012) -> np.ndarray:
    """linear | scaled_linear (SD: sqrt-linear 0.00085 -> 0.012) | squaredcos_cap_v2."""
    n = num_train_timesteps
    if name == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if name == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=np.float64) ** 2
    if name == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
    raise ValueError(f"beta_schedule {name!r} is not one of linear, scaled_linear, "
                     "squaredcos_cap_v2")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Alg. 1: shift/scale sqrt(abar) so the last timestep is pure noise."""
    abar_sqrt = np.sqrt(np.cumprod(1.0 - betas))
    first, last = abar_sqrt[0], abar_sqrt[-1]
    abar_sqrt = (abar_sqrt - last) * first / (first - last)
    abar = abar_sqrt ** 2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def alphas_cumprod_for(beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000,
                       beta_start: float = 0.00085, beta_end: float = 0.012,
                       zero_terminal_snr: bool = False) -> np.ndarray:
    betas = betas_for(beta_schedule, num_train_timesteps, beta_start, beta_end)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return np.cumprod(1.0 - betas)


def sigmas_from_alphas_cumprod(alphas_cumprod) -> np.ndarray:
    """Training sigmas, increasing with t. A zero-terminal-SNR last value is infinite; it is
    clamped to a large finite sigma (4096, as diffusers) so grids stay usable."""
    ac = np.asarray(alphas_cumprod, np.float64)
    with np.errstate(divide="ignore"):
        s = np.sqrt((1.0 - ac) / ac)
    return np.where(np.isfinite(s), s, 4096.0)


def interp_loop_free(x, xp, fp):
    """`jnp.interp(x, xp, fp)` (xp strictly increasing; clamped outside it) with no loop, no
    dynamic index: the interval is a count of xp <= x and its ends are one-hot sums.

    Why: jnp.interp's searchsorted is a while loop whose result indexes xp; inside the
    sampler's scan, XLA's GPU compiler (jaxlib 0.11.2, H100) fails on that index
    ("Failed to evaluate instruction (min.2) since it depends on ... parameters"). A
    1000-entry compare per step costs nothing beside a UNet call.
    """
    x = jnp.asarray(x)
    n = xp.shape[0]
    i = jnp.clip(jnp.sum(xp <= x[..., None], axis=-1) - 1, 0, n - 2)
    pick = (jnp.arange(n - 1) == i[..., None]).astype(xp.dtype)
    x0, x1 = (pick * xp[:-1]).sum(-1), (pick * xp[1:]).sum(-1)
    f0, f1 = (pick * fp[:-1]).sum(-1), (pick * fp[1:]).sum(-1)
    w = jnp.clip((x - x0) / (x1 - x0), 0.0, 1.0)
    return f0 + w * (f1 - f0)


def sigma_to_t(sigma, train_sigmas):
    """Continuous timestep of `sigma`: linear interpolation in log-sigma (k-diffusion),
    exact at the training sigmas. Works on traced values."""
    log_sigmas = jnp.log(jnp.asarray(train_sigmas, jnp.result_type(float)))
    t = jnp.arange(log_sigmas.shape[0], dtype=log_sigmas.dtype)
    return interp_loop_free(jnp.log(jnp.maximum(sigma, 1e-10)), log_sigmas, t)


def t_to_sigma(t, train_sigmas):
    """Inverse of sigma_to_t: log-sigma interpolated at continuous t."""
    log_sigmas = jnp.log(jnp.asarray(train_sigmas, jnp.result_type(float)))
    grid = jnp.arange(log_sigmas.shape[0], dtype=log_sigmas.dtype)
    return jnp.exp(interp_loop_free(t, grid, log_sigmas))


# ----------------------------------------------------------------------------------------
# discrete timestep spacings (diffusers) -> sigma grids
# ----------------------------------------------------------------------------------------
def timesteps_for(spacing: str, steps: int, num_train_timesteps: int = 1000,
                  steps_offset: int = 1) -> np.ndarray:
    """Decreasing integer timesteps as diffusers' `set_timesteps` makes them.

    leading: multiples of T//N plus steps_offset (SD 1.x configs); trailing: from T-1 down
    in steps of T/N (zero-SNR-friendly); linspace: evenly from T-1 to 0.
    """
    _check_steps(steps)
    T = num_train_timesteps
    if spacing == "leading":
        ratio = T // steps
        ts = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"timestep spacing {spacing!r} is not one of leading, trailing, "
                         "linspace")
    return ts


def discrete_sigmas(train_sigmas, timesteps, final: str = "zero") -> np.ndarray:
    """Sigmas at `timesteps` plus a final value: "zero" (k-diffusion, diffusers' Euler
    family) or "sigma_min" (sigma at t=0: DDIM/PNDM with set_alpha_to_one=False)."""
    s = np.asarray(train_sigmas, np.float64)[np.asarray(timesteps)]
    last = 0.0 if final == "zero" else float(np.asarray(train_sigmas)[0])
    return np.concatenate([s, [last]])


# ----------------------------------------------------------------------------------------
# continuous sigma grids (k-diffusion), each ending with 0
# ----------------------------------------------------------------------------------------
def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0):
    """Karras et al. 2022, eq. 5: sigma_i = (max^(1/rho) + i/(N-1) (min^(1/rho) - max^(1/rho)))^rho."""
    _check_steps(steps)
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.concatenate([(hi + ramp * (lo - hi)) ** rho, [0.0]])


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float):
    """Evenly spaced in log sigma."""
    _check_steps(steps)
    return np.concatenate([np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min),
                                              steps)), [0.0]])


def polyexponential_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0):
    """k-diffusion's polyexponential: log sigma interpolated along ramp^rho."""
    _check_steps(steps)
    ramp = np.linspace(1, 0, steps) ** rho
    return np.concatenate([np.exp(ramp * (math.log(sigma_max) - math.log(sigma_min))
                                  + math.log(sigma_min)), [0.0]])


def vp_sigmas(steps: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3):
    """Song et al.'s continuous VP SDE, uniform in t from 1 to eps_s."""
    _check_steps(steps)
    t = np.linspace(1, eps_s, steps)
    return np.concatenate([np.sqrt(np.exp(beta_d * t ** 2 / 2 + beta_min * t) - 1), [0.0]])


def uniform_t_sigmas(steps: int, train_sigmas, final: str = "zero"):
    """Evenly spaced continuous timesteps from T-1 to 0, mapped through the log-sigma
    interpolation of the training sigmas (k-diffusion's `get_sigmas` for discrete models)."""
    _check_steps(steps)
    ls = np.log(np.asarray(train_sigmas, np.float64))
    if final == "zero":
        t = np.linspace(len(ls) - 1, 0, steps)
        return np.concatenate([np.exp(np.interp(t, np.arange(len(ls)), ls)), [0.0]])
    return np.exp(np.interp(np.linspace(len(ls) - 1, 0, steps + 1), np.arange(len(ls)), ls))


# ----------------------------------------------------------------------------------------
# ComfyUI's schedulers (comfy/samplers.py) and Align Your Steps, each ending with 0
# ----------------------------------------------------------------------------------------
def simple_sigmas(steps: int, train_sigmas):
    """ComfyUI `simple_scheduler`: every (T/N)-th training sigma from the top, then 0:
    sigma_i = train_sigmas[T - 1 - int(i T / N)]."""
    _check_steps(steps)
    ts = np.asarray(train_sigmas, np.float64)
    T = len(ts)
    return np.asarray([ts[-(1 + int(i * (T / steps)))] for i in range(steps)] + [0.0])


def ddim_uniform_sigmas(steps: int, train_sigmas):
    """ComfyUI `ddim_scheduler`: training sigmas at t = 1, 1 + T//N, 1 + 2 T//N, ... < T,
    reversed, then 0. As in ComfyUI the grid can have MORE than N steps when T//N does not
    divide T - 1 (e.g. 8 steps for N = 7 at T = 1000)."""
    _check_steps(steps)
    ts = np.asarray(train_sigmas, np.float64)
    ss = max(len(ts) // steps, 1)
    return np.concatenate([ts[1::ss][::-1], [0.0]])


def normal_sigmas(steps: int, train_sigmas, sgm: bool = False):
    """ComfyUI `normal_scheduler`: timesteps evenly from t(sigma_max) = T-1 to t(sigma_min)
    = 0 mapped through the log-sigma interpolation (ComfyUI's ModelSamplingDiscrete.sigma),
    then 0. sgm=True (`sgm_uniform`) takes N + 1 points and drops the last (SGM/SDXL's
    Euler "trailing"-like grid)."""
    _check_steps(steps)
    ls = np.log(np.asarray(train_sigmas, np.float64))
    T = len(ls)
    t = np.linspace(T - 1, 0, steps + 1)[:-1] if sgm else np.linspace(T - 1, 0, steps)
    return np.concatenate([np.exp(np.interp(t, np.arange(T), ls)), [0.0]])


def _betacf(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """Continued fraction of the regularized incomplete beta (modified Lentz; Press et al.,
    Numerical Recipes 6.4), converged to float64 rounding for 0 < x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    c = np.ones_like(x)
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1.0 + num / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            h = h * d * c
        if np.all(np.abs(d * c - 1.0) < 1e-16):
            break
    return h


def beta_cdf(x, a: float, b: float) -> np.ndarray:
    """Regularized incomplete beta I_x(a, b) in float64 (no scipy at run time)."""
    x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
    if x.ndim == 0:
        return beta_cdf(x[None], a, b)[0]
    inner = np.clip(x, 1e-300, 1.0 - 1e-16)
    lbeta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    front = np.exp(a * np.log(inner) + b * np.log1p(-inner) - lbeta)
    low = inner < (a + 1.0) / (a + b + 2.0)   # where the direct fraction converges fast
    out = np.empty_like(inner)
    out[low] = front[low] * _betacf(a, b, inner[low]) / a
    out[~low] = 1.0 - front[~low] * _betacf(b, a, 1.0 - inner[~low]) / b
    return np.where(x <= 0.0, 0.0, np.where(x >= 1.0, 1.0, out))


def beta_ppf(q, a: float, b: float) -> np.ndarray:
    """Quantile of Beta(a, b) (scipy.stats.beta.ppf) by bisection on `beta_cdf`: 64 halvings
    of [0, 1] reach float64 resolution; the cdf is monotone, so bisection cannot fail."""
    q = np.asarray(q, np.float64)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(64):
        mid = (lo + hi) / 2
        below = beta_cdf(mid, a, b) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(q <= 0.0, 0.0, np.where(q >= 1.0, 1.0, (lo + hi) / 2))


def beta_sigmas(steps: int, train_sigmas, alpha: float = 0.6, beta: float = 0.6):
    """ComfyUI `beta_scheduler` (Lee et al. 2024, "Beta Sampling is All You Need",
    arXiv:2407.12173): timesteps at the Beta(alpha, beta) quantiles of 1 - i/N, rounded to
    integers; a timestep equal to the previous one is dropped (so the grid can have fewer
    than N steps, as in ComfyUI); then 0."""
    _check_steps(steps)
    ts = np.asarray(train_sigmas, np.float64)
    q = 1.0 - np.linspace(0.0, 1.0, steps, endpoint=False)
    # quantiles rounded to 1e-12 first: the bisection leaves float64 noise, and an exact
    # quantile of 1/2 (alpha = beta, N even) must round like scipy's 0.5 (499.5 -> 500)
    t = np.rint(np.round(beta_ppf(q, alpha, beta), 12) * (len(ts) - 1)).astype(np.int64)
    keep = np.concatenate([[True], t[1:] != t[:-1]])
    return np.concatenate([ts[t[keep]], [0.0]])


def linear_quadratic_sigmas(steps: int, sigma_max: float, threshold_noise: float = 0.025,
                            linear_steps: int = 0):
    """ComfyUI `linear_quadratic_schedule` (from Mochi, genmoai/models infer.py): the noise
    fraction 1 - s rises linearly to threshold_noise over the first linear_steps (0: N // 2)
    steps, then quadratically to 1; sigma = s * sigma_max."""
    _check_steps(steps)
    if steps == 1:
        return np.asarray([sigma_max, 0.0])
    lin = linear_steps or steps // 2
    lin_part = [i * threshold_noise / lin for i in range(lin)]
    diff = lin - threshold_noise * steps
    quad = steps - lin
    qc = diff / (lin * quad ** 2)
    lc = threshold_noise / lin - 2 * diff / quad ** 2
    const = qc * lin ** 2
    quad_part = [qc * i ** 2 + lc * i + const for i in range(lin, steps)]
    return (1.0 - np.asarray(lin_part + quad_part + [1.0])) * sigma_max


def kl_optimal_sigmas(steps: int, sigma_min: float, sigma_max: float):
    """ComfyUI `kl_optimal_scheduler` (AUTOMATIC1111 PR #15608; Sabour et al. 2024, "Align
    Your Steps", eq. for the KL-optimal schedule): evenly spaced in arctan(sigma)."""
    _check_steps(steps)
    w = np.arange(steps) / max(steps - 1, 1)
    return np.concatenate([np.tan(w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max)),
                           [0.0]])


# Align Your Steps (Sabour et al. 2024): NVIDIA's published 10-step noise levels for SD 1.5
# and SDXL (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html; the values as in
# ComfyUI comfy_extras/nodes_align_your_steps.py NOISE_LEVELS).
AYS_NOISE_LEVELS = {
    "sd15": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177,
             1.3943805092, 0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662,
             0.0291671582),
    "sdxl": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945,
             0.8620721141, 0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177,
             0.0291671582),
}


def loglinear_interp(levels, num: int) -> np.ndarray:
    """NVIDIA's `loglinear_interp`: resample a decreasing sequence to `num` points, linear
    in log value over an even [0, 1] parameter."""
    levels = np.asarray(levels, np.float64)
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(levels[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num), xs, ys))[::-1].copy()


def ays_sigmas(steps: int, model: str = "sd15"):
    """Align Your Steps as ComfyUI's AlignYourStepsScheduler builds it: the 11 published
    levels, log-linearly resampled to N + 1 when N != 10, the last replaced by 0."""
    _check_steps(steps)
    if model not in AYS_NOISE_LEVELS:
        raise ValueError(f"ays model {model!r} is not one of {', '.join(AYS_NOISE_LEVELS)}")
    levels = np.asarray(AYS_NOISE_LEVELS[model], np.float64)
    if steps + 1 != len(levels):
        levels = loglinear_interp(levels, steps + 1)
    levels = levels.copy()
    levels[-1] = 0.0
    return levels


def _check_steps(steps: int) -> None:
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def _spacing(name):
    def grid(steps, train_sigmas, final="zero", steps_offset=1):
        ts = timesteps_for(name, steps, len(train_sigmas), steps_offset)
        return discrete_sigmas(train_sigmas, ts, final)
    return grid


def _continuous(fn):
    def grid(steps, train_sigmas, final="zero", sigma_min=None, sigma_max=None, **kw):
        lo = float(train_sigmas[0]) if sigma_min is None else sigma_min
        hi = float(train_sigmas[-1]) if sigma_max is None else sigma_max
        return fn(steps, lo, hi, **kw) if final == "zero" else fn(steps + 1, lo, hi, **kw)[:-1]
    return grid


def _zero_final(name, fn):
    """A grid defined only with a final sigma of 0 (ComfyUI's schedulers, AYS)."""
    def grid(steps, train_sigmas, final="zero", **kw):
        if final != "zero":
            raise ValueError(f"schedule {name!r} ends at sigma = 0 only (final='zero'), got "
                             f"final={final!r}")
        return fn(steps, train_sigmas, **kw)
    return grid


# name -> grid(steps, train_sigmas, final=..., **options) -> float64 [steps + 1], for models
# with discrete training timesteps (every SD model). Continuous grids span the model's own
# sigma range unless sigma_min / sigma_max are given.
SCHEDULES = {
    "karras": _continuous(karras_sigmas),
    "exponential": _continuous(exponential_sigmas),
    "polyexponential": _continuous(polyexponential_sigmas),
    "vp": lambda n, ts, final="zero", **kw: (vp_sigmas(n, **kw) if final == "zero"
                                            else vp_sigmas(n + 1, **kw)[:-1]),
    "uniform": lambda n, ts, final="zero": uniform_t_sigmas(n, ts, final),
    "leading": _spacing("leading"),
    "trailing": _spacing("trailing"),
    "linspace": _spacing("linspace"),
    # ComfyUI's (comfy/samplers.py SCHEDULER_HANDLERS) and Align Your Steps; final="zero" only
    "simple": _zero_final("simple", lambda n, ts: simple_sigmas(n, ts)),
    "ddim_uniform": _zero_final("ddim_uniform", lambda n, ts: ddim_uniform_sigmas(n, ts)),
    "normal": _zero_final("normal", lambda n, ts: normal_sigmas(n, ts)),
    "sgm_uniform": _zero_final("sgm_uniform", lambda n, ts: normal_sigmas(n, ts, sgm=True)),
    "beta": _zero_final("beta", lambda n, ts, alpha=0.6, beta=0.6:
                        beta_sigmas(n, ts, alpha, beta)),
    "linear_quadratic": _zero_final(
        "linear_quadratic", lambda n, ts, threshold_noise=0.025, linear_steps=0:
        linear_quadratic_sigmas(n, float(ts[-1]), threshold_noise, linear_steps)),
    "kl_optimal": _continuous(kl_optimal_sigmas),
    "ays_sd15": _zero_final("ays_sd15", lambda n, ts: ays_sigmas(n, "sd15")),
    "ays_sdxl": _zero_final("ays_sdxl", lambda n, ts: ays_sigmas(n, "sdxl")),
}
FINALS = ("zero", "sigma_min")


def make_sigmas(schedule: str, steps: int, train_sigmas, *, final: str = "zero",
                **options) -> jnp.ndarray:
    """The sampling grid [steps + 1] (float32, or float64 under x64) for a named schedule.

    final: "zero" appends sigma = 0 (k-diffusion; diffusers' Euler family), "sigma_min"
      ends at the schedule's smallest sigma instead (diffusers' DDIM/PNDM with
      set_alpha_to_one=False end at sigma(t=0); continuous grids then take steps + 1 points).
    options: steps_offset (spacings); sigma_min, sigma_max, rho (karras, polyexponential);
      sigma_min, sigma_max (exponential, kl_optimal); beta_d, beta_min, eps_s (vp); alpha,
      beta (beta); threshold_noise, linear_steps (linear_quadratic). ComfyUI's ddim_uniform
      and beta can return a grid of more / fewer than `steps` steps, as ComfyUI's do.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if final not in FINALS:
        raise ValueError(f"final must be one of {FINALS}, got {final!r}")
    _check_steps(steps)
    ts = np.asarray(train_sigmas, np.float64)
    if ts.ndim != 1 or ts.shape[0] < 2 or not np.all(np.diff(ts) > 0):
        raise ValueError("train_sigmas must be a 1-D increasing array (sigma per training "
                         f"timestep), got shape {ts.shape}")
    try:
        grid = SCHEDULES[schedule](steps, ts, final=final, **options)
    except TypeError as e:
        raise ValueError(f"schedule {schedule!r} got unexpected options "
                         f"{sorted(options)}: {e}") from None
    if not np.all(np.diff(grid) < 0):
        # e.g. linspace ends at t = 0, whose sigma is sigma_min itself: diffusers' DDIM then
        # takes an identity step; here the grid would repeat a sigma.
        raise ValueError(f"schedule {schedule!r} with {steps} steps and final={final!r} is "
                         f"not strictly decreasing (ends {grid[-3:].tolist()}); use "
                         "final='zero' or another spacing")
    return jnp.asarray(grid, jnp.result_type(float))
