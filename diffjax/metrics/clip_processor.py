"""transformers' `CLIPImageProcessor` (the preprocessing torchmetrics' CLIPScore applies),
in numpy: resize the shortest edge, centre-crop, rescale and normalise.

Read from a folder's `preprocessor_config.json` (`size.shortest_edge`, `crop_size`,
`image_mean`, `image_std`, `rescale_factor`, `do_*`). The steps, as transformers 5's
torchvision backend runs them on a uint8 image:
1. resize so the shortest edge is `shortest_edge` (the long edge int(S * long / short)),
   antialiased bicubic on uint8: PIL's bicubic here, one axis at a time as torchvision's
   uint8 kernel (ported from PIL) runs it: within 1 grey level of it; an image already of
   that size is left untouched, as both libraries leave it;
2. centre crop: top = int((H - h) / 2), left = int((W - w) / 2) (open_clip's torchvision
   CenterCrop rounds instead, and resizes PIL images in one call: `crop_offset`,
   `resize_passes`);
3. (x - mean / rescale_factor) / (std / rescale_factor) in float32 (the fused rescale).
Images already at the crop size skip 1-2, so feeding such pixels gives the processor's
pixels exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPProcessorConfig:
    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_center_crop: bool = True
    do_normalize: bool = True
    # 2: one axis at a time, as transformers' torchvision backend on uint8 tensors; 1: one
    # PIL resize call, as open_clip's torchvision transforms on PIL images
    resize_passes: int = 2
    # centre-crop offset: "floor" int((H - h) / 2) as transformers; "round" as
    # torchvision's CenterCrop (open_clip): int(round((H - h) / 2))
    crop_offset: str = "floor"

    @classmethod
    def from_file(cls, path: str) -> "CLIPProcessorConfig":
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        size, crop = d.get("size", {}), d.get("crop_size", {})
        if "shortest_edge" not in size and d.get("do_resize", True):
            raise ValueError(f"{path}: only size.shortest_edge resizing (CLIP's) is supported, "
                             f"got size {size}")
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        return cls(shortest_edge=size.get("shortest_edge", 224),
                   crop_height=crop.get("height", 224), crop_width=crop.get("width", 224),
                   mean=tuple(d.get("image_mean", OPENAI_MEAN)),
                   std=tuple(d.get("image_std", OPENAI_STD)),
                   rescale_factor=d.get("rescale_factor", 1 / 255),
                   do_resize=d.get("do_resize", True),
                   do_center_crop=d.get("do_center_crop", True),
                   do_normalize=d.get("do_normalize", True))

    @classmethod
    def from_folder(cls, folder: str) -> "CLIPProcessorConfig | None":
        """preprocessor_config.json in the folder or its feature_extractor/; None if absent."""
        for p in (os.path.join(folder, "preprocessor_config.json"),
                  os.path.join(folder, "feature_extractor", "preprocessor_config.json")):
            if os.path.exists(p):
                return cls.from_file(p)
        return None


def resize_shortest_edge(image: np.ndarray, size: int, passes: int = 2) -> np.ndarray:
    """uint8 [H, W, 3] -> shortest edge `size`, aspect kept (antialiased bicubic)."""
    from PIL import Image
    h, w = image.shape[:2]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    if (new_h, new_w) == (h, w):
        return image
    if passes == 1:
        return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
    # torchvision's uint8 kernel: the horizontal pass, rounded to uint8, then the vertical
    # (a single PIL resize may order the passes otherwise: up to 15 grey levels apart on
    # noise, where the first pass's overshoot is clipped)
    im = Image.fromarray(image).resize((new_w, h), Image.BICUBIC)
    return np.asarray(im.resize((new_w, new_h), Image.BICUBIC))


def center_crop(image: np.ndarray, height: int, width: int, offset: str = "floor"
                ) -> np.ndarray:
    """[H, W, C] -> [height, width, C] from the centre (zero padding if smaller)."""
    h, w = image.shape[:2]
    if height > h or width > w:
        top, left = max(height - h, 0) // 2, max(width - w, 0) // 2
        image = np.pad(image, ((top, max(height - h, 0) - top),
                               (left, max(width - w, 0) - left), (0, 0)))
        h, w = image.shape[:2]
    if offset == "round":
        top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    else:
        top, left = int((h - height) / 2.0), int((w - width) / 2.0)
    return image[top:top + height, left:left + width]


def preprocess(images, config: CLIPProcessorConfig) -> np.ndarray:
    """uint8 images [N, H, W, 3] (or a list of any sizes; floats in [0, 1] are quantised)
    -> pixel values float32 [N, crop_height, crop_width, 3] (NHWC)."""
    out = []
    for im in images:
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[-1] != 3:
            raise ValueError(f"expected RGB images [H, W, 3], got shape {im.shape}")
        if im.dtype != np.uint8:
            im = np.clip(np.rint(im.astype(np.float32) * 255), 0, 255).astype(np.uint8)
        if config.do_resize:
            im = resize_shortest_edge(im, config.shortest_edge, config.resize_passes)
        if config.do_center_crop:
            im = center_crop(im, config.crop_height, config.crop_width, config.crop_offset)
        x = im.astype(np.float32)
        if config.do_normalize:
            scale = np.float32(1.0 / config.rescale_factor)
            x = (x - np.float32(config.mean) * scale) / (np.float32(config.std) * scale)
        else:
            x = x * np.float32(config.rescale_factor)
        out.append(x)
    return np.stack(out)
