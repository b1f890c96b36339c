"""guidance.py: classifier-free guidance in one network call and guidance rescale against
diffusers' pipeline arithmetic and `rescale_noise_cfg`; scale 1 is one unguided call.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
except ModuleNotFoundError:
    torch = rescale_noise_cfg = None

import sampler_refs as R
from diffjax.diffusion import denoisers, guidance

MODEL = R.LinearEps(dim=8, seed=7)
X = np.random.default_rng(3).normal(size=(2, 8)) * 3.0      # VE-space latent, any shape


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
    guided = guidance.cfg_model(net, scale, rescale)
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
        got = np.asarray(guidance.rescale_guidance(jnp.asarray(g), jnp.asarray(c), 0.6))
    # float64 both; torch's unbiased std cancels in the ratio std_cond / std_guided.
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_scale_one_is_one_unguided_call():
    calls = []
    net = _cond_network(calls)
    x = jnp.asarray(X[0], jnp.float32)
    ctx = jnp.asarray(np.random.default_rng(8).normal(size=8), jnp.float32)
    t = jnp.float32(700.0)
    got = np.asarray(guidance.guided_model(net, 1.0, 0.7)(x, t, ctx, jnp.zeros(8)))
    assert calls == [(1, 8)]                         # the conditional prediction only
    want = np.asarray(net(x[None], t[None], ctx[None])[0])
    np.testing.assert_array_equal(got, want)
    calls.clear()
    guidance.guided_model(net, 2.0)(x, t, ctx, jnp.zeros(8))
    assert calls == [(2, 8)]
