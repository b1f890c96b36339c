"""The seeds front end (sample.py): an output depends on its own seed only, the initial
noise is what the docs say, per-seed conditioning is vmapped, errors are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sampler_refs as R
from diffjax.diffusion import schedules
from diffjax.diffusion.gaussian_mixture import make_gaussian_mixture
from diffjax.diffusion.sample import sample

GM = make_gaussian_mixture(shape=(3, 2), n_components=3, seed=0)
SIGMAS = schedules.make_sigmas("karras", 6, R.TRAIN_SIGMAS, sigma_min=0.02, sigma_max=20.0)
# Equality between a batched (vmapped) and an unbatched run is up to float reassociation
# of XLA's vectorised ops (rule 1 of DESIGN.md); 1e-5 absolute on values of order 1-10,
# far below the O(1) difference between seeds which the tests also assert.
ATOL = 1e-5


@pytest.mark.parametrize("sampler,options", [("euler_ancestral", {}),
                                             ("heun", {"s_churn": 1.0}), ("lms", {})])
def test_batch_equals_single_seed_calls(sampler, options):
    run = jax.jit(lambda seeds: sample(GM.denoise, (3, 2), seeds, sampler, SIGMAS,
                                       options=options))
    batch = np.asarray(run(jnp.arange(8)))
    assert batch.shape == (8, 3, 2)
    singles = np.stack([np.asarray(run(jnp.asarray([s])))[0] for s in range(8)])
    np.testing.assert_allclose(batch, singles, rtol=0, atol=ATOL)
    # the same seed at another position and batch size
    other = np.asarray(run(jnp.asarray([5, 2, 7, 0, 3, 1, 6, 4])))
    np.testing.assert_allclose(other, batch[[5, 2, 7, 0, 3, 1, 6, 4]], rtol=0, atol=ATOL)
    assert min(np.abs(batch[i] - batch[j]).max() for i in range(8) for j in range(i)) > 1e-2


@pytest.mark.parametrize("init_scale", ["ve", "vp"])
def test_initial_noise_and_sampler_key(init_scale):
    """With D = 0 one Euler step maps x to x * sigma_1 / sigma_0, so x_T is recoverable:
    it must be normal(fold_in(key(seed), 0)) * sigma_0 ('ve') or * sqrt(1 + sigma_0^2)."""
    sig = jnp.asarray([8.0, 2.0], jnp.float32)
    out = sample(lambda x, s: jnp.zeros_like(x), (4,), [3, 11], "euler", sig,
                 init_scale=init_scale)
    scale = 8.0 if init_scale == "ve" else np.sqrt(65.0)
    for row, seed in zip(np.asarray(out), (3, 11)):
        z = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0), (4,))
        np.testing.assert_allclose(row * 8.0 / 2.0, np.asarray(z) * scale, rtol=1e-6)
    # the sampler's key is fold_in(key(seed), 1): euler_ancestral's step-0 noise with D = x
    # (d = 0) is the only change, z * sigma_up.
    sig2 = jnp.asarray([8.0, 2.0, 0.5], jnp.float32)
    got = np.asarray(sample(lambda x, s: x, (4,), [3], "euler_ancestral", sig2))[0]
    key = jax.random.fold_in(jax.random.key(3), 1)
    x = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(3), 0), (4,))) * 8.0
    for i, (s, sn) in enumerate([(8.0, 2.0), (2.0, 0.5)]):
        su = min(sn, np.sqrt(sn ** 2 * (s ** 2 - sn ** 2) / s ** 2))
        x = x + np.asarray(jax.random.normal(jax.random.fold_in(key, i), (4,))) * su
    np.testing.assert_allclose(got, x, rtol=1e-5)


def test_cond_is_vmapped_with_seeds():
    def den(x, s, c):
        return GM.denoise(x, s) + c["shift"]
    cond = {"shift": jnp.arange(4, dtype=jnp.float32)[:, None, None] * jnp.ones((4, 3, 2))}
    run = jax.jit(lambda seeds, c: sample(den, (3, 2), seeds, "euler", SIGMAS, cond=c))
    batch = np.asarray(run(jnp.arange(4), cond))
    for i in range(4):
        one = np.asarray(run(jnp.asarray([i]), jax.tree.map(lambda a: a[i:i + 1], cond)))[0]
        np.testing.assert_allclose(batch[i], one, rtol=0, atol=ATOL)
    # with D = cond_i the last Euler step (to sigma 0) returns D: output i is exactly cond_i
    target = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 2)), jnp.float32)
    out = sample(lambda x, s, c: c + 0 * x, (3, 2), jnp.arange(4), "euler", SIGMAS,
                 cond=target)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(target))


def test_bad_input_is_named():
    den = GM.denoise
    with pytest.raises(ValueError, match="unknown sampler 'eulr'; valid: .*euler"):
        sample(den, (3, 2), [0], "eulr", SIGMAS)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sample(den, (3, 2), [0], "euler", jnp.asarray([1.0]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(den, (3, 2), [0], "euler", jnp.asarray([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="'euler' has no option.*'eta'"):
        sample(den, (3, 2), [0], "euler", SIGMAS, options={"eta": 0.5})
    with pytest.raises(ValueError, match="lms order must be 1..4, got 7"):
        sample(den, (3, 2), [0], "lms", SIGMAS, options={"order": 7})
    with pytest.raises(ValueError, match="seeds must be 1-D"):
        sample(den, (3, 2), [[0, 1]], "euler", SIGMAS)
    with pytest.raises(ValueError, match="init_scale must be 've' or 'vp'"):
        sample(den, (3, 2), [0], "euler", SIGMAS, init_scale="edm")
    with pytest.raises(ValueError, match="cond must have a leading axis of len\\(seeds\\) = 2"):
        sample(lambda x, s, c: den(x, s), (3, 2), [0, 1], "euler", SIGMAS,
               cond=jnp.zeros((3, 5)))


@pytest.mark.parametrize("full_strength", [False, True])
def test_initial_state_from_an_image(full_strength):
    """FromImage: x_T is init + sigma_0 * the seed's own noise (the draw text-to-image
    scales; at full strength exactly text-to-image's VP x_T), RePaint blending feeds the
    denoiser the kept region as init + sigma * noise, and the kept region ends as init.
    With D = x the Euler derivative is x - D(blended x): zero in the repainted region, so
    that region keeps x_T."""
    from diffjax.diffusion.image_conditioning import FromImage
    init = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)), jnp.float32)
    keep = jnp.asarray([[1.0], [0.0], [1.0]], jnp.float32)
    sig = jnp.asarray([8.0, 2.0, 0.5], jnp.float32)
    start = FromImage(init, keep, full_strength=full_strength)
    out = np.asarray(sample(lambda x, s: x, (3, 2), [3, 11], "euler", sig,
                            initial_state=start))
    for row, seed in zip(out, (3, 11)):
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0), (3, 2))
        x_T = (np.asarray(noise) * np.sqrt(1.0 + 8.0 ** 2) if full_strength   # VP x_T
               else np.asarray(init + sig[0] * noise))
        np.testing.assert_array_equal(row[[0, 2]], np.asarray(init)[[0, 2]])
        np.testing.assert_allclose(row[1], x_T[1], rtol=1e-6)     # repainted: D = x there
    # without a mask nothing is blended: D = x keeps x_T everywhere
    plain = np.asarray(sample(lambda x, s: x, (3, 2), [3], "euler", sig,
                              initial_state=FromImage(init)))[0]
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(3), 0), (3, 2))
    np.testing.assert_allclose(plain, np.asarray(init + sig[0] * noise), rtol=1e-6)
