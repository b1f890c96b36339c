"""Train both CLIP towers contrastively on image-caption pairs (e.g. shapes captions).

    state, metrics = train_and_evaluate(config, workdir)   # config: configs/train/clip.py

Why this loss: it is CLIP's symmetric InfoNCE (cross-entropy of the [texts, images]
logits against the diagonal, both directions, averaged), with the learned temperature
`logit_scale` as a parameter, clamped at log(100) as in the CLIP paper. The trained text
tower is what a mini SD conditions on; its `text_model` params convert like any CLIP.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from diffjax.train import runner
from diffjax.train.state import TrainState

MAX_LOGIT_SCALE = math.log(100.0)


def contrastive_loss(logits) -> tuple[jax.Array, dict]:
    """Symmetric cross-entropy of square logits [texts, images] against the diagonal.

    Returns (loss, {"accuracy": mean over both directions of argmax == diagonal}).
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"expected square logits [texts, images], got shape {logits.shape}")
    labels = jnp.arange(logits.shape[0])
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    acc = 0.5 * (jnp.mean(jnp.argmax(logits, 1) == labels)
                 + jnp.mean(jnp.argmax(logits, 0) == labels))
    return 0.5 * (t2i + i2t), {"accuracy": acc}


def make_clip_step(model, *, ema_decay: float = 0.999):
    """tx -> `step(state, {"ids": [B, L], "image": [B,H,W,3] in [-1,1]}, key)`.

    Pixels go in as the pipeline gives them ([-1, 1]); no CLIP mean/std normalization,
    since this model is trained from scratch on that range.
    """
    def with_tx(tx: optax.GradientTransformation):
        def loss_fn(params, ids, pixels):
            logits = model.apply({"params": params}, ids, pixels)
            return contrastive_loss(logits)

        def step(state: TrainState, batch: dict, key: jax.Array):  # noqa: ARG001 - no RNG
            pixels = jnp.asarray(batch["image"], jnp.float32)
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, batch["ids"], pixels)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            params = {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0,
                                                         MAX_LOGIT_SCALE)}
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                               state.ema_params, params)
            new = TrainState(step=state.step + 1, params=params, ema_params=ema,
                             opt_state=opt_state)
            return new, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                         "logit_scale": jnp.exp(params["logit_scale"]), **aux}
        return step
    return with_tx


def clip_configs(text_preset: str, vision_preset: str, resolution: int):
    """(text, vision) configs: the text tower gets the vision tower's projection_dim."""
    from diffjax.models import presets
    for name, table in (("text", presets.CLIP_TEXT_PRESETS),
                        ("vision", presets.CLIP_VISION_PRESETS)):
        key = text_preset if name == "text" else vision_preset
        if key not in table:
            raise ValueError(f"model.{name} {key!r} is not a CLIP {name} preset; presets: "
                             f"{', '.join(table)}")
    vision = dataclasses.replace(presets.CLIP_VISION_PRESETS[vision_preset],
                                 image_size=resolution)
    if resolution % vision.patch_size:
        raise ValueError(f"data.resolution {resolution} is not a multiple of the vision "
                         f"tower's patch_size {vision.patch_size}")
    text = dataclasses.replace(presets.CLIP_TEXT_PRESETS[text_preset],
                               projection_dim=vision.projection_dim)
    return text, vision


LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature 0.07


def init_clip_params(model, seed: int) -> dict:
    """Seeded LeCun-normal init of both towers (`random_params`: kernels N(0, 1/fan_in),
    embeddings N(0, 0.02)) and CLIP's initial temperature.

    Why not the modules' own N(0, 0.02) kernel init: that suits width 768; at width 64 it
    leaves attention uniform, the vision tower's class token then sees the average patch
    (mostly background on `shapes`), distinct images embed identically, and a mini CLIP
    could not even fit one batch of 64 pairs (19% after 100 steps; 100% after 50 with this).
    """
    import flax.linen as nn
    import numpy as np

    from diffjax.models.abstract import abstract_params
    from diffjax.weights.components import random_params
    abstract = {"text_model": abstract_params(model.text),
                "vision_model": abstract_params(model.vision)}
    params = random_params(nn.meta.unbox(abstract), seed)
    params["logit_scale"] = np.float32(LOGIT_SCALE_INIT)
    return params


def train_and_evaluate(config, workdir: str, *, progress: bool = True):
    """Train config.train.num_steps CLIP updates; resumes from workdir's latest checkpoint.

    config: a ConfigDict (diffjax.configs.train.clip, a run's config.json), checked into a
    `CLIPRun` here, or a CLIPRun. Returns (final TrainState, list of per-step metrics of
    this call).
    """
    from diffjax.models.clip import CLIPModel
    from diffjax.text import load_tokenizer
    from diffjax.train.spec import CLIPRun, run_spec
    c = run_spec(config, CLIPRun)
    text, vision = clip_configs(c.model.text, c.model.vision, c.data.resolution)
    model = CLIPModel(text, vision)
    params = init_clip_params(model, c.seed)
    length = training_text_length(
        text.max_position_embeddings if c.data.text_length is None else c.data.text_length,
        text.max_position_embeddings)
    return runner.run_single_model(c, workdir, params, make_clip_step(
        model, ema_decay=c.train.ema_decay), {"image": 4, "ids": 2},
        tokenize=load_tokenizer(max_length=length), progress=progress)


def training_text_length(length: int, max_positions: int) -> int:
    """The checked `data.text_length`: the id rows CLIP trains on, <= the text tower's
    positions (77).

    Why shorter rows train the same tower: the text tower is causal and pools at the
    end-of-text token, so its embedding depends only on the tokens up to there, and the
    positions after it get no gradient at any length; captions that fit (longer ones are
    truncated, with a warning per caption) train exactly as at 77, in fewer FLOPs (mini
    CLIP at 32: a step 0.68 s instead of 0.90, both measured beside another job).
    Sampling still feeds the tower 77.
    """
    if not 3 <= int(length) <= max_positions:
        raise ValueError(f"data.text_length {length} must be in [3, {max_positions}] (start "
                         f"token, at least one token, end token; the tower's positions)")
    return int(length)
