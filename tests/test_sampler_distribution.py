"""Stochastic samplers are right in distribution: on data whose exact denoiser is known, the
mean and variance of 20,000 samples from our sampler equal those of k-diffusion's OWN
`sampling.py` run with its default noise (dpmpp_sde / dpmpp_2m_sde / dpmpp_3m_sde: a
`BrownianTreeNoiseSampler` over the whole batch; the ancestral samplers: `torch.randn_like`).

Why against the reference's own code: a re-implementation shares its author's
simplifications (the old dpmpp_sde drew its two stages' noise independently and its test
re-implemented the same thing; its variance on N(0, 1) was 0.81 where k-diffusion gives
0.98). `test_the_check_sees_independent_stage_noise` shows that this test sees that bug.

Data: N(0, 1) and a 2-D, 3-component Gaussian mixture (`GaussianMixture.denoise` in JAX;
the same closed form in torch float64 for k-diffusion). Our side runs both in one batch of
40,000 seeds through `diffusion.sample.sample` (per-seed mixture parameters as `cond`; the
N(0, 1) data as N(0, I) in 2-D, first coordinate compared), so every (sampler, grid)
compiles once. Grids: Karras, sigma 0.03 .. 14.6 (SD's
range), 10 and 25 steps; both sides start from sigma_max * N(0, I).

Statistics, per dataset, grid and coordinate: with n = 20,000 independent samples a side,
z_mean = (m_a - m_b) / sqrt(v_a / n + v_b / n) and z_var = (v_a - v_b) / sqrt(se_a^2 + se_b^2)
with se^2 = (mu4 - v^2) / n, the large-n variance of the sample variance (mu4: the fourth
central moment, estimated from the same samples). Both are N(0, 1) when the distributions
agree; the bound is |z| <= 3 (the issue's). The seeds are fixed, so the test is
deterministic; with ~100 such z's about one in four seed choices would show a single
|z| in (3, 3.5] by chance, which is why the bound is not tighter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:  # dev extra: the reference is k-diffusion's own sampling.py (on the CPU torch)
    import torch

    import reference_imports
except ModuleNotFoundError:
    torch = None

from diffjax.diffusion import schedules
from diffjax.diffusion.gaussian_mixture import GaussianMixture
from diffjax.diffusion.sample import sample

N = 20_000
SIGMA_MIN, SIGMA_MAX = 0.03, 14.6
STEPS = (10, 25)
DATA = {
    "normal": GaussianMixture(np.zeros((3, 2), np.float32), np.ones(3, np.float32),
                              np.full(3, 1 / 3, np.float32)),
    "mixture": GaussianMixture(np.asarray([[-1.5, 0.5], [1.0, -1.0], [0.5, 1.5]], np.float32),
                               np.asarray([0.3, 0.5, 0.4], np.float32),
                               np.asarray([0.3, 0.5, 0.2], np.float32)),
}
# (our name, k-diffusion function, options on both sides)
SAMPLERS = [
    ("euler_ancestral", "sample_euler_ancestral", {}),
    ("dpm_2_ancestral", "sample_dpm_2_ancestral", {}),
    ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", {}),
    ("dpmpp_sde", "sample_dpmpp_sde", {}),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {}),
    ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {}),
    ("heun", "sample_heun", dict(s_churn=2.0)),
]


def _gm_denoise(x, sigma, c):
    """D(x, sigma) of the mixture whose (means, stds, weights) are this seed's `c`."""
    return GaussianMixture(*c).denoise(x, sigma)


def ours(name, steps, options, datasets=tuple(DATA)):
    """{dataset: [N, d] float64}, seeds 0..N-1 on the first dataset, N..2N-1 on the second.
    Alone, N(0, 1) runs in 1-D; with the mixture, as N(0, I) in 2-D."""
    sigmas = jnp.asarray(schedules.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), jnp.float32)
    dim = 1 if datasets == ("normal",) else 2
    gms = [DATA[k] for k in datasets]
    cond = tuple(np.concatenate([np.broadcast_to(getattr(gm, f), (N,) + getattr(gm, f).shape)
                                 for gm in gms]) for f in ("means", "stds", "weights"))
    cond = (cond[0][..., :dim],) + cond[1:]
    run = jax.jit(lambda seeds, cond: sample(_gm_denoise, (dim,), seeds, name, sigmas,
                                             cond=cond, options=options))
    out = np.asarray(run(jnp.arange(len(gms) * N, dtype=jnp.uint32), cond), np.float64)
    return {k: out[i * N:(i + 1) * N] for i, k in enumerate(datasets)}


