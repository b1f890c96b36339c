"""Cloud TPU topologies without a TPU: their devices for ahead-of-time compilation, and
each chip generation's HBM and peak bf16 FLOP/s.

libtpu (the `tpu` extra, `jax[tpu]` at the pinned jax version) has a compile-only client:
`jax.experimental.topologies.get_topology_desc("v5e:2x2", "tpu")` describes a slice's
devices on a CPU-only machine, and `jax.jit(...).lower(<ShapeDtypeStructs with shardings
over those devices>).compile()` compiles for it (what MaxText's `train_compile.py` does).
Nothing can run there; the compiled program's `memory_analysis()` and `cost_analysis()`
are what `diffjax plan` reads. The library works without libtpu: only these functions need
it, and `libtpu_available()` says whether they can work.

Topology names are libtpu's: `<generation>:<chips per axis>`, e.g. `v5e:2x2` (4 chips,
Cloud's "v5e-4"), `v5p:2x2x1` (4 chips, Cloud's "v5p-8", which counts TensorCores),
`v6e:2x2` (Cloud's "v6e-4"), `v4:2x2x1` ("v4-8"). A v4 chip's two TensorCores appear as
two devices; v5p's (megacore) as one. Chips are counted by their coordinates.

Chip figures (per chip; `CHIPS`), from Google Cloud's TPU documentation, "TPU versions"
and each generation's system-architecture page (cloud.google.com/tpu/docs/v4, /v5e,
/v5p, /v6e), retrieved 2026-11:

| chip | HBM | HBM bandwidth | peak bf16 |
|---|---|---|---|
| v4   | 32 GiB | 1,228 GB/s | 275 TFLOP/s |
| v5e  | 16 GiB |   819 GB/s | 197 TFLOP/s |
| v5p  | 95 GiB | 2,765 GB/s | 459 TFLOP/s |
| v6e  | 32 GiB | 1,640 GB/s | 918 TFLOP/s |

These are the marketing peaks a utilisation is measured against; `diffjax plan` labels
everything it derives from the compiler's cost model as an estimate.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip generation's published figures."""

    name: str
    hbm_bytes: int             # HBM per chip
    hbm_bytes_per_s: float     # HBM bandwidth per chip
    peak_bf16_flops: float     # dense bf16 FLOP/s per chip
    device_kind: str           # jax's Device.device_kind for this chip


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GiB, 1228e9, 275e12, "TPU v4"),
    "v5e": Chip("v5e", 16 * GiB, 819e9, 197e12, "TPU v5 lite"),
    "v5p": Chip("v5p", 95 * GiB, 2765e9, 459e12, "TPU v5"),
    "v6e": Chip("v6e", 32 * GiB, 1640e9, 918e12, "TPU v6 lite"),
}


class TopologyError(ValueError):
    """A topology name libtpu does not know, or libtpu missing (a user error: exit 2)."""


def libtpu_available() -> bool:
    """Whether the `tpu` extra (libtpu) is installed; nothing is imported or initialised."""
    return importlib.util.find_spec("libtpu") is not None


def chip_of(topology: str) -> Chip:
    """The chip generation a topology name starts with ("v5e:2x2" -> v5e)."""
    generation = topology.split(":", 1)[0].strip().lower()
    if generation not in CHIPS or ":" not in topology:
        raise TopologyError(f"topology {topology!r}: expected <chip>:<shape> with chip one of "
                            f"{', '.join(CHIPS)}, e.g. v5e:2x2 or v5p:2x2x1")
    return CHIPS[generation]


def _has_tpu_chips() -> bool:
    """Whether this machine has TPU chips attached (then libtpu is left to its defaults)."""
    try:
        from jax._src import hardware_utils
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # a private helper: if it moves, assume a TPU VM and change nothing
        return True


def quiet_libtpu() -> None:
    """Environment for libtpu's compile-only client on a machine without TPU chips, set
    before libtpu loads: several processes may load it at once (no lockfile: tests and
    `plan` run beside each other), and it is told it is a one-host slice on localhost
    instead of asking a metadata server that is not there. Without TPU_ACCELERATOR_TYPE and
    TPU_WORKER_HOSTNAMES libtpu prints a page of warnings and an error line at every start;
    their values do not change what compiles for a topology (checked: same cost analysis
    for v4:2x2x1 and v5e:2x2 with and without them). On a TPU VM nothing is set, and a
    user's own settings always win (setdefault)."""
    if _has_tpu_chips():
        return
    for key, value in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
                       ("TPU_SKIP_MDS_QUERY", "1"),
                       ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
                       ("TPU_WORKER_HOSTNAMES", "localhost"),
                       ("TPU_STDERR_LOG_LEVEL", "3"),
                       ("TPU_MIN_LOG_LEVEL", "3"),
                       # the library itself runs on the CPU; libtpu only compiles
                       ("JAX_PLATFORMS", "cpu")):
        os.environ.setdefault(key, value)
    import jax
    jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])


@functools.cache
def topology_devices(topology: str) -> tuple:
    """The devices of a TPU slice, for lowering and compiling (never for running).

    Raises TopologyError naming the problem when libtpu is missing or the name is unknown.
    """
    chip_of(topology)
    if not libtpu_available():
        raise TopologyError(f"topology {topology!r} needs libtpu: pip install 'diffjax[tpu]' "
                            "(jax's TPU wheel at the pinned jax version)")
    quiet_libtpu()
    from jax.experimental import topologies
    try:
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    except Exception as e:  # libtpu's own errors are RuntimeErrors with pages of text
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TopologyError(f"topology {topology!r}: libtpu refused it ({first})") from e
    return tuple(desc.devices)


def chip_count(devices) -> int:
    """Chips in a slice: distinct device coordinates (a v4 chip is two devices)."""
    coords = {tuple(getattr(d, "coords", (d.id,))) for d in devices}
    return len(coords)


def hbm_per_device(topology: str, devices=None) -> int:
    """HBM one jax device of the slice owns: a chip's, split over its devices."""
    devices = topology_devices(topology) if devices is None else devices
    return chip_of(topology).hbm_bytes * chip_count(devices) // len(devices)
