"""The exact benchmark: convergence error vs NFE of the deterministic samplers (and one
ancestral one) on a Gaussian mixture with a closed-form denoiser, SD's noise levels.

    diffjax compare --config diffjax.configs.compare.gmm_convergence --out runs/gmm

Expected result: table.md with RMSE against a 2000-step DPM-Solver++(3M) reference and
log-log slopes about -1 for euler/ddim, about -2 or steeper for the multistep solvers
once NFE is in their asymptotic range; frechet tables; rmse_*.png / frechet_*.png.
The committed study is experiments/results/gmm_convergence/.
"""

import ml_collections

from diffjax.config import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, seeds=256, dim=16, guidance=0.0)
    c = ml_collections.ConfigDict()
    c.name = "gmm_convergence"
    c.out = ""
    c.model = ml_collections.ConfigDict(dict(
        kind="gmm",            # "gmm" (exact benchmark) | "pipeline" (a weights.load source)
        path="",               # pipeline: preset name, diffusers folder or diffjax checkpoint
        seed=0,                # gmm: mixture seed; pipeline: random-init seed for presets
        dim=a.dim,             # gmm: data dimension
        n_components=8,        # gmm: mixture components (= classes for guidance)
        spread=1.0,            # gmm: std of the component means
        std=0.3,               # gmm: std of each component
    ))
    c.prompts = ""             # pipeline: '|'-separated prompts, cycled over the seeds
    c.samplers = ("euler", "ddim", "heun", "lms", "plms", "ipndm", "deis",
                  "dpm_solver_singlestep", "dpmpp_2m", "dpmpp_3m", "unipc", "unipc_bh1",
                  "euler_ancestral")
    # {sampler: {option: value}} (e.g. {"heun": {"s_churn": 40.0}}); `diffjax samplers`
    # lists every sampler's options and defaults
    c.sampler_options = ml_collections.ConfigDict()
    c.steps = (5, 10, 20, 40, 80)
    # 0: unconditional, 1: class-conditional, >1: CFG; several: --config.guidance_scales=1,3,7
    c.guidance_scales = (a.guidance,)
    c.schedules = ("karras",)
    c.seeds = a.seeds          # samples per cell: seeds 0..seeds-1, shared by every cell
    c.metrics = ("rmse", "frechet")
    # The reference: a fine deterministic solve from the same initial noise. sigma_min 0:
    # its last nonzero sigma is the cells' (all end with the same jump to sigma = 0, so the
    # error measures the solve down to sigma_min); > 0 (gmm, continuous schedule): it goes
    # down to this sigma, approximating the exact ODE endpoint at sigma = 0.
    c.reference = ml_collections.ConfigDict(dict(sampler="dpmpp_3m", steps=2000,
                                                 schedule="karras", sigma_min=0.0))
    c.fit_last = 3             # slopes fitted over the 3 finest cells of each sampler
    c.dtype = "float64"        # float64: errors down to ~1e-12 are resolved
    c.feature_extractor = ""   # pipeline + frechet: CLIP vision tower folder
    return c
