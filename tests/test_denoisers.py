"""denoisers.py: eps / v / x0 networks -> D(x, sigma) against diffusers' own conversion
(EulerDiscreteScheduler's pred_original_sample), classifier-free guidance in one network
call, guidance rescale against diffusers' `rescale_noise_cfg`, dtypes, named errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import diffusers
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
except ModuleNotFoundError:
    diffusers = torch = rescale_noise_cfg = None

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


def _cond_network(calls):
    """eps(x, t, ctx) = A x f(t) + ctx * g(t), recording the batch it was called with."""
    def net(x, t, ctx):
        calls.append(x.shape)
        return MODEL.jax(x, t[:, None]) + ctx * jnp.cos(t / 300)[:, None]
    return net


@pytest.mark.parity
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_cfg_one_call_and_matches_diffusers_guidance(rescale):
    calls = []
    net = _cond_network(calls)
    scale = 7.5
    guided = denoisers.cfg_model(net, scale, rescale)
    den = denoisers.vp_denoiser(guided, R.TRAIN_SIGMAS)
    x = jnp.asarray(X[0], jnp.float32)
    ctx = jnp.asarray(np.random.default_rng(8).normal(size=8), jnp.float32)
    unc = jnp.zeros(8, jnp.float32)
    sigma = jnp.float32(R.TRAIN_SIGMAS[700])
    got = np.asarray(den(x, sigma, ctx, unc))
    assert calls == [(2, 8)]                         # cond + uncond in ONE network call

    # diffusers' pipeline arithmetic in float64 torch on the two separate predictions.
    x_in = np.asarray(X[0]) / np.sqrt(1 + float(sigma) ** 2)
    t = 700.0
    e_c = MODEL.torch(torch.tensor(x_in), t) + torch.tensor(np.asarray(ctx, np.float64)) * np.cos(t / 300)
    e_u = MODEL.torch(torch.tensor(x_in), t)
    e = e_u + scale * (e_c - e_u)
    if rescale > 0:
        e = rescale_noise_cfg(e[None], e_c[None], guidance_rescale=rescale)[0]
    want = np.asarray(X[0]) - float(sigma) * e.numpy()
    # 1e-5: float32 network and guidance (scale 7.5 amplifies rounding of cond - uncond).
    assert R.rel_err(got, want) <= 1e-5


@pytest.mark.parity
def test_rescale_guidance_matches_diffusers_on_a_tensor():
    rng = np.random.default_rng(0)
    g, c = rng.normal(size=(4, 5, 3)) * 2, rng.normal(size=(4, 5, 3))
    want = rescale_noise_cfg(torch.tensor(g)[None], torch.tensor(c)[None], 0.6)[0].numpy()
    with jax.enable_x64(True):
        got = np.asarray(denoisers.rescale_guidance(jnp.asarray(g), jnp.asarray(c), 0.6))
    # float64 both; torch's unbiased std cancels in the ratio std_cond / std_guided.
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_bf16_network_keeps_float32_state():
    den = denoisers.vp_denoiser(lambda x, t: MODEL.jax(x.astype(jnp.bfloat16),
                                                      t.astype(jnp.bfloat16)),
                                R.TRAIN_SIGMAS)
    out = den(jnp.asarray(X, jnp.float32), jnp.float32(2.0))
    assert out.dtype == jnp.float32


def test_bad_prediction_type_is_named():
    with pytest.raises(ValueError, match="prediction_type 'eps' is not one of"):
        denoisers.vp_denoiser(MODEL.jax, R.TRAIN_SIGMAS, "eps")
