"""The per-seed Brownian path (diffusion/brownian.py): a function of (key, sigma) only, with
Brownian increments: variance = the interval's length, disjoint intervals uncorrelated,
overlapping ones correlated as sqrt(overlap ratio). 8,000 seeds: the variance ratios have
standard error sqrt(2 / 8000) = 0.016, so the bound 0.06 is ~4 standard errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.brownian import BrownianNoise

SIGMAS = (1e-7, 0.03, 0.0312, 0.5, 3.0, 14.6, 80.0, 70000.0)


def _values(n_seeds, shape=()):
    def one(seed):
        tree = BrownianNoise(jax.random.key(seed), jnp.zeros(shape))
        return jnp.stack([tree.value(s) for s in SIGMAS])
    return np.asarray(jax.jit(jax.vmap(one))(jnp.arange(n_seeds, dtype=jnp.uint32)),
                      np.float64)


def test_increments_are_brownian():
    w = _values(8000)                                             # [seeds, points]
    t = np.asarray(SIGMAS)
    assert np.all(np.abs(w.var(0) / t - 1) < 0.06), w.var(0) / t
    inc = np.diff(w, axis=1)
    assert np.all(np.abs(inc.var(0) / np.diff(t) - 1) < 0.06), inc.var(0) / np.diff(t)
    corr = np.corrcoef(inc.T) - np.eye(inc.shape[1])
    assert np.abs(corr).max() < 0.05, corr
    # overlapping: W(3) - W(14.6) and W(0.5) - W(14.6), corr sqrt(11.6 / 14.1)
    a, b = w[:, 4] - w[:, 5], w[:, 3] - w[:, 5]
    assert abs(np.corrcoef(a, b)[0, 1] - np.sqrt(11.6 / 14.1)) < 0.02


def test_value_depends_only_on_key_and_sigma():
    """Same value in any query order, inside another grid, and per element regardless of
    what else is queried; W(0) = 0; different elements and seeds differ."""
    @jax.jit
    def run():
        tree = BrownianNoise(jax.random.key(3), jnp.zeros((2, 3)))
        other = BrownianNoise(jax.random.key(4), jnp.zeros((2, 3)))
        return dict(a=jnp.stack([tree.value(s) for s in (0.5, 2.0, 0.03)]),
                    b=jax.vmap(tree.value)(jnp.asarray([0.03, 0.7, 2.0, 0.5])),
                    zero=tree.value(0.0), other=other.value(2.0), z=tree(2.0, 0.5))
    r = jax.tree.map(np.asarray, run())
    a, b = r["a"], r["b"]
    np.testing.assert_array_equal(a[0], b[3])
    np.testing.assert_array_equal(a[2], b[0])
    np.testing.assert_array_equal(a[1], b[2])
    np.testing.assert_array_equal(r["zero"], 0.0)
    assert len(np.unique(a[1])) == 6
    assert not np.allclose(r["other"], a[1])
    # the normalised increment, k-diffusion's sign: (W(sigma_next) - W(sigma)) / sqrt(dt)
    np.testing.assert_allclose(r["z"], (a[0] - a[1]) / np.sqrt(1.5), rtol=1e-5)


def test_sde_samples_converge_as_steps_grow():
    """The point of the path: the same seeds on Karras grids of 50 and 100 steps nearly
    agree with noise="brownian" (RMS change 0.016; 0.039 from 25 to 50 steps, 0.008 from
    100 to 200: a limit; 256 seeds, 2-D mixture, dpmpp_2m_sde), while independent per-step
    normals give unrelated samples on every grid (RMS change ~0.58 whatever the steps)."""
    from diffjax.diffusion import schedules
    from diffjax.diffusion.gaussian_mixture import make_gaussian_mixture
    from diffjax.diffusion.sample import sample
    gm = make_gaussian_mixture(shape=(2,), n_components=3, seed=0)
    seeds = jnp.arange(256, dtype=jnp.uint32)

    def run(steps, noise):
        sigmas = jnp.asarray(schedules.karras_sigmas(steps, 0.03, 14.6), jnp.float32)
        return np.asarray(jax.jit(lambda s: sample(gm.denoise, (2,), s, "dpmpp_2m_sde", sigmas,
                                                   options=dict(noise=noise)))(seeds))
    rms = lambda a, b: float(np.sqrt(((a - b) ** 2).mean()))  # noqa: E731
    assert rms(run(50, "brownian"), run(100, "brownian")) < 0.03
    assert rms(run(50, "gaussian"), run(100, "gaussian")) > 0.3
