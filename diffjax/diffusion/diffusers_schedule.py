"""schedule="model": the sigma grid AND the network's timesteps of the diffusers scheduler a
model folder declares (its scheduler_config.json), so that a sample equals diffusers' own.

Why separate from schedules.py: there a grid is sigmas only and the denoiser maps each sigma
to a continuous timestep (k-diffusion). diffusers instead feeds the network the scheduler's
own timesteps: integers for spaced grids, `round(t(sigma))` for DPM-Solver's Karras /
exponential / beta sigmas, unrounded t(sigma) for Euler's; and each scheduler class treats
zero terminal SNR its own way. `model_grid` returns both, and `denoisers.vp_denoiser(...,
grid=...)` feeds the network the grid's timestep wherever a sampler evaluates a grid sigma.

Reproduced per class (diffusers 0.42 `set_timesteps`):
- DDIM / DDPM / PNDM rules: integer timesteps by `timestep_spacing` (leading + steps_offset,
  trailing, linspace), alpha_bar exactly as trained: with `rescale_betas_zero_snr` the
  first trailing step has alpha_bar = 0, sigma = inf (the front end, `sample.sample`,
  takes that step from pure noise; v-prediction is then needed, as in diffusers). The last
  step goes to alpha_bar = 1 (`set_alpha_to_one`) or alpha_bar[0]. DDIM steps to
  t - T // N, which must be the next grid timestep (true for leading and for trailing when
  N divides T); otherwise ModelScheduleError.
- Euler-family rules (EulerDiscrete, EulerAncestralDiscrete, LMS, Heun): zero-SNR clamps
  alpha_bar[-1] = 2^-24 (diffusers does); float timesteps by spacing, sigmas interpolated
  linearly in sigma; use_karras / exponential / beta sigmas over the spaced sigmas' range
  with unrounded t(sigma); final_sigmas_type.
- DPM-Solver-family rules (DPMSolverMultistep, DPMSolverSinglestep, UniPC): the same clamp,
  DPM-Solver's own spacings (N + 1 points, last dropped), Karras / exponential / beta sigmas
  over the training range with rounded timesteps (not for squaredcos_cap_v2),
  final_sigmas_type.
Sigmas are float32 as diffusers keeps them. Not reproduced (ModelScheduleError): other
classes, `timestep_type="continuous"`, `interpolation_type="log_linear"`, `use_lu_lambdas`,
flow sigmas, `thresholding`, DDIM/DDPM's `clip_sample` (True by default there; SD's
configs set it false).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from diffjax.diffusion import schedules
from diffjax.spec import ConfigError

DDIM_LIKE = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler")
EULER_LIKE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
              "LMSDiscreteScheduler", "HeunDiscreteScheduler")
DPM_LIKE = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
            "UniPCMultistepScheduler")


class ModelScheduleError(ConfigError):
    """The folder's scheduler cannot be reproduced on a sigma grid (named, exit 2)."""


@dataclasses.dataclass(frozen=True)
class ModelGrid:
    """sigmas [N + 1] (decreasing, float32 values; sigmas[0] may be inf), and timesteps [N]:
    what the network is given at sigmas[i]."""

    sigmas: np.ndarray
    timesteps: np.ndarray


def _alphas_cumprod(cfg: dict, clamp_zero_snr: bool) -> np.ndarray:
    ac = schedules.alphas_cumprod_for(cfg.get("beta_schedule", "scaled_linear"),
                                      cfg.get("num_train_timesteps", 1000),
                                      cfg.get("beta_start", 0.0001), cfg.get("beta_end", 0.02),
                                      cfg.get("rescale_betas_zero_snr", False))
    if cfg.get("rescale_betas_zero_snr", False) and clamp_zero_snr:
        ac = ac.copy()
        ac[-1] = 2.0 ** -24      # diffusers' Euler / DPM-Solver / UniPC: first sigma finite
    return ac


def _sigma(ac):
    with np.errstate(divide="ignore"):
        return np.sqrt((1 - ac) / ac)


def _sigma_to_t(sigma, log_sigmas):
    """diffusers' _sigma_to_t: t interpolated linearly in log sigma."""
    t = np.arange(len(log_sigmas), dtype=np.float64)
    return np.interp(np.log(np.maximum(sigma, 1e-10)), log_sigmas, t)


def _convert(cfg, in_sigmas, n):
    """Karras / exponential / beta sigmas over in_sigmas' range (diffusers' _convert_to_*),
    or None when the config asks for none."""
    lo = cfg.get("sigma_min") or float(in_sigmas[-1])
    hi = cfg.get("sigma_max") or float(in_sigmas[0])
    if cfg.get("use_karras_sigmas"):
        return schedules.karras_sigmas(n, lo, hi)[:-1]
    if cfg.get("use_exponential_sigmas"):
        return np.exp(np.linspace(math.log(hi), math.log(lo), n))
    if cfg.get("use_beta_sigmas"):
        from scipy import stats
        a, b = 0.6, 0.6
        ppf = stats.beta.ppf(1 - np.linspace(0, 1, n), a, b)
        return np.asarray([lo + p * (hi - lo) for p in ppf])
    return None


