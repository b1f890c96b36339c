"""Writing images so that nothing is lost or half-written: PNG + metadata, atomically.

Every PNG carries its generation parameters in a `parameters` text chunk in the format
AUTOMATIC1111-style readers understand (prompt, "Negative prompt: ...", then
"Steps: .., Sampler: .., CFG scale: .., Seed: .., Size: WxH, Model: ..") plus a `diffjax`
chunk with the same as JSON. Files are written to a temporary name and renamed, so a job
killed at any moment leaves only complete PNGs; paths go through etils `epath`, so
`gs://bucket/run` works as an output directory.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping

import numpy as np
from PIL import Image, PngImagePlugin


def to_uint8(images) -> np.ndarray:
    """[..., H, W, 3] floats in [0, 1] -> uint8 (round half to even, clipped)."""
    return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def a1111_parameters(meta: Mapping) -> str:
    """The A1111 `parameters` text: prompt, negative prompt, then 'Key: value' pairs with
    A1111's sampler and schedule names and hashes (`diffjax.a1111.parameters_text`)."""
    from diffjax.a1111 import parameters_text
    return parameters_text(meta)


def png_bytes(image_uint8: np.ndarray, meta: Mapping) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(meta))
    info.add_text("diffjax", json.dumps(dict(meta), sort_keys=True))
    buf = io.BytesIO()
    Image.fromarray(image_uint8).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def atomic_write(path, data: bytes | str) -> None:
    """Write to `<path>.tmp-<pid>` then rename: readers never see a partial file. A failed
    write (a full disk: ENOSPC) removes its temporary file and raises; the target is then
    untouched."""
    from etils import epath
    path = epath.Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_lines(path, lines) -> None:
    """`atomic_write` of text lines produced lazily (an index of millions of rows is never
    one string)."""
    from etils import epath
    path = epath.Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        tmp.replace(path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def png_matches(path, meta: Mapping, ignore: tuple[str, ...] = ("version",)) -> bool:
    """Whether the PNG at `path` decodes completely and its `diffjax` metadata equals `meta`
    (keys in `ignore` aside): how a resumed job tells a finished file from a truncated,
    corrupted or foreign one."""
    try:
        with Image.open(path) as im:
            im.load()                                 # decodes every row: truncation fails
            got = json.loads(im.text["diffjax"])
    except (OSError, SyntaxError, ValueError, KeyError, AttributeError):
        return False
    want = json.loads(json.dumps(dict(meta)))
    for key in ignore:
        got.pop(key, None)
        want.pop(key, None)
    return got == want


def read_png_metadata(path) -> dict:
    """The `diffjax` JSON chunk of a PNG written by `png_bytes`."""
    with Image.open(path) as im:
        return json.loads(im.text["diffjax"])
