"""diffjax-mini, stage 1 of 3: both CLIP towers, contrastive on `shapes` captions.

    diffjax train --config diffjax.configs.mini.clip --workdir runs/mini/clip

The text tower is what the mini UNet conditions on (frozen); both towers are the CLIP
score / Frechet feature extractor of `diffjax compare`. Arg keys: dataset, steps, batch,
seed.

Why 2,000 steps of 128 pairs: position is learnt last, from the few in-batch negatives
that differ only in position (same shape and colour: ~1 in 36 pairs). The first mini CLIP
(800 steps of 64) did not learn it at all -- the nine position captions of a render
scored its own cell first 14% of the time (chance 11%), "upper left" and "lower left"
captions had text-embedding cosine 0.994 -- and the UNet conditioned on it placed shapes
by the noise, not the words (position 34%). This config: 38% after 500 steps, 85% after
1,000, 99.6% after 2,000 (tools/mini_recipe.py clip_position_ranking, 500 renders).
text_length 32: `shapes` captions are at most 14 tokens, and the causal text tower trains
the same on 32-token rows as on 77 in fewer FLOPs (diffjax/train/clip_trainer.py).
The recipe, in order: tools/mini_recipe.py and the README.
"""

from diffjax.config import parse_arg

from diffjax.spec import config_dict
from diffjax.train.spec import (CheckpointSpec, CLIPModelSpec, CLIPRun, DataSpec,
                                OptimizerConfig)

DATASET = "data/shapes/r32-train50000-test1000-holdout1000/1.0.0"


def get_config(arg=None):
    a = parse_arg(arg, dataset=DATASET, steps=2000, batch=128, seed=0)
    return config_dict(
        CLIPRun, trainer="clip", seed=a.seed,
        model=config_dict(CLIPModelSpec, text="mini", vision="mini"),
        data=config_dict(DataSpec, dataset=a.dataset, batch_size=a.batch, text_length=32),
        optimizer=config_dict(
            OptimizerConfig, learning_rate=1e-3, warmup_steps=100, total_steps=a.steps,
            schedule="cosine", end_lr_fraction=0.05, weight_decay=0.1, b2=0.98, eps=1e-6),
        train=config_dict(CheckpointSpec, num_steps=a.steps, keep_checkpoints=2,
                          ema_decay=0.99))
