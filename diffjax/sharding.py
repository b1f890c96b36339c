"""Meshes, logical-axis rules and the shardings of params and batches.

Mesh axes are ('data', 'fsdp', 'tensor'); their sizes come from the config (one may be
-1: all remaining devices). Modules name their weights' axes logically
(`diffjax.models.axes` constants); the rule table maps logical names to mesh axes, so a
new layout is a config change, not a code change. Meshes use automatic axis types
(`jax.sharding.Mesh`), which is what `nn.logical_to_mesh_sharding` and jit in/out
shardings expect.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffjax.models import axes
from diffjax.spec import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
DATA_AXES = ("data", "fsdp")  # the batch/seed axis is split over both

# Logical axis -> mesh axis (None = replicated). FSDP shards the model width, tensor
# parallelism the heads and MLP/conv-output widths.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (axes.BATCH, DATA_AXES),
    (axes.LENGTH, None),
    (axes.EMBED, "fsdp"),
    (axes.HEADS, "tensor"),
    (axes.MLP, "tensor"),
    (axes.VOCAB, "tensor"),
    (axes.CONV_IN, "fsdp"),
    (axes.CONV_OUT, "tensor"),
    (axes.NORM, None),
    (axes.POSITION, None),
)


def resolve_mesh_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
    """Fill a single -1 and check the product equals the device count, naming both
    (a ConfigError: the config's mesh.shape does not fit these devices)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ConfigError(f"mesh shape {shape} must have {len(MESH_AXES)} sizes for axes "
                         f"{MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"mesh shape {shape}: sizes must be positive, with at most one -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if n_devices % known:
            raise ConfigError(f"mesh shape {shape} cannot cover {n_devices} devices "
                             f"({n_devices} is not divisible by {known})")
        shape = tuple(n_devices // known if s == -1 else s for s in shape)
    if int(np.prod(shape)) != n_devices:
        raise ConfigError(f"mesh shape {shape} has {int(np.prod(shape))} devices, but "
                         f"{n_devices} are available")
    return shape


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
    """A ('data','fsdp','tensor') mesh over `devices` (default: all) with automatic axes."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(shape, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def data_ways(shape: Sequence[int]) -> int:
    """How many ways a mesh of this ('data','fsdp','tensor') shape splits the batch (data x
    fsdp): what a batch size must be a multiple of."""
    return int(np.prod([shape[MESH_AXES.index(a)] for a in DATA_AXES]))


def data_size(mesh: Mesh) -> int:
    """How many ways the batch axis is split (data x fsdp)."""
    return data_ways([mesh.shape[a] for a in MESH_AXES])


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (seed/batch) axis over the data axes, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_shardings(abstract_params, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a (possibly abstract) param tree carrying logical axis names.

    Axes whose size the mesh axis does not divide are replicated instead of failing, so
    odd channel counts (e.g. 320 over a tensor axis of 3) still shard what they can.
    """
    import flax.linen as nn

    logical = nn.get_partition_spec(abstract_params)
    unboxed = nn.meta.unbox(abstract_params)

    def to_sharding(spec, leaf):
        mesh_spec = nn.logical_to_mesh_axes(spec, rules) if spec is not None else P()
        fixed = []
        for dim, axis in zip(np.shape(leaf), tuple(mesh_spec) + (None,) * len(np.shape(leaf))):
            names = (axis,) if isinstance(axis, str) else tuple(axis or ())
            size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
            fixed.append(axis if size > 1 and dim % size == 0 else None)
        return NamedSharding(mesh, P(*fixed))

    return jax.tree.map(to_sharding, logical, unboxed,
                        is_leaf=lambda x: isinstance(x, P) or x is None)


def _row_owners(sharding, shape) -> dict[int, int]:
    """{row: the lowest process index among those whose devices hold it} for a global
    array of `shape` sharded over its first axis."""
    owner: dict[int, int] = {}
    for device, index in sharding.devices_indices_map(shape).items():
        for r in range(*index[0].indices(shape[0])):
            owner[r] = min(owner.get(r, device.process_index), device.process_index)
    return owner


def owned_rows(mesh: Mesh, batch_size: int) -> list[int]:
    """The rows of a batch (seed axis over the data axes) that this process writes: those
    its devices compute, a row held by several processes going to the lowest index (as
    `local_rows` decides)."""
    owner = _row_owners(batch_sharding(mesh, 2), (batch_size, 1))
    me = jax.process_index()
    return [r for r in range(batch_size) if owner.get(r) == me]


def local_rows(out, n: int):
    """(rows [n, ...] of a batch-sharded global array that this process can read, the
    positions it owns): each row belongs to the lowest process index holding it, so on
    many hosts each image is written once."""
    rows = np.zeros((n, *out.shape[1:]), np.float32)
    for shard in out.addressable_shards:
        start = shard.index[0].start or 0
        data = np.asarray(shard.data)
        for k in range(data.shape[0]):
            if start + k < n:
                rows[start + k] = data[k]
    owner = _row_owners(out.sharding, out.shape)
    me = jax.process_index()
    return rows, [r for r in range(n) if owner.get(r) == me]


def any_process(flags) -> np.ndarray:
    """Element-wise OR of a bool vector over all processes (itself with one process): how
    processes agree on which batches to run and when to stop, so none waits in a
    collective that the others skip."""
    flags = np.asarray(flags, bool)
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather(flags.astype(np.int32))
    return np.asarray(gathered).reshape(jax.process_count(), -1).any(axis=0)


class DistributedError(RuntimeError):
    """Joining a multi-process job failed: the peers did not arrive in time, or the
    coordinator could not be reached (the message names the coordinator)."""


def initialize_distributed(coordinator: str, num_processes: int, process_id: int,
                           timeout_s: int = 300) -> None:
    """Join a multi-process job before any device is touched.

    coordinator "": single process (nothing to do); "auto": `jax.distributed.initialize()`
    with the platform's own discovery (TPU pods, SLURM, ...); "host:port": explicit, with
    `num_processes` and this `process_id`. CPU processes talk through gloo collectives.
    A process whose peers do not all arrive within `timeout_s` seconds fails with a
    DistributedError naming the coordinator (rather than waiting forever).
    """
    if not coordinator:
        return
    if timeout_s < 1:
        raise ConfigError(f"distributed.timeout_s must be >= 1, got {timeout_s}")
    if coordinator != "auto" and (num_processes < 1 or not 0 <= process_id < num_processes):
        raise ConfigError(f"distributed: process_id {process_id} must be in [0, "
                          f"num_processes={num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    who = ("the platform's coordinator" if coordinator == "auto"
           else f"coordinator {coordinator}")
    message = (f"process {process_id} of {num_processes} could not join the job through {who} "
               f"within {timeout_s} s (are all {num_processes} processes started, with the "
               "same coordinator and distinct process ids?)")
    # jaxlib ends the process with a C++ check failure (SIGABRT, a stack dump) when its own
    # initialization timeout expires; this watchdog fires first and exits with one line.
    watchdog = threading.Timer(timeout_s, _give_up, args=(message,))
    watchdog.daemon = True
    kwargs = (dict(initialization_timeout=int(timeout_s) + 60) if coordinator == "auto" else
              dict(coordinator_address=coordinator, num_processes=num_processes,
                   process_id=process_id, initialization_timeout=int(timeout_s) + 60))
    watchdog.start()
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # noqa: BLE001 - jaxlib raises XlaRuntimeError / RuntimeError
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DistributedError(f"{message}: {first}") from e
    finally:
        watchdog.cancel()


def _give_up(message: str) -> None:
    import os
    import sys
    print(f"diffjax: {message}", file=sys.stderr, flush=True)
    os._exit(2)
