"""Encode a training set's images once, so the UNet trainer reads latents instead of
running the frozen VAE encoder on every batch (`train.cache_latents`).

Why: the encoder's output for an example never changes during a UNet run (frozen VAE,
posterior mean, deterministic pixels), yet without a cache it runs on every batch of every
epoch, and the images are decoded from their records again each time. On the mini recipe
(32px `shapes`, 2-core CPU) that was about a fifth of a UNet step; the cache costs one
encoder pass over the set. Only for deterministic preprocessing (center crop, no flip: a
random crop or flip gives other pixels each epoch) and a set whose latents fit in host
memory (MAX_CACHE_BYTES); each process encodes the whole set.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from diffjax.data import pipeline

MAX_CACHE_BYTES = 8 << 30


class LatentSource:
    """Random-access source of {"latent": f32 [h, w, c], "caption": str}: what
    `pipeline.make_dataset` reads with `PipelineConfig(latents=True)`; example i is example
    i of the encoded source, so the shuffle, the data position and resume are unchanged."""

    def __init__(self, latents: np.ndarray, captions: Sequence[str]):
        if len(latents) != len(captions):
            raise ValueError(f"{len(latents)} latents but {len(captions)} captions")
        self.latents, self.captions = np.asarray(latents), list(captions)
        self.latents.flags.writeable = False  # examples are views: nothing may edit the cache

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        return {"latent": self.latents[i], "caption": self.captions[i]}


def encode_source(source: Sequence[dict], encode: Callable[[np.ndarray], np.ndarray],
                  latent_shape: tuple[int, ...], cfg: pipeline.PipelineConfig, *,
                  batch_size: int = 256, progress: bool = True) -> LatentSource:
    """Every example of `source` through the pipeline's pixel preprocessing and `encode`
    ([B, R, R, 3] pixels in [-1, 1] -> [B, *latent_shape], the trainer's scaled latents),
    in order, `batch_size` at a time."""
    if cfg.crop != "center" or cfg.flip:
        raise ValueError(f"train.cache_latents needs deterministic pixels: data.crop "
                         f"'center' and data.flip False, got crop={cfg.crop!r}, "
                         f"flip={cfg.flip}")
    n = len(source)
    size = n * int(np.prod(latent_shape)) * 4
    if size > MAX_CACHE_BYTES:
        raise ValueError(f"train.cache_latents: {n} latents of shape {tuple(latent_shape)} "
                         f"take {size / 2**30:.1f} GiB of host memory, over the "
                         f"{MAX_CACHE_BYTES / 2**30:.0f} GiB limit; set it False")
    from tqdm import tqdm
    pixels_of = pipeline.preprocess(dataclasses.replace(cfg, caption_dropout=0.0))  # no rng
    latents = np.empty((n, *latent_shape), np.float32)
    captions = []
    for start in tqdm(range(0, n, batch_size), desc="caching latents", unit="batch",
                      disable=not progress):
        rows = [pixels_of(source[i], None) for i in range(start, min(start + batch_size, n))]
        pixels = np.zeros((batch_size, cfg.resolution, cfg.resolution, 3), np.float32)
        pixels[:len(rows)] = np.stack([r["image"] for r in rows])  # last batch: padded
        latents[start:start + len(rows)] = np.asarray(encode(pixels))[:len(rows)]
        captions += [r["caption"] for r in rows]
    return LatentSource(latents, captions)
