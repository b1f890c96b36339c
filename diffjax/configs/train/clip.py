"""Train both CLIP towers contrastively on `shapes` captions: `trainer = "clip"`.

    diffjax train --config diffjax.configs.train.clip:dataset=DIR,steps=2000 --workdir runs/clip

Arg keys: text / vision (CLIP presets; the text tower gets the vision projection_dim),
dataset (built dir or tfds name), steps, batch (the contrastive batch: bigger is harder).
"""

import ml_collections

from diffjax.config import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, text="tiny", vision="tiny", dataset="", steps=2000, batch=64)
    c = ml_collections.ConfigDict()
    c.trainer = "clip"
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(text=a.text, vision=a.vision))
    c.data = ml_collections.ConfigDict(dict(
        dataset=a.dataset, split="train", data_dir="", resolution=32, batch_size=a.batch,
        crop="center", flip=False,  # no flip: "left"/"right" are in the captions
        image_key="image", caption_key="caption"))
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=5e-4, warmup_steps=100, total_steps=a.steps, schedule="cosine",
        end_lr_fraction=0.1, weight_decay=0.1, b1=0.9, b2=0.98, eps=1e-6, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=a.steps, save_every=500, keep_checkpoints=3, ema_decay=0.999))
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
    return c
