"""Training logs: a tqdm bar, metrics.jsonl, TensorBoard event files, sample-grid PNGs.

Why tensorboardX for the event files: it is a maintained writer of TensorBoard's format
that needs only numpy and protobuf (both already here), so a run writes event files with
no TensorFlow installed. clu.metric_writers' TensorBoard writer is built on TensorFlow
(`import clu.metric_writers` fails without it), which is optional here. tensorboardX
imports torch when torch is installed (to accept its tensors), so it is imported only when
a run writes events: `import diffjax` stays free of torch. Reading the files back is
TensorBoard's job (`tensorboard --logdir WORKDIR/tb`; the tests use its EventAccumulator).
Why one `RunLogger`: every trainer logs the same way, and the loop only calls `log(m)`.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np


# ---------------------------------------------------------------------------------------
# Sample grids
# ---------------------------------------------------------------------------------------


def image_grid(images: np.ndarray, cols: int) -> np.ndarray:
    """[N, H, W, C] floats in [0, 1] (or uint8) -> one uint8 [rows*H, cols*W, C] image
    (row-major)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {images.shape}")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w, c), np.uint8)
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = pixels[k]
    return grid


def save_grid(images: np.ndarray, path: str, cols: int, scale: int = 1) -> str:
    """Write `image_grid(images, cols)` as a PNG (nearest-neighbour upscaled by `scale`)."""
    from PIL import Image
    grid = image_grid(images, cols)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid).save(path)
    return path


# ---------------------------------------------------------------------------------------
# What the trainers use
# ---------------------------------------------------------------------------------------


# tensorboardX writes events on its own thread and flushes the file at most this often,
# so a live TensorBoard (which reloads every 5 s by default) lags by about as much;
# `close` writes everything that is left.
FLUSH_SECS = 5
_WRITER_IDS = itertools.count()


def _event_writer(logdir: str):
    """A tensorboardX writer of `logdir/events.out.tfevents.<time>.<host>.<pid>.<n>`.

    tensorboardX names a file by the second and the host and opens it with "wb", so a run
    resumed within the same second would overwrite the first one's events: the process id
    and a counter keep every writer's file its own. (Imported here: see the docstring.)
    """
    from tensorboardX import SummaryWriter
    return SummaryWriter(logdir, flush_secs=FLUSH_SECS,
                         filename_suffix=f".{os.getpid()}.{next(_WRITER_IDS)}")


class RunLogger:
    """Per-step metrics -> tqdm bar (steps/s, loss), metrics.jsonl, TensorBoard scalars.

    Use as a context manager; pass `logger.log` as the loop's `on_metrics`.
    `tensorboard=False` skips the event file; `progress=False` the bar (e.g. in tests).
    """

    def __init__(self, workdir: str, num_steps: int, initial_step: int = 0, *,
                 tensorboard: bool = True, progress: bool = True, desc: str = "train"):
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        self.events = _event_writer(os.path.join(workdir, "tb")) if tensorboard else None
        self.bar = None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=num_steps, initial=initial_step, desc=desc, unit="step",
                            dynamic_ncols=True)

    def log(self, m: dict) -> None:
        self._jsonl.write(json.dumps(m) + "\n")
        self._jsonl.flush()
        step = int(m["step"])
        if self.events is not None:
            for k, v in m.items():
                if k != "step":
                    self.events.add_scalar(f"train/{k}", v, step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)

    def close(self) -> None:
        self._jsonl.close()
        if self.events is not None:
            self.events.close()
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
