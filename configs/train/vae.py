"""The `vae` training config, re-exported from the package.

`--config configs/train/vae.py[:args]` is `--config diffjax.configs.train.vae[:args]`; this
path is kept for the commands in the README, the docs and the committed studies.
"""

from diffjax.configs.train.vae import get_config  # noqa: F401
