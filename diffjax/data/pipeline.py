"""grain input pipeline: random-access source -> shuffled, augmented, tokenized batches.

Why grain over a random-access source: every batch is a pure function of (seed, step).
The order is source -> shuffle(seed, reshuffled each epoch) -> repeat -> this process's
slice -> per-example random crop/flip/caption-dropout (rng seeded by the example's global
position) -> tokenize -> batch. So the iterator state is one integer, `get_state()` is a
JSON-able dict, and a resumed run sees exactly the batches it would have seen.

`source` is anything with `len` and `__getitem__` returning a dict (e.g.
`builders.load_source(dir, split)` or `tfds.data_source(name)[split]` of any installed tfds
dataset); `image_key` / `caption_key` choose the features.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import grain
import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does to each example; built from the train config."""

    batch_size: int  # per process
    resolution: int
    seed: int = 0
    crop: str = "center"  # "center" | "random"
    flip: bool = False  # random horizontal flip
    caption_dropout: float = 0.0  # probability of replacing the caption by "" (for CFG)
    image_key: str = "image"
    caption_key: str = "caption"
    num_epochs: int | None = None  # None: repeat forever
    drop_remainder: bool = True
    # Examples carry a precomputed VAE "latent" instead of an image (a
    # train.latent_cache.LatentSource): passed through as it is, no resize/crop/flip.
    latents: bool = False

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {self.resolution}")
        if self.crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {self.crop!r}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        if self.latents and (self.crop != "center" or self.flip):
            raise ValueError(f"precomputed latents need deterministic pixels (crop 'center', "
                             f"no flip), got crop={self.crop!r}, flip={self.flip}")


def resize_and_crop(image: np.ndarray, resolution: int, rng: np.random.Generator | None,
                    ) -> np.ndarray:
    """Resize the short side to `resolution` (bicubic), then crop a square.

    rng None: center crop; otherwise a uniformly random crop offset.
    """
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W, 1|3|4], got shape {image.shape}")
    if image.shape[-1] != 3:
        image = image[..., :3] if image.shape[-1] == 4 else np.repeat(image, 3, axis=-1)
    h, w = image.shape[:2]
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
    if rng is None:
        top, left = (nh - resolution) // 2, (nw - resolution) // 2
    else:
        top = int(rng.integers(nh - resolution + 1))
        left = int(rng.integers(nw - resolution + 1))
    return image[top:top + resolution, left:left + resolution]


