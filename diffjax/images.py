"""Image and mask inputs of img2img / inpainting: files and arrays checked into the
float32 arrays the pipeline takes, their hashes (recorded in PNG metadata), and output
sizes from an aspect ratio. No model here: `diffusion.image_conditioning` holds the
numerics, `pipeline` composes them.
"""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np


class ImageConditioningError(ValueError):
    """Bad init image, mask, strength or size request; the message names what and why."""


# ----------------------------------------------------------------------------------------
# sizes
# ----------------------------------------------------------------------------------------
def parse_aspect(aspect: str) -> float:
    """'16:9' (width:height), '1.5' -> width / height."""
    try:
        if ":" in aspect:
            w, h = aspect.split(":")
            value = float(w) / float(h)
        else:
            value = float(aspect)
    except (ValueError, ZeroDivisionError):
        raise ImageConditioningError(f"aspect {aspect!r} is not 'W:H' (e.g. 16:9) or a "
                                     f"positive number") from None
    if not (math.isfinite(value) and value > 0):
        raise ImageConditioningError(f"aspect {aspect!r} must be a positive ratio")
    return value


def nearest_size(aspect: str, pixels: int, factor: int) -> tuple[int, int]:
    """(height, width), multiples of `factor`, nearest to `pixels` pixels at `aspect`.

    Among the floor/ceil multiples around the exact real solution, the one minimising
    |log aspect error| + |log area error| (each relative error counts the same).
    """
    a = parse_aspect(aspect)
    if int(pixels) != pixels or pixels < factor * factor:
        raise ImageConditioningError(f"pixels {pixels} must be an integer >= factor^2 = "
                                     f"{factor * factor}")
    if factor < 1:
        raise ImageConditioningError(f"factor {factor} must be >= 1")
    h, w = math.sqrt(pixels / a), math.sqrt(pixels * a)
    cands = [(hh, ww) for hh in {max(factor, math.floor(h / factor) * factor),
                                  max(factor, math.ceil(h / factor) * factor)}
             for ww in {max(factor, math.floor(w / factor) * factor),
                        max(factor, math.ceil(w / factor) * factor)}]
    cost = lambda s: (abs(math.log(s[1] / s[0] / a)) + abs(math.log(s[0] * s[1] / pixels)),  # noqa
                      s)
    return min(cands, key=cost)


# ----------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------
def check_strength(strength) -> float:
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise ImageConditioningError(f"strength {strength} must be in [0, 1] (0 = return "
                                     f"the init image, 1 = ignore it)")
    return s


def _as_float_image(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise ImageConditioningError(f"float images must be in [0, 1], got range "
                                     f"[{a.min():.3g}, {a.max():.3g}]")
    return a


def check_init_image(image, height: int, width: int, resize: bool = True) -> np.ndarray:
    """The init image as float32 [height, width, 3] in [0, 1].

    image: uint8 or [0, 1] float array [H, W, 3] (RGBA drops its alpha), or a PIL image.
    Another size is resized (bicubic, with a warning) when `resize`, else an error.
    """
    from PIL import Image
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ImageConditioningError(f"init image must be [H, W, 3] RGB, got shape "
                                     f"{tuple(a.shape)}")
    a = _as_float_image(a)
    if a.shape[:2] != (height, width):
        if not resize:
            raise ImageConditioningError(
                f"init image is {a.shape[0]}x{a.shape[1]} (HxW) but the output is "
                f"{height}x{width}; resize it, or allow resizing")
        warnings.warn(f"init image {a.shape[0]}x{a.shape[1]} resized to {height}x{width} "
                      f"(bicubic)", stacklevel=2)
        pil = Image.fromarray(np.round(a * 255).astype(np.uint8))
        a = np.asarray(pil.resize((width, height), Image.BICUBIC), np.float32) / 255.0
    return np.ascontiguousarray(a, np.float32)


def check_mask(mask, height: int, width: int) -> np.ndarray:
    """The mask as float32 [height, width] of 0 (keep) / 1 (repaint), binarised at 0.5.

    mask: [H, W] or [H, W, 1], uint8 or [0, 1] float, or a PIL image of mode L / 1.
    A multi-channel mask or one of another size than the image is an error (a mask is
    not resized: a shifted edge would silently repaint the wrong pixels).
    """
    from PIL import Image
    if isinstance(mask, Image.Image):
        if mask.mode not in ("L", "1"):
            raise ImageConditioningError(f"mask must be single-channel (mode L or 1), got "
                                         f"PIL mode {mask.mode!r} with {len(mask.getbands())}"
                                         f" channels")
        mask = np.asarray(mask.convert("L"))
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ImageConditioningError(f"mask must be single-channel [H, W], got shape "
                                     f"{tuple(m.shape)}")
    if m.shape != (height, width):
        raise ImageConditioningError(f"mask is {m.shape[0]}x{m.shape[1]} (HxW) but the image"
                                     f" is {height}x{width}")
    return (_as_float_image(m) >= 0.5).astype(np.float32)


def _open_image(path: str, what: str):
    """A fully decoded PIL image, or an ImageConditioningError naming the file and what is
    wrong with it (missing, a folder, not an image, truncated)."""
    import os

    from PIL import Image, UnidentifiedImageError
    if not os.path.exists(path):
        raise ImageConditioningError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise ImageConditioningError(f"{what} {path!r} is a directory; expected an image file")
    try:
        im = Image.open(path)
        im.load()
    except UnidentifiedImageError:
        raise ImageConditioningError(f"{what} {path!r} is not an image PIL can read "
                                     "(expected PNG, JPEG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageConditioningError(f"{what} {path!r} cannot be decoded (truncated or "
                                     f"corrupted: {e})") from None
    return im


def load_image(path: str) -> np.ndarray:
    """An image file as uint8 [H, W, 3] (RGB) or [H, W] (single-channel modes)."""
    with _open_image(path, "init image") as im:
        if im.mode in ("L", "1", "I", "I;16", "F"):
            return np.asarray(im.convert("L"))
        if im.mode == "LA":
            raise ImageConditioningError(f"{path}: mode LA has 2 channels")
        return np.asarray(im.convert("RGB"))


def load_mask(path: str) -> np.ndarray:
    """A mask file as uint8; RGB files are refused by `check_mask` as multi-channel."""
    with _open_image(path, "mask") as im:
        if im.mode in ("L", "1", "I", "I;16", "F"):
            return np.asarray(im.convert("L"))
        return np.asarray(im.convert("RGB") if im.mode != "RGBA" else im)


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def array_sha256(a) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str((a.dtype.str, a.shape)).encode() + a.tobytes()).hexdigest()
