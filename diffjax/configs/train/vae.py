"""Train the KL autoencoder on `shapes` (or any image dataset): `trainer = "vae"`.

    diffjax train --config diffjax.configs.train.vae:dataset=DIR,steps=2000 --workdir runs/vae

Arg keys: model (a VAE preset: tiny, sd), dataset (built dir or tfds name), steps, batch.
"""

import ml_collections

from diffjax.config import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, model="tiny", dataset="", steps=2000, batch=8)
    c = ml_collections.ConfigDict()
    c.trainer = "vae"
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(name=a.model))
    c.data = ml_collections.ConfigDict(dict(
        dataset=a.dataset, split="train", data_dir="", resolution=32, batch_size=a.batch,
        crop="center", flip=False, image_key="image", caption_key="caption"))
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=50, total_steps=a.steps, schedule="cosine",
        end_lr_fraction=0.1, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=a.steps, save_every=500, keep_checkpoints=3, ema_decay=0.999,
        kl_weight=1e-6,             # LDM's KL-f8 weight: the latent stays nearly deterministic
        recon_loss="l1"))           # "l1" | "l2"
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
    return c
