"""Data whose exact denoiser is known in closed form: an isotropic Gaussian mixture.

With data y ~ sum_k w_k N(mu_k, s_k^2 I) and x = y + sigma * n, the ideal denoiser is

    D(x, sigma) = E[y | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),
    r_k(x) ∝ w_k N(x; mu_k, (s_k^2 + sigma^2) I).

Samplers are checked on it (order of convergence, reference trajectories) and the sampler
comparison uses it as the exact benchmark, since the true data distribution is known.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    means: np.ndarray    # [K, *shape]
    stds: np.ndarray     # [K]
    weights: np.ndarray  # [K], sums to 1

    def denoise(self, x, sigma):
        """Exact E[y | x] at noise level sigma; x has the per-sample shape."""
        mu = jnp.asarray(self.means, x.dtype)
        s2 = jnp.asarray(self.stds, x.dtype) ** 2
        var = s2 + jnp.asarray(sigma, x.dtype) ** 2                      # [K]
        d = x.size
        diff = (x[None] - mu).reshape(mu.shape[0], -1)
        logp = (jnp.log(jnp.asarray(self.weights, x.dtype)) - 0.5 * d * jnp.log(var)
                - 0.5 * jnp.sum(diff ** 2, axis=-1) / var)
        r = jax.nn.softmax(logp)                                          # [K]
        post = mu + (s2 / var).reshape(-1, *([1] * x.ndim)) * (x[None] - mu)
        return jnp.tensordot(r, post, axes=1)

    def sample(self, key, n):
        """n exact draws from the data distribution."""
        kc, kn = jax.random.split(key)
        comp = jax.random.choice(kc, len(self.weights), (n,), p=jnp.asarray(self.weights))
        noise = jax.random.normal(kn, (n, *self.means.shape[1:]))
        mu = jnp.asarray(self.means)[comp]
        std = jnp.asarray(self.stds)[comp].reshape(-1, *([1] * (noise.ndim - 1)))
        return mu + std * noise


def make_gaussian_mixture(shape=(4,), n_components=3, seed=0, spread=1.0, std=0.3):
    """A fixed random mixture: means ~ N(0, spread^2), equal stds, Dirichlet-ish weights."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, spread, (n_components, *shape)).astype(np.float32)
    stds = np.full((n_components,), std, np.float32)
    w = rng.uniform(0.5, 1.5, n_components)
    return GaussianMixture(means, stds, (w / w.sum()).astype(np.float32))
