"""The training loop shared by all trainers: step, check the loss, checkpoint, stop cleanly.

Why here and not in each trainer: exact resume, the non-finite-loss stop and SIGTERM
handling must behave the same for the UNet, the VAE and CLIP.
"""

from __future__ import annotations

import math
import signal
from typing import Callable, Iterator

import jax
import numpy as np

from diffjax.train import checkpoint
from diffjax.train.state import TrainState


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept and the step is named."""

    def __init__(self, step: int, loss: float, last_saved: int | None):
        self.step, self.loss, self.last_saved = step, loss, last_saved
        super().__init__(f"loss is {loss} at step {step}; stopped without saving it. Last "
                         f"good checkpoint: step {last_saved}")


def train_loop(state: TrainState, step_fn: Callable, batches: Iterator, key: jax.Array, *,
               num_steps: int, make_batch: Callable = lambda b: b, manager=None,
               save_every: int = 0, config: dict | None = None,
               on_metrics: Callable | None = None,
               on_state: Callable | None = None) -> tuple[TrainState, list[dict]]:
    """Run until state.step == num_steps; returns (state, per-step metrics as floats).

    `batches` is an iterator with get_state() (grain) whose state is saved with each
    checkpoint; `make_batch` turns its output into the step's batch (e.g. global arrays).
    Saves every `save_every` steps, at the end, and on SIGTERM (then returns early).
    `on_state(state, metrics)` runs after each step (e.g. a periodic sample grid).
    """
    history: list[dict] = []
    last_saved = manager.latest_step() if manager is not None else None
    stop = {"flag": False}
    previous = None
    if manager is not None:
        def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
            stop["flag"] = True
        try:
            previous = signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread: no SIGTERM handling
            previous = None

    def save_now(s):
        data_state = batches.get_state() if hasattr(batches, "get_state") else {}
        return checkpoint.save(manager, s, data_state, config)

    try:
        while int(state.step) < num_steps:
            state, metrics = step_fn(state, make_batch(next(batches)), key)
            m = {k: float(np.asarray(v)) for k, v in metrics.items()}
            step = int(state.step)
            if not math.isfinite(m["loss"]):
                raise NonFiniteLossError(step, m["loss"], last_saved)
            m["step"] = step
            history.append(m)
            if on_metrics is not None:
                on_metrics(m)
            if on_state is not None:
                on_state(state, m)
            if manager is not None and ((save_every and step % save_every == 0)
                                        or step == num_steps or stop["flag"]):
                last_saved = save_now(state)
            if stop["flag"]:
                break
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return state, history
