"""diffjax-mini, stage 2b: fine-tune the VAE decoder only, while the UNet trains.

    diffjax train --config configs/mini/vae_decoder.py --workdir runs/mini/vae_decoder

Why: the UNet depends only on the encoder (its latents), so the encoder is frozen at the
end of stage 2 and the decoder keeps learning (sharper stars and crosses) beside stage 3
-- what Stability's sd-vae-ft-mse did for SD. Each pixel's L1 error is weighed by its edge
strength (edge_weight 60; diffjax/train/vae_trainer.vae_loss): with plain L1 the decoder
drew small stars as blobs (a star's tips are a few of 1,024 pixels). The shipped VAE
decoder is this run's EMA params.
Arg keys: init_from (the workdir to start from), dataset, steps, batch, seed, edge_weight.
"""

import ml_collections

from diffjax.config import parse_arg

DATASET = "data/shapes/r32-train50000-test1000-holdout1000/1.0.0"


def get_config(arg=None):
    a = parse_arg(arg, init_from="runs/mini/vae", dataset=DATASET, steps=5000, batch=32,
                  seed=0, edge_weight=60.0)
    c = ml_collections.ConfigDict()
    c.trainer = "vae"
    c.seed = a.seed
    c.model = ml_collections.ConfigDict(dict(name="mini", init_from=a.init_from))
    c.data = ml_collections.ConfigDict(dict(
        dataset=a.dataset, split="train", data_dir="", resolution=32, batch_size=a.batch,
        crop="center", flip=False, image_key="image", caption_key="caption"))
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=100, total_steps=a.steps, schedule="cosine",
        end_lr_fraction=0.05, weight_decay=0.0, b1=0.9, b2=0.99, eps=1e-8, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=a.steps, save_every=500, keep_checkpoints=2, ema_decay=0.995,
        kl_weight=1e-6, recon_loss="l1", decode_from="sample", edge_weight=a.edge_weight,
        train_only="decoder"))  # encoder + quant_conv stay fixed: the UNet's latents
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
    return c
