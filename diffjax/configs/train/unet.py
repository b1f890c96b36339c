"""Train the UNet on `shapes` with a frozen text encoder and VAE: `train_and_evaluate`.

    diffjax train --config diffjax.configs.train.unet:dataset=DIR,steps=2000 --workdir runs/unet

Arg keys: model (preset name or diffusers-format folder holding the frozen CLIP + VAE and
the UNet to start from), init_from (a finished UNet run whose EMA weights replace the
folder's UNet), dataset (built dir or tfds name), steps, batch.
"""

import ml_collections

from diffjax.config import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, model="tiny", init_from="", dataset="", steps=1000, batch=8)
    c = ml_collections.ConfigDict()
    c.trainer = "unet"              # diffjax/commands/train.py dispatches on this
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(name=a.model, init_from=a.init_from))
    c.data = ml_collections.ConfigDict(dict(
        dataset=a.dataset,          # e.g. data/shapes/r32-train20000-test1000-holdout1000/1.0.0
        split="train", data_dir="", resolution=32, batch_size=a.batch,  # global batch
        crop="center", flip=False,  # no flip on shapes: "left"/"right" are in the captions
        caption_dropout=0.1,        # for classifier-free guidance
        image_key="image", caption_key="caption"))
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=100, total_steps=a.steps, schedule="cosine",
        end_lr_fraction=0.1, weight_decay=1e-2, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=a.steps, save_every=500, keep_checkpoints=3, ema_decay=0.999,
        snr_gamma=5.0,              # min-SNR-gamma weighting; 0 = uniform
        compute_dtype="float32",    # or "bfloat16" (master weights stay float32)
        clip_skip=-1,               # text layer the UNet reads; -1: the model folder's own
        cache_latents=False,        # True: encode the set once (center crop, no flip only)
        sample_every=0,             # > 0: a sample grid PNG in workdir/samples every N steps
        sample_steps=20, sample_guidance=3.0, sample_seeds=(0, 1),
        sample_params="params",     # or "ema_params" (long runs)
        progress=True))             # the tqdm bar
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
    return c
