"""Shared helpers for sampler parity tests: the VP eps-model in torch and JAX, SD's scheduler
config, a diffusers-scheduler loop runner (with optional injected noise), and the VP<->VE
mapping between a diffusers trajectory and ours.

Conventions. diffusers' schedulers work on x_vp; ours on x_ve = x_vp / sqrt(abar_t) =
x_vp * sqrt(1 + sigma_t^2). Every model here is an eps-model in VP space `eps(x_vp, t)`;
`denoisers.vp_denoiser` turns its JAX twin into D(x_ve, sigma). torch runs in float64 so the
reference carries no rounding of its own; our side runs in float32 unless a test says so.
"""

from __future__ import annotations

import contextlib
import importlib

import jax
import jax.numpy as jnp
import numpy as np

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
except ModuleNotFoundError:
    torch = None

from diffjax.diffusion import denoisers, schedules

# SD 1.x scheduler config (scheduler_config.json of runwayml/stable-diffusion-v1-5).
SD_CONFIG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 num_train_timesteps=1000, steps_offset=1)
TRAIN_SIGMAS = schedules.sigmas_from_alphas_cumprod(schedules.alphas_cumprod_for())


# ----------------------------------------------------------------------------------------
# the "network": eps(x_vp, t) = A @ x_vp * f(t) + b * g(t)
# ----------------------------------------------------------------------------------------
class LinearEps:
    """A random linear VP eps-model with smooth time dependence, f(t) = 0.5 + t/2000,
    g(t) = cos(t/300). x may have any shape; A acts on the last axis (size `dim`)."""

    def __init__(self, dim: int = 6, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.A = rng.normal(0.0, 0.5 / np.sqrt(dim), (dim, dim))
        self.b = rng.normal(0.0, 0.3, dim)

    def torch(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return (x @ torch.tensor(self.A).T) * (0.5 + t / 2000) + torch.tensor(self.b) * torch.cos(t / 300)

    def jax(self, x, t):
        return ((x @ jnp.asarray(self.A, x.dtype).T) * (0.5 + t / 2000)
                + jnp.asarray(self.b, x.dtype) * jnp.cos(t / 300))

    def denoiser(self, train_sigmas=TRAIN_SIGMAS):
        """D(x_ve, sigma) for our samplers (the wrapper under test in test_denoisers)."""
        return denoisers.vp_denoiser(self.jax, train_sigmas)


def gm_eps_torch(gm, train_sigmas=TRAIN_SIGMAS):
    """The Gaussian mixture's exact denoiser as a VP eps-model for diffusers, evaluated in
    float64: eps = (x_ve - D(x_ve, sigma_t)) / sigma_t with x_ve = x_vp sqrt(1 + sigma_t^2)
    and sigma_t the log-sigma interpolation at (possibly fractional) t."""
    def eps(x_vp, t):
        with jax.enable_x64(True):
            s = float(schedules.t_to_sigma(jnp.asarray(float(t), jnp.float64), train_sigmas))
            x_ve = jnp.asarray(x_vp.numpy(), jnp.float64) * np.sqrt(1 + s * s)
            d = gm.denoise(x_ve, jnp.asarray(s, jnp.float64))
            return torch.tensor(np.asarray((x_ve - d) / s, np.float64))
    return eps


# ----------------------------------------------------------------------------------------
# VP <-> VE and grids
# ----------------------------------------------------------------------------------------
def vp_to_ve(x_vp, sigma):
    return np.asarray(x_vp) * np.sqrt(1.0 + np.asarray(sigma, np.float64) ** 2)


def ve_to_vp(x_ve, sigma):
    return np.asarray(x_ve) / np.sqrt(1.0 + np.asarray(sigma, np.float64) ** 2)


def grid_from(scheduler, final: str = "zero", train_sigmas=TRAIN_SIGMAS) -> np.ndarray:
    """Our sigma grid for the timesteps a diffusers scheduler visits (second-order schedulers
    list repeated/interleaved timesteps: only the distinct leading ones of each step are
    kept by dropping consecutive repeats). `final`: "zero" or "sigma_min"."""
    ts = np.asarray(scheduler.timesteps, np.float64)
    ts = ts[np.concatenate([[True], np.diff(ts) != 0])]
    return schedules.discrete_sigmas(train_sigmas, ts.round().astype(int), final)


# ----------------------------------------------------------------------------------------
# running diffusers
# ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def injected_noise(module_name: str, noises):
    """Replace `randn_tensor` in a diffusers scheduler module so its k-th call returns
    noises[k] (float64 torch): the scheduler then uses OUR per-step noise."""
    mod = importlib.import_module(f"diffusers.schedulers.{module_name}")
    original = mod.randn_tensor
    it = iter(noises)

    def fake(shape, *a, dtype=None, **k):
        z = next(it)
        assert tuple(z.shape) == tuple(shape), (z.shape, shape)
        return z.to(dtype or torch.float64)
    mod.randn_tensor = fake
    try:
        yield
    finally:
        mod.randn_tensor = original


def run_diffusers(scheduler, steps: int, x_t, eps_fn, step_kwargs=None, trajectory=False):
    """diffusers' loop: x = x_T * init_noise_sigma; for t: eps = eps_fn(scale_model_input(x, t), t);
    x = step(eps, t, x).prev_sample. Returns the final x (numpy float64), and with
    `trajectory` also the list of x after each `step` call."""
    scheduler.set_timesteps(steps)
    x = torch.tensor(np.asarray(x_t, np.float64)) * scheduler.init_noise_sigma
    xs = []
    for t in scheduler.timesteps:
        xin = scheduler.scale_model_input(x, t)
        x = scheduler.step(eps_fn(xin, t.double()), t, x, **(step_kwargs or {})).prev_sample
        xs.append(x.numpy().copy())
    return (x.numpy(), xs) if trajectory else x.numpy()


def rel_err(got, want) -> float:
    """max |got - want| / max |want|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
