"""diffjax-mini, stage 2 of 3: the KL-f4 autoencoder (32x32x3 -> 8x8x4) on `shapes`.

    diffjax train --config diffjax.configs.mini.vae --workdir runs/mini/vae

The whole recipe, in order, is in tools/mini_recipe.py (and the README). Arg keys:
dataset (the built `shapes` dir), steps, batch, seed, edge_weight.

Why edge_weight 60 (each pixel's L1 error weighed by its edge strength;
diffjax/train/vae_trainer.vae_loss): with plain L1 the decoder draws small stars and
crosses as blobs (a star's tips are a few of 1,024 pixels). Oracle agreement on the round
trip of 500 test renders, 2,500 steps: plain L1 62.6%, edge-weighted 97.2% -- the
previous recipe reached 98.6% only with a second 5,000-step decoder-only run.
"""

from diffjax.config import parse_arg

from diffjax.spec import config_dict
from diffjax.train.spec import DataSpec, OptimizerConfig, VAEModelSpec, VAERun, VAETrainSpec

DATASET = "data/shapes/r32-train50000-test1000-holdout1000/1.0.0"


def get_config(arg=None):
    a = parse_arg(arg, dataset=DATASET, steps=2500, batch=32, seed=0, edge_weight=60.0)
    return config_dict(
        VAERun, trainer="vae", seed=a.seed,
        model=config_dict(VAEModelSpec, name="mini"),
        data=config_dict(DataSpec, dataset=a.dataset, batch_size=a.batch),
        optimizer=config_dict(
            OptimizerConfig, learning_rate=2e-3, warmup_steps=100, total_steps=a.steps,
            schedule="cosine", end_lr_fraction=0.05, weight_decay=0.0, b2=0.99),
        # LDM's KL weight 1e-6, L1, the decoder sees a posterior sample: the spec's defaults
        train=config_dict(VAETrainSpec, num_steps=a.steps, keep_checkpoints=2,
                          ema_decay=0.995, edge_weight=a.edge_weight))
