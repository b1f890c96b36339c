"""Check an image against a `shapes` caption by image analysis (no learned model).

Why: the mini model's prompt accuracy must be measured by a program that knows nothing
about the model. The oracle reads back what `diffjax.data.shapes` draws:

1. background = per-channel median of the border pixels -> nearest background name;
2. figure colour = median of the pixels far from the background -> nearest colour name;
3. coverage alpha per pixel = projection of (pixel - bg) on (fg - bg) (not clipped to
   [0, 1], so that pixel noise averages out);
4. centre = alpha-weighted centroid (every shape is drawn with its centroid at its centre)
   -> 3x3 grid cell; for each shape, the radius that gives the measured area;
5. shape = the template (rendered by the same `shape_alpha`) closest to alpha in L2;
   size = that radius against the small/large threshold.

It is validated on >= 1,000 real renders in `tests/test_shapes_oracle.py`.
"""

from __future__ import annotations

import functools

import numpy as np

from diffjax.data import shapes as S


@functools.lru_cache(maxsize=None)
def _unit_area(shape: str) -> float:
    """Area of `shape` at radius 1 (fractions of side^2), measured on a fine render."""
    res = 256
    return float(S.shape_alpha(shape, 0.5, 0.5, 0.25, res).sum()) / (res * res) / 0.0625


def _nearest(table: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> str:
    names = list(table)
    d = [np.sum((np.asarray(table[n], np.float32) - rgb) ** 2) for n in names]
    return names[int(np.argmin(d))]


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by a 3x3 square, `steps` times (edges padded with False)."""
    for _ in range(steps):
        p = np.pad(mask, 1)
        mask = np.zeros_like(mask)
        for dy in range(3):
            for dx in range(3):
                mask = mask | p[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return mask


def _grid_index(v: float) -> int:
    return 0 if v < 1 / 3 else (1 if v < 2 / 3 else 2)


def analyze(image: np.ndarray) -> dict:
    """Attributes read off an RGB image (uint8 or float in [0, 1], [H, W, 3], H == W).

    Returns shape, colour, background, position, size (names as in `shapes`) plus the
    measurements (cx, cy, radius, template error, figure area) for diagnostics. An image
    without a figure gets shape/colour/position/size None.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError(f"oracle expects a square RGB image [H, H, 3], got shape {img.shape}")
    img = img.astype(np.float32)
    if np.issubdtype(np.asarray(image).dtype, np.floating):
        img = img * 255.0
    res = img.shape[0]
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(img - bg, axis=-1)
    out = {"background": _nearest(S.BACKGROUNDS, bg), "shape": None, "colour": None,
           "position": None, "size": None}
    if dist.max() < 40.0:  # nothing stands out from the background
        return out
    fg = np.median(img[dist > 0.6 * dist.max()], axis=0)
    # Refine both colours as means over the pixels clearly on either side: a mean carries
    # the same bias (e.g. from clipping noisy pixels at 0/255) as the pixels it is
    # compared with, a median does not.
    # The pixels are chosen by place, not by value (choosing by value biases the mean
    # under noise): background = 2+ px away from the figure, figure = its 1 px erosion.
    t = ((img - bg) @ (fg - bg)) / float((fg - bg) @ (fg - bg))
    near = _dilate(t > 0.3, 2)
    inner = ~_dilate(~(t > 0.5), 1)
    if (~near).sum() >= res and inner.any():
        bg, fg = img[~near].mean(axis=0), img[inner].mean(axis=0)
    axis = fg - bg
    # Not clipped to [0, 1]: pixel noise then averages out of the area and centroid instead
    # of adding a positive bias; the wide clip only bounds outliers (other colours).
    alpha = np.clip(((img - bg) @ axis) / float(axis @ axis), -1.0, 2.0)
    area = float(alpha.sum()) / (res * res)
    ys, xs = np.mgrid[0:res, 0:res]
    cx = float((alpha * (xs + 0.5)).sum() / alpha.sum()) / res
    cy = float((alpha * (ys + 0.5)).sum() / alpha.sum()) / res
    best, best_err, best_r = None, np.inf, 0.0
    for shape in S.SHAPES:
        r = float(np.sqrt(max(area, 0.0) / _unit_area(shape)))
        err = float(np.mean((S.shape_alpha(shape, cx, cy, r, res) - alpha) ** 2))
        if err < best_err:
            best, best_err, best_r = shape, err, r
    out.update(shape=best, colour=_nearest(S.COLOURS, fg),
               position=S.POSITIONS[3 * _grid_index(cy) + _grid_index(cx)],
               size="large" if best_r > S.SIZE_THRESHOLD else "small",
               cx=cx, cy=cy, radius=best_r, template_error=best_err, area=area)
    return out


ATTRIBUTES = ("shape", "colour", "background", "position", "size")


def check(image: np.ndarray, caption_or_attributes: str | dict) -> dict[str, bool]:
    """Per-attribute agreement of `image` with what a caption (or attribute dict) states.

    Attributes the caption does not state are left out; "all" is True when every stated
    attribute matches. A caption with no shape and no colour is an error (nothing to check).
    """
    want = (S.parse_caption(caption_or_attributes) if isinstance(caption_or_attributes, str)
            else dict(caption_or_attributes))
    stated = {k: want[k] for k in ATTRIBUTES if want.get(k) is not None}
    if not stated:
        raise ValueError(f"nothing to check: {caption_or_attributes!r} states none of "
                         f"{ATTRIBUTES}")
    got = analyze(image)
    result = {k: got[k] == v for k, v in stated.items()}
    result["all"] = all(result.values())
    return result


def prompt_accuracy(images, captions) -> float:
    """Fraction of (image, caption) pairs on which every stated attribute matches."""
    images, captions = list(images), list(captions)
    if len(images) != len(captions) or not images:
        raise ValueError(f"prompt_accuracy needs as many images as captions (> 0), got "
                         f"{len(images)} images and {len(captions)} captions")
    return float(np.mean([check(im, c)["all"] for im, c in zip(images, captions)]))
