"""diffjax-mini, stage 3 of 3: the latent UNet, conditioned on the frozen mini CLIP text tower.

    python tools/mini_recipe.py assemble          # runs/mini/base: trained CLIP + VAE, new UNet
    diffjax train --config diffjax.configs.mini.unet:clip_skip=2 --workdir runs/mini/unet

The same trainer and step as any SD fine-tune (diffjax.configs.train.unet): epsilon target on
SD's scaled-linear schedule, min-SNR-5 weighting, 10% caption dropout for CFG, latents
encoded once (train.cache_latents). 10,000 steps of 16 (one cosine schedule) on the text
tower's token embeddings (clip_skip 2 of its 2 layers; tools/mini_recipe.py passes it, and
says why). Batch 16, not the previous recipe's 32: the same number of updates at half the
cost of each, so that the whole recipe fits an hour on a 2-core CPU.
Arg keys: model (the assembled base folder), init_from (a finished UNet run's workdir to
continue from: fresh optimizer and schedule, its EMA weights), lr, dataset, steps, batch,
seed, clip_skip (the text-tower layer the UNet is conditioned on, as in `diffjax sample`;
-1: the one the model folder declares -- 2 for the shipped mini, 0 for the assembled base).
"""

from diffjax.config import parse_arg

from diffjax.spec import config_dict
from diffjax.train.spec import (DataSpec, OptimizerConfig, UNetModelSpec, UNetRun,
                                UNetTrainSpec)

DATASET = "data/shapes/r32-train50000-test1000-holdout1000/1.0.0"


def get_config(arg=None):
    a = parse_arg(arg, model="runs/mini/base", init_from="", lr=1e-3, dataset=DATASET,
                  steps=10000, batch=16, seed=0, clip_skip=-1)
    return config_dict(
        UNetRun, trainer="unet", seed=a.seed,
        model=config_dict(UNetModelSpec, name=a.model, init_from=a.init_from),
        data=config_dict(DataSpec, dataset=a.dataset, batch_size=a.batch,
                         caption_dropout=0.1),
        optimizer=config_dict(
            OptimizerConfig, learning_rate=a.lr, warmup_steps=200, total_steps=a.steps,
            schedule="cosine", end_lr_fraction=0.05),
        train=config_dict(
            UNetTrainSpec, num_steps=a.steps, keep_checkpoints=2, clip_skip=a.clip_skip,
            cache_latents=True,  # the frozen encoder once over the 50k renders, not every step
            sample_every=1000, sample_guidance=4.0, sample_params="ema_params"))
