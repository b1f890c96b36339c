"""Checks a command makes before it loads a model or compiles: the output folder is a
writable directory, and a job's images fit in memory.

A mistake found after minutes of loading and compiling (an `--out` that is a file, a
100000x100000 size that only fails when numpy cannot allocate the batch) costs the user
those minutes and leaves a traceback; found here it is one line naming the problem and
what was expected (exit status 2, see `diffjax.cli`).
"""

from __future__ import annotations

import os
import tempfile

from diffjax.spec import ConfigError

GIB = 1024**3


class OutputDirError(ConfigError):
    """The output folder cannot be used: a file, not writable, or under a file."""


def check_output_dir(out: str, flag: str = "--out") -> None:
    """`out` is (or can be created as) a writable directory. Nothing is created: the
    nearest existing ancestor is probed with a temporary file, removed at once. Cloud paths
    (gs://, s3://) are left to the first write."""
    if "://" in out:
        return
    path = os.path.abspath(os.path.expanduser(out))
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(f"{flag} {out!r} is a file; expected a directory (new or "
                             "holding this job's outputs)")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise OutputDirError(f"{flag} {out!r} is under {probe!r}, which is a file; expected "
                             "a directory path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".diffjax-write-check-", dir=probe)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        what = "is" if probe == path else f"would be created in {probe!r}, which is"
        raise OutputDirError(f"{flag} {out!r} {what} not writable ({e.strerror}); expected a "
                             "directory this user can write") from None


def host_memory_bytes() -> int:
    """Physical memory of this host (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def device_memory_bytes() -> int:
    """Memory of one local accelerator (its allocator's limit); on CPU, the host's memory
    shared by its local devices. 0 if unknown. Initializes the backend: call after
    joining a multi-process job."""
    import jax
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return host_memory_bytes() // max(1, jax.local_device_count())


def images_host_bytes(batch_size: int, height: int, width: int) -> int:
    """Host memory one batch's decoded images take while being written: the float32
    batch, its device shards copied to the host, and the uint8 copy."""
    return batch_size * height * width * 3 * (4 + 4 + 1)


def decoder_device_bytes(rows: int, height: int, width: int, first_channels: int) -> int:
    """A lower bound on one device's memory while the VAE decodes its `rows` images: the
    last decoder block runs at full resolution with `first_channels` channels and keeps at
    least an input, an output and a normalised copy alive (float32)."""
    return rows * height * width * first_channels * 4 * 3


def fmt_gib(n: int) -> str:
    return f"{n / GIB:,.1f} GiB"


def check_image_memory(batch_size: int, height: int, width: int,
                       limit: int | None = None) -> None:
    """Refuse a size whose decoded batch alone cannot fit in host memory, before any model
    is loaded (the estimate and the limit are in the message)."""
    limit = host_memory_bytes() if limit is None else limit
    need = images_host_bytes(batch_size, height, width)
    if limit and need > limit:
        raise ConfigError(
            f"size {width}x{height} at batch_size {batch_size} needs about {fmt_gib(need)} "
            f"of host memory for one batch's images (this host has {fmt_gib(limit)}); use a "
            "smaller height/width or batch_size")


def check_device_memory(rows: int, height: int, width: int, first_channels: int,
                        limit: int | None = None) -> None:
    """Refuse a size the VAE decoder cannot run on one device (a lower-bound estimate,
    before compiling)."""
    limit = device_memory_bytes() if limit is None else limit
    need = decoder_device_bytes(rows, height, width, first_channels)
    if limit and need > limit:
        raise ConfigError(
            f"size {width}x{height} with {rows} image(s) per device needs at least "
            f"{fmt_gib(need)} per device to decode (the VAE's {first_channels}-channel "
            f"full-resolution block; a device has {fmt_gib(limit)}); use a smaller "
            "height/width or batch_size, or more devices")


def check_program_memory(plan: dict, limit: int | None = None) -> None:
    """Refuse a compiled program whose XLA memory plan (`compiled_memory.needed_bytes`, per
    device) exceeds one device's memory, before it runs."""
    from diffjax.compiled_memory import needed_bytes
    if not plan:
        return
    limit = device_memory_bytes() if limit is None else limit
    need = needed_bytes(plan)
    if limit and need > limit:
        raise ConfigError(
            f"the compiled sample program needs {fmt_gib(need)} per device (XLA's memory "
            f"plan: arguments {fmt_gib(plan['argument_bytes'])}, outputs "
            f"{fmt_gib(plan['output_bytes'])}, temporaries {fmt_gib(plan['temp_bytes'])}, code "
            f"{fmt_gib(plan['code_bytes'])}, less {fmt_gib(plan['alias_bytes'])} shared by "
            f"donated arguments and outputs); a device has {fmt_gib(limit)}; use a smaller "
            "height/width or batch_size")
