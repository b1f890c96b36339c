"""Train both CLIP towers contrastively on `shapes` captions: `trainer = "clip"`.

    diffjax train --config diffjax.configs.train.clip:dataset=DIR,steps=2000 --workdir runs/clip

Arg keys: text / vision (CLIP presets; the text tower gets the vision projection_dim),
dataset (built dir or tfds name), steps, batch (the contrastive batch: bigger is harder).
"""

from diffjax.config import parse_arg

from diffjax.spec import config_dict
from diffjax.train.spec import (CheckpointSpec, CLIPModelSpec, CLIPRun, DataSpec,
                                OptimizerConfig)


def get_config(arg=None):
    """Every key of diffjax.train.spec.CLIPRun: this config's choices below, the spec's
    defaults for the rest."""
    a = parse_arg(arg, text="tiny", vision="tiny", dataset="", steps=2000, batch=64)
    return config_dict(
        CLIPRun, trainer="clip",
        model=config_dict(CLIPModelSpec, text=a.text, vision=a.vision),
        data=config_dict(DataSpec, dataset=a.dataset, batch_size=a.batch),
        optimizer=config_dict(
            OptimizerConfig, learning_rate=5e-4, warmup_steps=100, total_steps=a.steps,
            schedule="cosine", end_lr_fraction=0.1, weight_decay=0.1, b2=0.98, eps=1e-6),
        train=config_dict(CheckpointSpec, num_steps=a.steps))
