"""Train state (params, EMA params, optimizer state, step) and the optax optimizer.

Why one pytree: the whole state goes through `jit` with donation and into the checkpoint
as it is; nothing about training lives outside it except the data iterator's state.
Params stay float32 ("master weights"); a bf16 compute dtype is applied inside the step.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimizer updates applied
    params: dict
    ema_params: dict
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    total_steps: int = 10_000  # length of the cosine decay (ignored for "constant")
    schedule: str = "constant"  # "constant" | "cosine" (both after linear warmup)
    end_lr_fraction: float = 0.0  # cosine decays to learning_rate * this
    weight_decay: float = 1e-2
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0  # global-norm gradient clipping; None disables

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"OptimizerConfig.schedule must be 'constant' or 'cosine', got "
                             f"{self.schedule!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"OptimizerConfig.learning_rate must be > 0, got "
                             f"{self.learning_rate}")
        if self.warmup_steps < 0 or (self.schedule == "cosine"
                                     and self.total_steps <= self.warmup_steps):
            raise ValueError(f"OptimizerConfig needs 0 <= warmup_steps < total_steps for a "
                             f"cosine schedule, got warmup_steps={self.warmup_steps}, "
                             f"total_steps={self.total_steps}")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear warmup from 0, then constant or cosine decay."""
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, cfg.warmup_steps, cfg.total_steps,
            end_value=cfg.learning_rate * cfg.end_lr_fraction)
    if cfg.warmup_steps == 0:
        return optax.constant_schedule(cfg.learning_rate)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
         optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Gradient clipping (optional) then AdamW with the schedule."""
    adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay)
    if cfg.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)


def create_train_state(params, tx: optax.GradientTransformation) -> TrainState:
    """Fresh state; EMA starts as a copy of the params (float32)."""
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))
