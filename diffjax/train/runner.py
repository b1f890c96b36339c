"""What the trainers share around their train step: data, mesh, checkpoints.

Why a separate file: the VAE and CLIP trainers are single-model runs whose only difference
is the step, so their plumbing (sharded batches, resume, logging) lives here once; the
UNet trainer (which also freezes two models) uses the mesh, data and resume parts. Every
function takes the trainer's frozen run spec (diffjax/train/spec.py), not a ConfigDict.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from diffjax import sharding
from diffjax.data import builders, pipeline
from diffjax.train import checkpoint, loop
from diffjax.train.run_log import RunLogger
from diffjax.train.spec import spec_dict
from diffjax.train.state import TrainState, create_train_state, make_optimizer


def make_mesh_checked(c):
    """The config's mesh; a named error when the global batch does not split over it."""
    mesh = sharding.make_mesh(tuple(c.mesh.shape))
    n_data = sharding.data_size(mesh)
    if c.data.batch_size % (n_data * jax.process_count()):
        raise ValueError(f"data.batch_size {c.data.batch_size} is not divisible by the mesh's "
                         f"data axes (data x fsdp = {n_data}) times {jax.process_count()} "
                         f"processes")
    return mesh


def pipeline_config(c) -> pipeline.PipelineConfig:
    """What the data pipeline does to each example: this process's share of the batch."""
    return pipeline.PipelineConfig(
        batch_size=c.data.batch_size // jax.process_count(), resolution=c.data.resolution,
        seed=c.seed, crop=c.data.crop, flip=c.data.flip, caption_dropout=c.data.caption_dropout,
        image_key=c.data.image_key, caption_key=c.data.caption_key)


def data_iterator(c, tokenize=None):
    """The grain iterator of per-process batches (get_state/set_state for exact resume)."""
    source = builders.open_source(c.data.dataset, c.data.split, c.data.data_dir or None)
    return iter(pipeline.make_dataset(source, pipeline_config(c), tokenize,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count()))


def start_or_resume(c, workdir: str, state, it, shardings):
    """Checkpoint manager for workdir; restore state and data position from its latest
    checkpoint if any; write the resolved run spec, every field, as config.json
    (atomically, with the diffjax version: `diffjax train --config WORKDIR/config.json`
    reruns it). Returns (state, manager)."""
    manager = checkpoint.make_manager(workdir, keep=c.train.keep_checkpoints)
    if manager.latest_step() is not None:
        state, data_state, _ = checkpoint.restore(manager, state)
        state = jax.device_put(state, shardings)  # one sharding or a TrainState of them
        it.set_state(data_state)
    import ml_collections

    from diffjax.config import save_config
    save_config(ml_collections.ConfigDict(spec_dict(c)), workdir)
    return state, manager


def batch_maker(batch_spec: dict):
    """Per-process numpy batches -> global arrays on the batch shardings."""
    def make_batch(b):
        return {k: jax.make_array_from_process_local_data(batch_spec[k], np.asarray(b[k]))
                for k in batch_spec}
    return make_batch


def run_single_model(c, workdir: str, params, step: Callable, batch_ndims: dict[str, int],
                     tokenize=None, progress: bool = True) -> tuple[TrainState, list[dict]]:
    """Train `params` with `step(state, batch, key) -> (state, metrics)` under config `c`.

    batch_ndims: the batch keys the step reads and their ranks (e.g. {"image": 4}).
    Resumes from workdir's latest checkpoint; logs through RunLogger.
    """
    mesh = make_mesh_checked(c)
    tx = make_optimizer(c.optimizer)
    repl = sharding.replicated(mesh)
    batch_spec = {k: sharding.batch_sharding(mesh, n) for k, n in batch_ndims.items()}
    jitted = jax.jit(step(tx), in_shardings=(repl, batch_spec, repl),
                     out_shardings=(repl, repl), donate_argnums=0)
    state = jax.device_put(create_train_state(params, tx), repl)
    it = data_iterator(c, tokenize)
    state, manager = start_or_resume(c, workdir, state, it, repl)
    make_batch = batch_maker(batch_spec)
    with RunLogger(workdir, c.train.num_steps, int(state.step), progress=progress,
                   desc=c.trainer) as logger:
        return loop.train_loop(state, jitted, it, jax.random.key(c.seed),
                               num_steps=c.train.num_steps, make_batch=make_batch,
                               manager=manager, save_every=c.train.save_every,
                               config=spec_dict(c), on_metrics=logger.log)
