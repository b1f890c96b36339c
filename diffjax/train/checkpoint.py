"""orbax checkpoints of a training run: one item per state component + JSON items.

Items: params, ema_params, opt_state (pytrees), data (the grain iterator state), config
(the run's config as JSON). The step is the checkpoint's step. Restoring into a template
state gives back the same shardings as the template.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from diffjax.train.state import TrainState

_TREE_ITEMS = ("params", "ema_params", "opt_state")


def make_manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
    """A CheckpointManager in `workdir/checkpoints` keeping the `keep` latest steps."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: dict | None = None,
         config: dict | None = None, *, wait: bool = True) -> int:
    """Save `state` at its step; returns the step. `wait` blocks until it is on disk."""
    step = int(jax.device_get(state.step))
    items = {k: ocp.args.StandardSave(getattr(state, k)) for k in _TREE_ITEMS}
    items["data"] = ocp.args.JsonSave(data_state or {})
    items["config"] = ocp.args.JsonSave(config or {})
    manager.save(step, args=ocp.args.Composite(**items))
    if wait:
        manager.wait_until_finished()
    return step


def restore(manager: ocp.CheckpointManager, template: TrainState, step: int | None = None,
            ) -> tuple[TrainState, dict, dict]:
    """(state, data_state, config) at `step` (default: the latest)."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    items = {k: ocp.args.StandardRestore(getattr(template, k)) for k in _TREE_ITEMS}
    items["data"] = ocp.args.JsonRestore()
    items["config"] = ocp.args.JsonRestore()
    got = manager.restore(step, args=ocp.args.Composite(**items))
    state = TrainState(step=jnp.asarray(step, jnp.int32), params=got["params"],
                       ema_params=got["ema_params"], opt_state=got["opt_state"])
    return state, dict(got["data"]), dict(got["config"])


def load_trained_params(workdir: str, item: str = "ema_params", step: int | None = None):
    """The `item` params ("params" | "ema_params") of a run's checkpoint, as numpy, with no
    template: how a later stage (e.g. the mini UNet) takes a finished run's weights."""
    import numpy as np
    if item not in ("params", "ema_params"):
        raise ValueError(f"item must be 'params' or 'ema_params', got {item!r}")
    manager = make_manager(workdir)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: "
                                "has that run been trained?")
    got = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore()}))
    return jax.tree.map(np.asarray, got[item]), step


def load_params_like(workdir: str, like, what: str):
    """A finished run's EMA params, checked leaf by leaf against `like` (arrays or
    ShapeDtypeStructs of the model being built): how `model.init_from` continues a run.

    Why: a run of another preset restores without complaint and then fails deep inside
    the first jitted step; this names the first parameter path that differs instead."""
    import functools
    params, _ = load_trained_params(workdir)
    if jax.tree.structure(like) != jax.tree.structure(params):
        raise ValueError(f"{what} {workdir!r} holds params of another structure than the "
                         "model being trained (another preset?)")
    for path, a in jax.tree_util.tree_leaves_with_path(like):
        b = functools.reduce(lambda t, k: t[k.key], path, params)
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"{what} {workdir!r}: {jax.tree_util.keystr(path)} has shape "
                             f"{tuple(b.shape)}, the model expects {tuple(a.shape)}")
    return params
