"""FID features: images -> pytorch-fid's resize and scaling -> Inception pool3 [N, 2048].

pytorch-fid feeds `ToTensor()` images ([0, 1]) to `InceptionV3([3])`, which resizes them
bilinearly to 299x299 (align_corners=False, no antialias) and scales them to [-1, 1]
(2x - 1) before the network; `resize="clean"` swaps in clean-fid's antialiased bicubic
resize (`diffjax.metrics.resize`). Extraction is sharded over every device
(`diffjax.metrics.extract`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffjax.metrics.extract import ShardedMap, group_by_shape, to_unit_float
from diffjax.metrics.resize import RESIZES, resize_bilinear_torch, resize_clean
from diffjax.models.inception import InceptionConfig

INPUT_SIZE = 299


@dataclasses.dataclass
class InceptionFeatures:
    """Callable: images (uint8 or [0, 1] floats, [N, H, W, 3] or a list of any sizes) ->
    pool3 features float32 [N, config.features]."""

    params: dict
    config: InceptionConfig = InceptionConfig()
    resize: str = "pytorch"
    batch: int = 64
    devices: object = None

    def __post_init__(self):
        from diffjax.models.inception import FIDInceptionV3
        if self.resize not in RESIZES:
            raise ValueError(f"unknown FID resize {self.resize!r}; choose one of {RESIZES}")
        import jax
        net = FIDInceptionV3(self.config)
        # The network is compiled once (299x299); the resize once per input size.
        self._map = ShardedMap(lambda p, x: net.apply({"params": p}, 2 * x - 1),
                               self.params, self.batch, self.devices)
        self._resize = jax.jit(lambda x: resize_bilinear_torch(x, INPUT_SIZE))

    @classmethod
    def from_file(cls, path: str, config: InceptionConfig = InceptionConfig(),
                  allow_pickle: bool = False, **kw):
        """From pytorch-fid's weights (.safetensors / .npz of its keys, or its .pth pickle
        with `allow_pickle`: read tensors-only)."""
        from diffjax.weights.inception import load_inception
        return cls(load_inception(path, config, allow_pickle), config, **kw)

    @property
    def dim(self) -> int:
        return self.config.features

    def __call__(self, images, progress=None) -> np.ndarray:
        """Features of `images`, in order; `progress(n)` after every batch."""
        groups = group_by_shape(images)
        n = sum(len(idx) for idx, _ in groups)
        out = np.empty((n, self.dim), np.float32)
        for idx, x in groups:
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"expected RGB images [N, H, W, 3], got shape {x.shape}")
            if self.resize == "clean":
                x = resize_clean(x if x.dtype == np.uint8 else to_unit_float(x) * 255,
                                 INPUT_SIZE)
            elif x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
                x = np.concatenate([np.asarray(self._resize(to_unit_float(x[i:i + 256])))
                                    for i in range(0, len(x), 256)])
            out[idx] = self._map(to_unit_float(x), progress)
        return out