def _torch_gm(gm):
    """k-diffusion's model(x, sigma * s_in) -> denoised: the mixture's exact denoiser, float64."""
    mu = torch.tensor(gm.means, dtype=torch.float64)                   # [K, d]
    s2 = torch.tensor(gm.stds, dtype=torch.float64) ** 2                # [K]
    logw = torch.log(torch.tensor(gm.weights, dtype=torch.float64))

    def model(x, sigma):
        var = s2 + sigma[:, None] ** 2                                  # [B, K]
        diff = x[:, None, :] - mu                                       # [B, K, d]
        logp = logw - 0.5 * mu.shape[1] * torch.log(var) - 0.5 * (diff ** 2).sum(-1) / var
        r = torch.softmax(logp, dim=-1)
        post = mu + (s2 / var)[..., None] * diff
        return (r[..., None] * post).sum(1)
    return model


@functools.lru_cache(maxsize=None)
def reference(kd_name, steps, options, data, seed):
    """k-diffusion's own sampler, vectorised in torch float64, with its default noise
    sampler (drawn from torch's global generator, seeded): N(0, 1) as 20,000 1-D samples;
    the mixture as two batches of 10,000 2-D samples (torchsde's BrownianTree costs 30x more
    per query above 2^15 elements; two independent batches are the same distribution)."""
    kd = reference_imports.k_diffusion_sampling()
    torch.manual_seed(seed)
    sigmas = torch.tensor(schedules.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX),
                          dtype=torch.float64)
    gm = DATA[data]
    if data == "normal":
        gm, batches = GaussianMixture(gm.means[:, :1], gm.stds, gm.weights), [(N, 1)]
    else:
        batches = [(N // 2, 2)] * 2
    return np.concatenate([getattr(kd, kd_name)(
        _torch_gm(gm), torch.randn(*b, dtype=torch.float64) * sigmas[0], sigmas,
        disable=True, **dict(options)).numpy() for b in batches])


def z_scores(a, b):
    """(z_mean, z_var) per coordinate of two independent samples [n, d] (module docstring)."""
    n_a, n_b = len(a), len(b)
    m_a, m_b, v_a, v_b = a.mean(0), b.mean(0), a.var(0), b.var(0)
    se_var = lambda x, v: (((x - x.mean(0)) ** 4).mean(0) - v ** 2) / len(x)  # noqa: E731
    z_mean = (m_a - m_b) / np.sqrt(v_a / n_a + v_b / n_b)
    z_var = (v_a - v_b) / np.sqrt(se_var(a, v_a) + se_var(b, v_b))
    return z_mean, z_var


# (steps, datasets): every sampler on both datasets at 10 steps; at 25 steps the samplers
# whose default noise is the Brownian tree (the costly queries, both sides), on N(0, 1).
CASES = [(name, kd_name, options, 10, tuple(DATA)) for name, kd_name, options in SAMPLERS]
CASES += [(name, kd_name, options, 25, ("normal",)) for name, kd_name, options in SAMPLERS
          if name.startswith("dpmpp_") and name.endswith("sde")]


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("name,kd_name,options,steps,datasets", CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_matches_kdiffusion_in_distribution(name, kd_name, options, steps, datasets):
    got = ours(name, steps, options, datasets)
    for data in datasets:
        want = reference(kd_name, steps, tuple(options.items()), data, seed=steps)
        z_mean, z_var = z_scores(got[data][:, :want.shape[1]], want)
        msg = (f"{name} {steps} steps on {data}: mean {got[data].mean(0)} vs {want.mean(0)}, "
               f"var {got[data].var(0)} vs {want.var(0)}, z_mean {z_mean}, z_var {z_var}")
        assert np.all(np.abs(z_mean) <= 3) and np.all(np.abs(z_var) <= 3), msg


@pytest.mark.parity
def test_the_check_sees_independent_stage_noise():
    """The old dpmpp_sde (independent normals per stage: noise="gaussian") is under-dispersed
    on N(0, 1) at 10 steps (issue: variance 0.63 vs k-diffusion's 0.90): the check above
    rejects it by a wide margin."""
    got = ours("dpmpp_sde", 10, dict(noise="gaussian"), ("normal",))["normal"]
    want = reference("sample_dpmpp_sde", 10, (), "normal", seed=10)
    _, z_var = z_scores(got, want)
    assert np.all(z_var < -10), (got.var(0), want.var(0), z_var)
