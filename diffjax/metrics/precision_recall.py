"""Improved precision and recall (Kynkäänniemi et al. 2019), k = 3.

Each set's manifold is the union of balls around its points, each ball's radius the
distance to the point's k-th nearest neighbour in its own set. Precision = the fraction of
generated samples inside the real manifold (fidelity), recall = the fraction of real
samples inside the generated manifold (coverage). As torch-fidelity's `prc`: Euclidean
distances, the k-th neighbour counted after the point itself, "inside" meaning <=.
Distances in float64, in row blocks so that 50k x 50k never sits in memory.
"""

from __future__ import annotations

import numpy as np

NEIGHBORHOOD = 3
BLOCK = 2048


def _distances(a, b) -> np.ndarray:
    """Euclidean distances [len(a), len(b)] (float64, round-off below 0 clipped)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0))


def knn_radii(x, k: int = NEIGHBORHOOD) -> np.ndarray:
    """Distance of every row of x to its k-th nearest other row (the row itself is 0th)."""
    return np.concatenate([np.partition(_distances(x[i:i + BLOCK], x), k, axis=1)[:, k]
                           for i in range(0, len(x), BLOCK)])


def _coverage(points, centres, radii) -> float:
    """Fraction of `points` within radii[j] of some centres[j]."""
    inside = [(_distances(points[i:i + BLOCK], centres) <= radii[None, :]).any(1)
              for i in range(0, len(points), BLOCK)]
    return float(np.concatenate(inside).mean())


def precision_recall(generated, real, k: int = NEIGHBORHOOD) -> tuple[float, float]:
    """(precision, recall) of generated features [N, D] against real features [M, D]."""
    g = np.asarray(generated, np.float64)
    r = np.asarray(real, np.float64)
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
        raise ValueError(f"precision_recall: features {g.shape} and {r.shape} must be [N, D] "
                         "of one D")
    if min(len(g), len(r)) <= k:
        raise ValueError(f"precision_recall: k = {k} needs more than {k} features per set "
                         f"(have {len(g)} and {len(r)})")
    precision = _coverage(g, r, knn_radii(r, k))
    recall = _coverage(r, g, knn_radii(g, k))
    return precision, recall
