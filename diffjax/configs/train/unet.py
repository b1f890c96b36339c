"""Train the UNet on `shapes` with a frozen text encoder and VAE: `train_and_evaluate`.

    diffjax train --config diffjax.configs.train.unet:dataset=DIR,steps=2000 --workdir runs/unet

Arg keys: model (preset name or diffusers-format folder holding the frozen CLIP + VAE and
the UNet to start from), init_from (a finished UNet run whose EMA weights replace the
folder's UNet), dataset (built dir or tfds name), steps, batch.
"""

from diffjax.config import parse_arg

from diffjax.spec import config_dict
from diffjax.train.spec import (DataSpec, OptimizerConfig, UNetModelSpec, UNetRun,
                                UNetTrainSpec)


def get_config(arg=None):
    """Every key of diffjax.train.spec.UNetRun: this config's choices below, the spec's
    defaults for the rest (min-SNR-5, EMA 0.999, float32, no sample grid)."""
    a = parse_arg(arg, model="tiny", init_from="", dataset="", steps=1000, batch=8)
    return config_dict(
        UNetRun, trainer="unet",
        model=config_dict(UNetModelSpec, name=a.model, init_from=a.init_from),
        data=config_dict(
            DataSpec,
            dataset=a.dataset,      # e.g. data/shapes/r32-train20000-test1000-holdout1000/1.0.0
            batch_size=a.batch,     # global batch
            caption_dropout=0.1),   # for classifier-free guidance
        optimizer=config_dict(
            OptimizerConfig, learning_rate=1e-3, warmup_steps=100, total_steps=a.steps,
            schedule="cosine", end_lr_fraction=0.1),
        train=config_dict(UNetTrainSpec, num_steps=a.steps))