def _caption_text(value) -> str:
    """A caption feature (str, UTF-8 bytes, or a 0-d array of either) as str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _caption_text(value.item())
    return str(value)


def preprocess(cfg: PipelineConfig) -> Callable:
    """`fn(example, rng) -> {"image" | "latent", "caption"}`: one example as a batch row.
    rng may be None where cfg draws nothing (center crop, no flip, no caption dropout)."""
    image_key = "latent" if cfg.latents else cfg.image_key

    def fn(example: dict, rng: np.random.Generator) -> dict:
        for key in (image_key, cfg.caption_key):
            if key not in example:
                raise KeyError(f"example has no feature {key!r}; it has {sorted(example)} "
                               f"(set image_key / caption_key)")
        # The rng draws in this order whatever the mode (crop, flip, caption dropout), so a
        # run on precomputed latents drops the same captions as one on the images.
        if cfg.latents:
            out = {"latent": np.asarray(example["latent"], np.float32)}
        else:
            image = resize_and_crop(np.asarray(example[image_key]), cfg.resolution,
                                    rng if cfg.crop == "random" else None)
            if cfg.flip and rng.random() < 0.5:
                image = image[:, ::-1]
            out = {"image": image.astype(np.float32) / 127.5 - 1.0}  # [-1, 1]: the VAE's
        caption = _caption_text(example[cfg.caption_key])
        if cfg.caption_dropout and rng.random() < cfg.caption_dropout:
            caption = ""
        return {**out, "caption": caption}
    return fn


# Distinct captions whose ids a pipeline keeps. Why: CLIP's BPE tokenizer is pure Python,
# ~1 ms a caption -- 0.13 s of every 128-caption batch, a fifth of a mini CLIP step -- and
# captions repeat (templated datasets such as `shapes`, class prompts, the "" of caption
# dropout). Unique captions only cost the lookup.
CAPTION_CACHE_SIZE = 1 << 16


def caption_ids_memo(tokenize: Callable[[list[str]], np.ndarray]) -> Callable[[str], np.ndarray]:
    """caption -> its (read-only) id row, `tokenize([caption])[0]` computed once per distinct
    caption (least recently used beyond CAPTION_CACHE_SIZE)."""
    @functools.lru_cache(maxsize=CAPTION_CACHE_SIZE)
    def ids_of(caption: str) -> np.ndarray:
        ids = np.array(np.asarray(tokenize([caption]))[0])
        ids.flags.writeable = False  # shared by every example with this caption
        return ids
    return ids_of


# Bytes of decoded examples a pipeline keeps in memory. Why: reading a `shapes` record
# (array_record + PNG decode) costs ~0.55 ms, 70 ms of every 128-example batch of the mini
# CLIP, and a recipe makes 5-6 passes over its 50,000 renders (150 MB decoded). Larger
# sets keep their first 1 GiB and read the rest each time.
MEMO_MAX_BYTES = 1 << 30


class MemoSource:
    """`source` with each example kept (read-only) after its first read, while the kept
    arrays total at most max_bytes; the same examples, read once."""

    def __init__(self, source: Sequence[dict], max_bytes: int = MEMO_MAX_BYTES):
        self._source, self._max_bytes, self.bytes = source, max_bytes, 0
        self._kept: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        kept = self._kept.get(i)
        if kept is not None:
            return kept
        example = dict(self._source[i])
        size = 0
        for key, value in example.items():
            if isinstance(value, np.ndarray):
                value = example[key] = np.array(value)  # a copy we may freeze
                value.flags.writeable = False
                size += value.nbytes
            elif isinstance(value, (bytes, str)):
                size += len(value)
        if self.bytes + size <= self._max_bytes:
            self._kept[i] = example
            self.bytes += size
        return example


def make_dataset(source: Sequence[dict], cfg: PipelineConfig,
                 tokenize: Callable[[list[str]], np.ndarray] | None = None, *,
                 process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """Batches {"image": f32 [B, R, R, 3] in [-1, 1], "caption": str [B], "ids": [B, L]}
    ({"latent": f32 [B, h, w, c], ...} instead of "image" with cfg.latents).

    `tokenize(list_of_str) -> int array [n, L]` (e.g. `diffjax.text.load_tokenizer()`); ids
    are omitted when it is None. Each process reads the slice process_index::process_count
    of the shuffled stream, so processes see disjoint examples.
    """
    if len(source) == 0:
        raise ValueError("the data source is empty")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    # Precomputed latents are already decoded and in memory: a memo would only copy them.
    ds = grain.MapDataset.source(source if cfg.latents else MemoSource(source))
    ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    if process_count > 1:
        ds = ds[process_index::process_count]
    # Seed offset by process: the per-example rng depends on (seed, process, position).
    ds = ds.random_map(preprocess(cfg), seed=cfg.seed * 1009 + process_index + 1)
    if tokenize is not None:
        ids_of = caption_ids_memo(tokenize)
        ds = ds.map(lambda ex: {**ex, "ids": ids_of(ex["caption"])})
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    return ds.to_iter_dataset()


def global_batch(local: dict, sharding) -> dict:
    """This process's numpy batch -> global jax arrays, batch axis split by `sharding`.

    Strings (captions) stay numpy: they never go to a device.
    """
    import jax  # local import: the data pipeline itself does not need jax

    return {k: (v if v.dtype.kind in "USO"
                else jax.make_array_from_process_local_data(sharding, v))
            for k, v in local.items()}
