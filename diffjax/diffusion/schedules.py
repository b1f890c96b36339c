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
}
FINALS = ("zero", "sigma_min")


def make_sigmas(schedule: str, steps: int, train_sigmas, *, final: str = "zero",
                **options) -> jnp.ndarray:
    """The sampling grid [steps + 1] (float32, or float64 under x64) for a named schedule.

    final: "zero" appends sigma = 0 (k-diffusion; diffusers' Euler family), "sigma_min"
      ends at the schedule's smallest sigma instead (diffusers' DDIM/PNDM with
      set_alpha_to_one=False end at sigma(t=0); continuous grids then take steps + 1 points).
    options: steps_offset (spacings); sigma_min, sigma_max, rho (karras, polyexponential);
      beta_d, beta_min, eps_s (vp).
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
