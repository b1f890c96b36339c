"""Feature extraction over every device: one jitted network, the image axis sharded.

Why: a metric over 5,000-30,000 images is a pure data-parallel map; the network's params are
replicated (feature extractors are < 1 GB) and the image axis is split over all devices of
a 1-D mesh. Each image's features depend only on that image, so the features are the same
on 1 and on 8 devices (up to float reassociation inside a convolution; tested). The batch is
rounded up to a multiple of the device count and the tail padded by repeating the last
image, so one shape is compiled per input size. The map runs under
`jax.default_matmul_precision("highest")`: convolutions and matmuls in full float32 on
every backend (TPU's default bf16 passes would move a FID in its second digit).
"""

from __future__ import annotations

import numpy as np


def device_mesh(devices=None):
    """A 1-D mesh ('batch',) over `devices` (default: every device of the process)."""
    import jax
    from jax.sharding import Mesh
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("batch",))


class ShardedMap:
    """`fn(params, x[B, ...]) -> pytree of [B, ...]` applied in fixed batches over a mesh."""

    def __init__(self, fn, params, batch: int = 64, devices=None):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec as P
        self.mesh = device_mesh(devices)
        n = self.mesh.size
        self.batch = max(n, -(-batch // n) * n)
        self._rows = NamedSharding(self.mesh, P("batch"))
        replicated = NamedSharding(self.mesh, P())
        self.params = jax.device_put(params, replicated)
        self._fn = jax.jit(fn, in_shardings=(replicated, self._rows),
                           out_shardings=self._rows)

    def __call__(self, x, progress=None):
        """fn over x [N, ...] (numpy) in batches; numpy out, N rows. `progress(n)` is
        called after each batch with the number of real rows done."""
        import jax
        x = np.asarray(x)
        if not len(x):
            raise ValueError("no images to extract features from")
        outs = []
        for i in range(0, len(x), self.batch):
            chunk = x[i:i + self.batch]
            real = len(chunk)
            if real < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - real, 0)])
            with jax.default_matmul_precision("highest"):
                out = self._fn(self.params, jax.device_put(chunk, self._rows))
            outs.append(jax.tree.map(lambda a: np.asarray(a)[:real], out))
            if progress is not None:
                progress(real)
        return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def group_by_shape(images) -> list[tuple[list[int], np.ndarray]]:
    """A list of images [H, W, C] (sizes may differ) or an array [N, H, W, C] -> (indices,
    stacked array) per distinct shape, in first-seen order: one compiled shape per size."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [(list(range(len(images))), images)]
    groups: dict[tuple, list[int]] = {}
    images = [np.asarray(im) for im in images]
    for i, im in enumerate(images):
        if im.ndim != 3:
            raise ValueError(f"image {i} has shape {im.shape}; expected [H, W, C]")
        groups.setdefault((im.shape, im.dtype.str), []).append(i)
    return [(idx, np.stack([images[i] for i in idx])) for idx in groups.values()]


def to_unit_float(x) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1] as torchvision's ToTensor (x / 255); floats kept."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    return x.astype(np.float32)
