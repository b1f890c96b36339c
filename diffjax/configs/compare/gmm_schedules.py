"""Schedules x samplers on the exact benchmark (#26): every sigma schedule against the common
samplers at 5, 10, 20 and 50 steps on a Gaussian mixture with a closed-form denoiser, SD's
noise levels; error against the exact probability-flow ODE endpoint and Fréchet distance
to the true mixture.

    nice diffjax compare --config diffjax.configs.compare.gmm_schedules --out runs/gmm_sched

The committed study is experiments/results/gmm_schedules/ (README: which schedule and
sampler win where). NFE = steps for every sampler here but dpmpp_2s (2N - 1); dpm_fast
uses only the grid's ends. Small on purpose (252 cells: each cell compiles its own
program, ~20 minutes of a shared 2-core CPU); add samplers/schedules with
--config.samplers=... / --config.schedules=....
"""

import ml_collections

from diffjax.config import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, seeds=1024, dim=16)
    c = ml_collections.ConfigDict()
    c.name = "gmm_schedules"
    c.out = ""
    c.model = ml_collections.ConfigDict(dict(kind="gmm", path="", seed=0, dim=a.dim,
                                             n_components=8, spread=1.0, std=0.3))
    c.prompts = ""
    c.samplers = ("euler", "dpmpp_2m", "unipc", "res_multistep", "euler_ancestral",
                  "dpmpp_2s", "dpm_fast", "sa_solver", "er_sde")
    c.sampler_options = ml_collections.ConfigDict()
    c.steps = (5, 10, 20, 50)
    c.guidance_scales = (0.0,)
    c.schedules = ("karras", "exponential", "normal", "simple", "beta", "kl_optimal",
                   "ays_sd15")
    c.seeds = a.seeds
    c.metrics = ("rmse", "frechet")
    # the exact ODE endpoint: a 2000-step DPM++(3M) solve down to sigma 1e-4
    c.reference = ml_collections.ConfigDict(dict(sampler="dpmpp_3m", steps=2000,
                                                 schedule="karras", sigma_min=1e-4))
    c.fit_last = 3
    c.dtype = "float64"
    c.feature_extractor = ""
    return c
