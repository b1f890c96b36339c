"""schedule="model" reproduces the diffusers scheduler a folder declares: full deterministic
samples equal diffusers' own step loop (`scheduler.step`, run in torch float64) within 1e-5
relative, for DPMSolverMultistepScheduler (Karras sigmas, trailing: rounded timesteps fed to
the network), EulerDiscreteScheduler (zero terminal SNR, trailing, v-prediction: alpha_bar
clamped at 2^-24 as diffusers does) and DDIMScheduler (zero terminal SNR, trailing,
v-prediction: the first step from alpha_bar = 0 exactly; 10 and 25 steps; clip_sample off,
as in SD's configs: diffusers' DDIM default clips x0 to [-1, 1], which model_grid refuses).

The network is the same function on both sides (`sampler_refs.LinearEps`: a random linear
VP model with smooth time dependence, read as eps or v), so any difference is the grid, the
timesteps or the step. Ours runs through `diffusion.sample.sample` in float32 with the
seed's own noise, which diffusers starts from too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:  # dev extra
    import diffusers
    import torch
except ModuleNotFoundError:
    diffusers = torch = None

import sampler_refs as R
from diffjax.diffusion import schedules
from diffjax.diffusion.denoisers import vp_denoiser
from diffjax.diffusion.diffusers_schedule import ModelScheduleError, model_grid
from diffjax.diffusion.sample import sample, seed_keys

LIN = R.LinearEps(dim=6, seed=0)
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
          num_train_timesteps=1000)
ZSNR = dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing",
            prediction_type="v_prediction")
CASES = [
    ("DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True, timestep_spacing="trailing"),
     "dpmpp_2m", 20),
    ("EulerDiscreteScheduler", ZSNR, "euler", 20),
    ("DDIMScheduler", dict(ZSNR, set_alpha_to_one=False, clip_sample=False), "ddim", 10),
    ("DDIMScheduler", dict(ZSNR, set_alpha_to_one=False, clip_sample=False), "ddim", 25),
]
SEED = 5


def ours(cfg, sampler, steps):
    grid = model_grid(cfg, steps)
    ac = schedules.alphas_cumprod_for(cfg["beta_schedule"], 1000, cfg["beta_start"],
                                      cfg["beta_end"], cfg.get("rescale_betas_zero_snr", False))
    den = vp_denoiser(LIN.jax, schedules.sigmas_from_alphas_cumprod(ac),
                      cfg.get("prediction_type", "epsilon"), grid=grid)
    x = sample(den, (6,), jnp.asarray([SEED], jnp.uint32), sampler,
               jnp.asarray(grid.sigmas, jnp.float32), init_scale="vp")[0]
    return R.ve_to_vp(np.asarray(x, np.float64), grid.sigmas[-1])


@pytest.mark.parity
@pytest.mark.parametrize("cls,cfg,sampler,steps", CASES,
                         ids=["DPMSolverMultistep-20", "EulerDiscrete-20", "DDIM-10", "DDIM-25"])
def test_full_sample_equals_diffusers(cls, cfg, sampler, steps):
    sched = getattr(diffusers, cls)(**cfg)
    noise = np.asarray(jax.random.normal(seed_keys(SEED)[0], (6,), jnp.float32), np.float64)
    want = R.run_diffusers(sched, steps, noise[None], LIN.torch)[0]
    # ours returns VP at the grid's last sigma; diffusers' Euler sample is VE (= VP at 0)
    got = ours(dict(cfg, _class_name=cls), sampler, steps)
    assert R.rel_err(got, want) <= 1e-5, (got, want)


def test_grids_name_what_they_cannot_reproduce():
    with pytest.raises(ModelScheduleError, match="not the next timestep"):
        model_grid(dict(SD, _class_name="DDIMScheduler", timestep_spacing="trailing",
                        clip_sample=False), 30)
    with pytest.raises(ModelScheduleError, match="clip_sample"):
        model_grid(dict(ZSNR, _class_name="DDIMScheduler"), 10)
    with pytest.raises(ModelScheduleError, match="KarrasVeScheduler"):
        model_grid(dict(SD, _class_name="KarrasVeScheduler"), 10)
    g = model_grid(dict(ZSNR, _class_name="DDIMScheduler", clip_sample=False), 10)
    assert np.isinf(g.sigmas[0]) and g.timesteps[0] == 999 and g.sigmas[-1] == 0
