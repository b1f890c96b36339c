"""Training logs: a tqdm bar, metrics.jsonl, TensorBoard event files, sample-grid PNGs.

Why a hand-written TensorBoard writer: the event format is a TFRecord stream of `Event`
protos, a few dozen bytes each for a scalar; writing it needs neither TensorFlow nor
tensorboardX (neither is a dependency). `read_events` reads it back (tests, quick looks).
Why one `RunLogger`: every trainer logs the same way, and the loop only calls `log(m)`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import numpy as np

# ---------------------------------------------------------------------------------------
# TFRecord framing with masked CRC-32C (Castagnoli), as TensorBoard reads it
# ---------------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (pure Python: event records are tiny)."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, masked crc of the length, data, masked crc of the data."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked_crc(length)) + data
            + struct.pack("<I", _masked_crc(data)))


# ---------------------------------------------------------------------------------------
# The few protobuf fields an Event needs (tensorflow/core/util/event.proto, summary.proto)
# ---------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    """Event{wall_time=1 (double), step=2 (int64), summary=5 {value=1 {tag=1, simple_value=2}}}."""
    val = _field_bytes(1, tag.encode("utf-8")) + _varint(2 << 3 | 5) + struct.pack("<f", value)
    summary = _field_bytes(1, val)
    return (_varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0)
            + _varint(int(step)) + _field_bytes(5, summary))


def _version_event(wall_time: float) -> bytes:
    """The first record of every event file: file_version=3 (string) "brain.Event:2"."""
    return (_varint(1 << 3 | 1) + struct.pack("<d", wall_time)
            + _field_bytes(3, b"brain.Event:2"))


class EventWriter:
    """Scalars to `logdir/events.out.tfevents.<time>.<host>` (TensorBoard reads the folder)."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        now = time.time()
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}")
        self._f = open(self.path, "ab")
        self._f.write(tfrecord(_version_event(now)))
        self._f.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._f.write(tfrecord(scalar_event(tag, float(value), step, time.time())))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _parse(buf: bytes) -> dict[int, list]:
    """Protobuf wire format -> {field: [raw values]} (varint, fixed64, bytes, fixed32)."""
    out: dict[int, list] = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} for field {num}")
        out.setdefault(num, []).append(v)
    return out


def read_events(path: str) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in an event file; checks every record's CRCs."""
    data = open(path, "rb").read()
    scalars, i = [], 0
    while i < len(data):
        header = data[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        (crc_len,) = struct.unpack("<I", data[i + 8:i + 12])
        payload = data[i + 12:i + 12 + n]
        (crc_data,) = struct.unpack("<I", data[i + 12 + n:i + 16 + n])
        if crc_len != _masked_crc(header) or crc_data != _masked_crc(payload):
            raise ValueError(f"{path}: bad CRC in the record at byte {i}")
        i += 16 + n
        event = _parse(payload)
        step = event.get(2, [0])[0]
        for summary in event.get(5, []):
            for value in _parse(summary).get(1, []):
                v = _parse(value)
                scalars.append((v[1][0].decode("utf-8"), step,
                                struct.unpack("<f", v[2][0])[0]))
    return scalars


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


class RunLogger:
    """Per-step metrics -> tqdm bar (steps/s, loss), metrics.jsonl, TensorBoard scalars.

    Use as a context manager; pass `logger.log` as the loop's `on_metrics`.
    `tensorboard=False` skips the event file; `progress=False` the bar (e.g. in tests).
    """

    def __init__(self, workdir: str, num_steps: int, initial_step: int = 0, *,
                 tensorboard: bool = True, progress: bool = True, desc: str = "train"):
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        self.events = EventWriter(os.path.join(workdir, "tb")) if tensorboard else None
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
                    self.events.scalar(f"train/{k}", v, step)
            self.events.flush()
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
