"""Train the KL autoencoder on `shapes` (or any image dataset): `trainer = "vae"`.

    diffjax train --config diffjax.configs.train.vae:dataset=DIR,steps=2000 --workdir runs/vae

Arg keys: model (a VAE preset: tiny, sd), dataset (built dir or tfds name), steps, batch.
"""

from diffjax.config import parse_arg

from diffjax.spec import config_dict
from diffjax.train.spec import DataSpec, OptimizerConfig, VAEModelSpec, VAERun, VAETrainSpec


def get_config(arg=None):
    """Every key of diffjax.train.spec.VAERun: this config's choices below, the spec's
    defaults for the rest (KL weight 1e-6, L1 reconstruction, EMA 0.999)."""
    a = parse_arg(arg, model="tiny", dataset="", steps=2000, batch=8)
    return config_dict(
        VAERun, trainer="vae",
        model=config_dict(VAEModelSpec, name=a.model),
        data=config_dict(DataSpec, dataset=a.dataset, batch_size=a.batch),
        optimizer=config_dict(
            OptimizerConfig, learning_rate=1e-3, warmup_steps=50, total_steps=a.steps,
            schedule="cosine", end_lr_fraction=0.1, weight_decay=0.0),
        train=config_dict(VAETrainSpec, num_steps=a.steps))