def _unsupported(cfg, cls):
    for key, ok in (("timestep_type", "discrete"), ("interpolation_type", "linear"),
                    ("use_lu_lambdas", False), ("use_flow_sigmas", False),
                    ("thresholding", False)):
        if cfg.get(key, ok) != ok:
            raise ModelScheduleError(f"schedule='model': {cls} with {key}={cfg[key]!r} is not "
                                     f"reproduced (only {key}={ok!r})")


def model_grid(cfg: dict, steps: int) -> ModelGrid:
    """The grid and timesteps of the scheduler in `cfg` (scheduler_config.json's keys;
    `_class_name` picks the rules; without one, PNDMScheduler's, SD 1.x's scheduler) for
    `steps` steps."""
    cls = cfg.get("_class_name", "PNDMScheduler")
    _unsupported(cfg, cls)
    T = cfg.get("num_train_timesteps", 1000)
    spacing = cfg.get("timestep_spacing", "leading")
    offset = cfg.get("steps_offset", 0)
    if spacing not in ("leading", "trailing", "linspace"):
        raise ModelScheduleError(f"timestep_spacing {spacing!r} is not one of leading, "
                                 "trailing, linspace")
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ModelScheduleError(f"steps must be 1..{T}, got {steps!r}")
    if cls in DDIM_LIKE:
        if cls != "PNDMScheduler" and cfg.get("clip_sample", True):
            raise ModelScheduleError(f"schedule='model': {cls} with clip_sample=True (its "
                                     "default) clips x0 to [-1, 1], a step rule no sigma grid "
                                     "carries; set clip_sample false (as SD's configs do)")
        return _ddim_grid(cfg, steps, T, spacing, offset)
    if cls in EULER_LIKE or cls in DPM_LIKE:
        ac = _alphas_cumprod(cfg, clamp_zero_snr=True)
        train = _sigma(ac)
        log_sigmas = np.log(train)
        if cls in EULER_LIKE:
            ts = {"linspace": lambda: np.linspace(0, T - 1, steps),
                  "leading": lambda: (np.arange(steps) * (T // steps)).round()[::-1] + offset,
                  "trailing": lambda: np.arange(T, 0, -T / steps).round() - 1}[spacing]()
            ts = ts.astype(np.float32).astype(np.float64)
            sig = np.interp(ts, np.arange(T), train)
            conv = _convert(cfg, sig, steps)
        else:
            ts = {"linspace": lambda: np.linspace(0, T - 1, steps + 1).round()[::-1][:-1],
                  "leading": lambda: (np.arange(steps + 1) * (T // (steps + 1))).round()[::-1][:-1]
                  + offset,
                  "trailing": lambda: np.arange(T, 0, -T / steps).round() - 1}[spacing]()
            ts = ts.astype(np.int64).astype(np.float64)
            sig = np.interp(ts, np.arange(T), train)
            conv = _convert(cfg, train[::-1], steps)
        if conv is not None:
            sig = conv
            ts = _sigma_to_t(sig, log_sigmas)
            if cls in DPM_LIKE and cfg.get("beta_schedule") != "squaredcos_cap_v2":
                ts = ts.round()
        final = cfg.get("final_sigmas_type", "zero")
        if final not in ("zero", "sigma_min"):
            raise ModelScheduleError(f"final_sigmas_type {final!r} is not zero or sigma_min")
        last = 0.0 if final == "zero" else float(train[0])
        sigmas = np.concatenate([sig, [last]]).astype(np.float32).astype(np.float64)
        return ModelGrid(sigmas, np.asarray(ts, np.float64))
    raise ModelScheduleError(f"schedule='model' reproduces {', '.join(DDIM_LIKE + EULER_LIKE + DPM_LIKE)}"
                             f"; the folder's scheduler is {cls!r}")


def _ddim_grid(cfg, steps, T, spacing, offset) -> ModelGrid:
    ac = _alphas_cumprod(cfg, clamp_zero_snr=False)
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(steps) * (T // steps)).round()[::-1] + offset
    else:
        ts = np.round(np.arange(T, 0, -T / steps)) - 1
    ts = ts.astype(np.int64)
    prev = ts - T // steps
    if np.any(prev[:-1] != ts[1:]):
        raise ModelScheduleError(
            f"{cfg.get('_class_name', 'DDIMScheduler')} with {spacing} spacing and {steps} "
            f"steps steps from t to t - {T // steps}, which is not the next timestep: not "
            "one sigma grid (use leading spacing, or trailing with steps dividing "
            f"{T})")
    default_one = cfg.get("_class_name", "PNDMScheduler") != "PNDMScheduler"  # diffusers'
    final_ac = 1.0 if cfg.get("set_alpha_to_one", default_one) else float(ac[0])
    last = ac[prev[-1]] if prev[-1] >= 0 else final_ac
    sigmas = np.concatenate([_sigma(ac[ts]), [_sigma(np.float64(last))]])
    sigmas = sigmas.astype(np.float32).astype(np.float64)
    if len(sigmas) > 2 and sigmas[-1] == sigmas[-2]:
        # timestep 0 stepping to alpha_bar[0] (steps_offset 0, set_alpha_to_one false): an
        # identity step in diffusers (x_prev = x whatever the network says), dropped here
        sigmas, ts = sigmas[:-1], ts[:-1]
    return ModelGrid(sigmas, ts.astype(np.float64))
