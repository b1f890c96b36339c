"""Meshes, logical-axis rules and the shardings of params and batches.

Mesh axes are ('data', 'fsdp', 'tensor'); their sizes come from the config (one may be
-1: all remaining devices). Modules name their weights' axes logically
(`diffjax.models.axes` constants); the rule table maps logical names to mesh axes, so a
new layout is a config change, not a code change. Meshes use automatic axis types
(`jax.sharding.Mesh`), which is what `nn.logical_to_mesh_sharding` and jit in/out
shardings expect.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffjax.models import axes

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
    """Fill a single -1 and check the product equals the device count, naming both."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} sizes for axes "
                         f"{MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh shape {shape}: sizes must be positive, with at most one -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if n_devices % known:
            raise ValueError(f"mesh shape {shape} cannot cover {n_devices} devices "
                             f"({n_devices} is not divisible by {known})")
        shape = tuple(n_devices // known if s == -1 else s for s in shape)
    if int(np.prod(shape)) != n_devices:
        raise ValueError(f"mesh shape {shape} has {int(np.prod(shape))} devices, but "
                         f"{n_devices} are available")
    return shape


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
    """A ('data','fsdp','tensor') mesh over `devices` (default: all) with automatic axes."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(shape, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def data_size(mesh: Mesh) -> int:
    """How many ways the batch axis is split (data x fsdp)."""
    return int(np.prod([mesh.shape[a] for a in DATA_AXES]))


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


def initialize_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process job before any device is touched.

    coordinator "": single process (nothing to do); "auto": `jax.distributed.initialize()`
    with the platform's own discovery (TPU pods, SLURM, ...); "host:port": explicit, with
    `num_processes` and this `process_id`. CPU processes talk through gloo collectives.
    """
    if not coordinator:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator == "auto":
        jax.distributed.initialize()
        return
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"distributed: process_id {process_id} must be in [0, "
                         f"num_processes={num_processes})")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
