"""FD-DINOv2 features: images -> 224x224 -> ImageNet normalisation -> DINOv2 CLS [N, D].

FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics";
EDM2's headline metric) is the Fréchet distance on the final-layer-norm CLS token of
DINOv2 ViT-L/14. Preprocessing as their dgm-eval: torchvision `Resize((224, 224),
BICUBIC)` on PIL images (PIL's antialiased bicubic), `ToTensor`, ImageNet mean/std.
Extraction is sharded over every device (`diffjax.metrics.extract`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffjax.metrics.extract import ShardedMap
from diffjax.models.dinov2 import Dinov2Config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224


def preprocess(images, size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 images (any sizes) -> float32 [N, size, size, 3], ImageNet-normalised."""
    from PIL import Image
    out = []
    for im in images:
        im = np.asarray(im)
        if im.dtype != np.uint8:
            im = np.clip(np.rint(im.astype(np.float32) * 255), 0, 255).astype(np.uint8)
        if im.shape[:2] != (size, size):
            im = np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
        out.append(im.astype(np.float32) / np.float32(255))
    x = np.stack(out)
    return (x - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)


@dataclasses.dataclass
class Dinov2Features:
    """Callable: images -> CLS features float32 [N, hidden_size]."""

    params: dict
    config: Dinov2Config = Dinov2Config()
    size: int = INPUT_SIZE
    batch: int = 64
    devices: object = None

    def __post_init__(self):
        from diffjax.models.dinov2 import Dinov2Model
        net = Dinov2Model(self.config)
        self._map = ShardedMap(lambda p, x: net.apply({"params": p}, x)[1], self.params,
                               self.batch, self.devices)

    @classmethod
    def from_folder(cls, folder: str, **kw) -> "Dinov2Features":
        from diffjax.weights.dinov2 import load_dinov2
        config, params = load_dinov2(folder)
        return cls(params, config, **kw)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def __call__(self, images, progress=None) -> np.ndarray:
        return self._map(preprocess(images, self.size), progress)
