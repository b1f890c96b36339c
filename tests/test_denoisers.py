"""denoisers.py: eps / v / x0 networks -> D(x, sigma) against diffusers' own conversion
(EulerDiscreteScheduler's pred_original_sample), dtypes, named errors.
"""

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
from diffjax.diffusion import denoisers, schedules

MODEL = R.LinearEps(dim=8, seed=7)
X = np.random.default_rng(3).normal(size=(2, 8)) * 3.0      # VE-space latent, any shape


@pytest.mark.parity
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("timestep", [951, 501, 1])
def test_wrapper_matches_diffusers_pred_original(prediction_type, timestep):
    """diffusers' Euler step computes x0 from the network output at (scale_model_input(x),
    t); our D(x, sigma_t) must give the same x0. 1e-6 relative: ours float32, diffusers'
    float64 arithmetic on float32 sigmas (their float32 alphas_cumprod moves sigma by
    ~3e-6 relative, which the test avoids by feeding both the same sigma)."""
    sched = diffusers.EulerDiscreteScheduler(**R.SD_CONFIG, timestep_spacing="leading",
                                             prediction_type=prediction_type)
    sched.set_timesteps(20)
    i = int(np.nonzero(sched.timesteps.numpy() == timestep)[0][0])
    sigma = float(sched.sigmas[i])
    x = torch.tensor(X)
    out = MODEL.torch(sched.scale_model_input(x, sched.timesteps[i]), torch.tensor(float(timestep)))
    want = sched.step(out, sched.timesteps[i], x).pred_original_sample.numpy()
    # the same train sigmas as diffusers (float32-derived), so t(sigma) is the same integer.
    train = np.sqrt((1 - sched.alphas_cumprod.numpy().astype(np.float64))
                    / sched.alphas_cumprod.numpy().astype(np.float64))
    den = denoisers.vp_denoiser(MODEL.jax, train, prediction_type)
    got = np.asarray(den(jnp.asarray(X, jnp.float32), jnp.float32(sigma)))
    assert R.rel_err(got, want) <= 1e-6


@pytest.mark.parity
def test_v_prediction_sampler_end_to_end():
    """Euler on a v-prediction network through our wrapper = diffusers' Euler loop."""
    sched = diffusers.EulerDiscreteScheduler(**R.SD_CONFIG, timestep_spacing="leading",
                                             prediction_type="v_prediction")
    x_t = np.random.default_rng(4).normal(size=8)
    want = R.run_diffusers(sched, 15, x_t, MODEL.torch)
    from diffjax.diffusion.samplers.classic import sample_euler
    den = denoisers.vp_denoiser(MODEL.jax, R.TRAIN_SIGMAS, "v_prediction")
    sigmas = schedules.make_sigmas("leading", 15, R.TRAIN_SIGMAS)
    got = np.asarray(jax.jit(lambda x: sample_euler(den, x, sigmas))(
        jnp.asarray(x_t * float(sched.init_noise_sigma), jnp.float32)))
    # 1e-5: float32 over 15 steps vs float64 (same budget as the sampler parity tests).
    assert R.rel_err(got, want) <= 1e-5


def test_bf16_network_keeps_float32_state():
    den = denoisers.vp_denoiser(lambda x, t: MODEL.jax(x.astype(jnp.bfloat16),
                                                      t.astype(jnp.bfloat16)),
                                R.TRAIN_SIGMAS)
    out = den(jnp.asarray(X, jnp.float32), jnp.float32(2.0))
    assert out.dtype == jnp.float32


def test_bad_prediction_type_is_named():
    with pytest.raises(ValueError, match="prediction_type 'eps' is not one of"):
        denoisers.vp_denoiser(MODEL.jax, R.TRAIN_SIGMAS, "eps")
