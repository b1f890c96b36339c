"""A per-seed virtual Brownian tree: one Brownian path W(sigma) per seed, queried anywhere.

Why: an SDE sampler's noise over a step (sigma -> sigma_next) is a Brownian increment. If
every step draws fresh normals, two grids of the same seed follow unrelated paths, so a
sample does not converge as the steps grow, and two stages inside one step (dpmpp_sde's
sigma -> sigma_r and sigma -> sigma_next) get independent noise where the SDE's increments
overlap and are correlated. k-diffusion queries a `torchsde.BrownianTree` instead
(`BrownianTreeNoiseSampler`); this is the same object in JAX, pure and stateless, so it runs
under jit, vmap and scan and depends only on the seed's key.

What it is, exactly. W is a standard Brownian motion indexed by sigma itself (k-diffusion's
default `transform`, the identity), W(0) = 0, built as a binary tree of Brownian bridges:

- The spine: W(2^16) = 2^8 z, then W(2^j) = W(2^(j+1)) / 2 + 2^((j+1)/2) / 2 z_j for
  j = 15 down to -24 (the bridge from W(0) = 0 to W(2^(j+1)) at its midpoint): 41 values,
  computed once per run (`BrownianNoise.__init__`).
- A query t in the block [2^j, 2^(j+1)) (or [0, 2^-24] below) descends DEPTH = 23 levels
  of bisection: a node [a, b] with W(a), W(b) known sets its midpoint from the bridge,
  W(m) = (W(a) + W(b)) / 2 + sqrt(b - a) / 2 z_node, and the child holding t continues.
  The leaves have width 2^(j - 23), the float32 spacing of the block's numbers, so every
  float32 sigma in [2^-24, 2^16) is a tree point: W there is exact Brownian motion (the
  leaf's linear interpolation only acts below 2^-24, at spacing 2^-47).
- Every z is one element's N(0, 1) from counter-based threefry: the seed's key gives a key
  per block (one hash per query), and node (level l, index n) of the block and element e
  hash the counter (2^l + n, e) under it (spine and W(2^16): counter (0, e)).
- Beyond 2^16 (no sampling grid goes there; a zero-terminal-SNR start at sigma = inf is
  taken by the front end without noise), W(t) = W(2^16) + sqrt(t - 2^16) z': exact for
  one point beyond, not a path there.

The value at t depends only on (key, t): not on the grid, the step count, the order of
queries, the batch, nor the elements' shape beyond each element having its own normals.
`BrownianNoise(key, like)(sigma, sigma_next)` is k-diffusion's normalised increment
(W(sigma_next) - W(sigma)) / sqrt(|sigma - sigma_next|): N(0, I) for one step, increments
over disjoint steps independent, over overlapping ones correlated as the SDE's.
Cost: DEPTH hashes per element per query (a UNet call costs 10^4 x more).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

J_MIN, J_MAX = -24, 16        # the spine: W(2^j) for j = J_MIN .. J_MAX
DEPTH = 23                    # bisection levels inside a block
_TAG = 0xFFFFFFFF


def _spine_matrix() -> np.ndarray:
    """W(2^j) = sum_k M[j, k] z_k: W(2^J_MAX) = 2^(J_MAX/2) z_J_MAX, then the bridge from
    W(0) = 0 to W(2^(j+1)) at its midpoint, W(2^j) = W(2^(j+1)) / 2 + 2^((j+1)/2) / 2 z_j."""
    n = J_MAX - J_MIN + 1
    m = np.zeros((n, n))
    m[-1, -1] = 2.0 ** (J_MAX / 2)
    for i in range(n - 2, -1, -1):
        j = J_MIN + i
        m[i] = m[i + 1] / 2
        m[i, i] = 2.0 ** ((j + 1) / 2) / 2
    return m


_SPINE = _spine_matrix()


def _normal_from_bits(bits):
    """N(0, 1) from 32 random bits: the inverse error function of a uniform on (-1, 1)
    with 23-bit resolution (as jax.random.normal)."""
    u = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0
    return jnp.sqrt(2.0) * jax.scipy.special.erfinv(u * 2.0 - 1.0 + 2.0 ** -23)


def _words(key2, counter, size):
    """2 `size` random words: threefry(key2, (counter, e)) for element e, first words then
    second words."""
    return threefry_2x32(key2, jnp.concatenate(
        [jnp.full((size,), counter, jnp.uint32), jnp.arange(size, dtype=jnp.uint32)]))


def _block_key(top, j):
    """The key pair of block j (J_MIN - 1 is [0, 2^J_MIN]; J_MAX the spine's top)."""
    return threefry_2x32(top, jnp.stack([(j - J_MIN + 1).astype(jnp.uint32),
                                         jnp.uint32(_TAG)]))


class BrownianNoise:
    """k-diffusion's BrownianTreeNoiseSampler for one seed: `noise(sigma, sigma_next)` is
    N(0, I) noise shaped like `like`, the normalised increment of the seed's path
    (W(sigma_next) - W(sigma)) / sqrt(|sigma - sigma_next|); `value(sigma)` is W itself,
    so a sampler can carry W(sigma_next) into the next step instead of recomputing it."""

    def __init__(self, key, like):
        self.shape, self.dtype = like.shape, like.dtype
        self.size = int(like.size)
        top = jax.random.bits(jax.random.fold_in(key, 0x42524F57), (2,), jnp.uint32)
        self.block_keys = jax.vmap(lambda j: _block_key(top, j))(   # blocks J_MIN-1 .. J_MAX
            jnp.arange(J_MIN - 1, J_MAX + 1))
        words = jax.vmap(lambda k: _words(k, 0, self.size))(self.block_keys[1:])
        z = _normal_from_bits(words[:, :self.size])                    # z_j, j = J_MIN .. J_MAX
        self.z_beyond = _normal_from_bits(words[-1, self.size:])
        self.spine = jnp.asarray(_SPINE, jnp.float32) @ z               # [41, size]: W(2^j)

    def value(self, sigma):
        """W(sigma), shaped like `like` (computed in float32)."""
        t = jnp.maximum(jnp.asarray(sigma, jnp.float32), 0.0)
        j = jnp.clip(jnp.frexp(t)[1] - 1, J_MIN - 1, J_MAX - 1).astype(jnp.int32)  # [2^j, 2^j+1)
        lo = jnp.where(j < J_MIN, 0.0, jnp.ldexp(jnp.float32(1.0), j))
        width = jnp.ldexp(jnp.float32(1.0), jnp.maximum(j, J_MIN))
        levels = jnp.arange(J_MIN, J_MAX + 1)
        wa = jnp.where(j < J_MIN, 0.0, ((levels == j)[:, None] * self.spine).sum(0))
        wb = ((levels == j + 1)[:, None] * self.spine).sum(0)
        key = ((jnp.arange(J_MIN - 1, J_MAX + 1) == j)[:, None] * self.block_keys).sum(
            0).astype(jnp.uint32)
        u = (jnp.minimum(t, 2.0 ** J_MAX) - lo) / width   # position in the block, [0, 1]
        depth = jnp.arange(DEPTH + 1, dtype=jnp.int32)
        n = jnp.floor(u * jnp.ldexp(jnp.float32(1.0), depth))      # node index per level
        counters = jnp.left_shift(jnp.int32(1), depth[:DEPTH]) + n[:DEPTH].astype(jnp.int32)
        z = _normal_from_bits(jax.vmap(lambda c: _words(key, c, self.size)[:self.size])(
            counters.astype(jnp.uint32)))

        def bisect(ends, a):    # bridge at the midpoint, then the child holding t
            wa, wb = ends
            z_l, half_sd, right = a
            wm = (wa + wb) / 2 + half_sd * z_l
            return (jnp.where(right, wm, wa), jnp.where(right, wb, wm)), None
        half_sd = jnp.sqrt(width * jnp.ldexp(jnp.float32(1.0), -depth[:DEPTH])) / 2
        (wa, wb), _ = jax.lax.scan(bisect, (wa, wb), (z, half_sd, n[1:] > 2 * n[:-1]))
        w = wa + (u * 2.0 ** DEPTH - n[DEPTH]) * (wb - wa)
        beyond = self.spine[-1] + jnp.sqrt(jnp.maximum(t - 2.0 ** J_MAX, 0.0)) * self.z_beyond
        w = jnp.where(t >= 2.0 ** J_MAX, beyond, jnp.where(t > 0, w, 0.0))
        return w.reshape(self.shape).astype(self.dtype)

    def __call__(self, sigma, sigma_next):
        return increment_noise(self.value(sigma), self.value(sigma_next), sigma, sigma_next)


def increment_noise(w, w_next, sigma, sigma_next):
    """The standard-normal noise of a step from the path's values at both ends:
    (W(sigma_next) - W(sigma)) / sqrt(|sigma - sigma_next|) (0 for an empty step)."""
    dt = jnp.abs(sigma - sigma_next)
    return jnp.where(dt > 0, (w_next - w) / jnp.sqrt(jnp.where(dt > 0, dt, 1.0)),
                     0.0).astype(w.dtype)
