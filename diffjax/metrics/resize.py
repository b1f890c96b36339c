"""The input resizes of the FID tools, reproduced exactly (a FID moves with its resize).

- "pytorch" (pytorch-fid): `F.interpolate(x, (299, 299), mode="bilinear",
  align_corners=False)` on [0, 1] floats: no antialiasing when it shrinks, which is why
  `jax.image.resize` (antialiased) cannot stand in. Written as two interpolation matrices
  (rows x columns), built with torch's source-index rule: src = (dst + 0.5) * in / out - 0.5,
  clamped at 0, neighbours floor(src) and min(floor(src) + 1, in - 1).
- "clean" (clean-fid, Parmar et al. 2022): PIL's antialiased bicubic on each channel as
  float32 in [0, 255] (`Image.fromarray(x, mode="F").resize(...)`), clipped to [0, 255];
  runs on the host (PIL), the result handed over in [0, 1].
"""

from __future__ import annotations

import numpy as np

RESIZES = ("pytorch", "clean")


def torch_bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of torch's bilinear (align_corners=False) along one axis."""
    scale = np.float32(size_in / size_out)
    dst = np.arange(size_out, dtype=np.float64)
    # torch: float32 scale, then scale * (dst + 0.5) - 0.5 as one fused multiply-add (the
    # product unrounded), clamped at 0; reproduced bit for bit through float64
    src = np.maximum(np.float64(scale) * (dst + 0.5) - 0.5, 0.0).astype(np.float32)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    w1 = (src - i0).astype(np.float32)
    w0 = np.float32(1) - w1
    m = np.zeros((size_out, size_in), np.float32)
    np.add.at(m, (np.arange(size_out), i0), w0)
    np.add.at(m, (np.arange(size_out), i1), w1)
    return m


def resize_bilinear_torch(x, size: int):
    """x [B, H, W, C] (jax or numpy, float) -> [B, size, size, C], as pytorch-fid resizes."""
    import jax
    import jax.numpy as jnp
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (size, size):
        return x
    rows = jnp.asarray(torch_bilinear_matrix(h, size))
    cols = jnp.asarray(torch_bilinear_matrix(w, size))
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", cols, x, precision=hi)


def resize_clean(images_uint8, size: int) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 [B, size, size, 3] in [0, 1], as clean-fid resizes."""
    from PIL import Image
    x = np.asarray(images_uint8)
    out = np.empty((x.shape[0], size, size, x.shape[-1]), np.float32)
    for b in range(x.shape[0]):
        for ch in range(x.shape[-1]):
            img = Image.fromarray(x[b, :, :, ch].astype(np.float32), mode="F")
            out[b, :, :, ch] = np.asarray(img.resize((size, size), resample=Image.BICUBIC))
    return np.clip(out, 0, 255) / np.float32(255)
