"""The `unet` training config, re-exported from the package.

`--config configs/train/unet.py[:args]` is `--config diffjax.configs.train.unet[:args]`; this
path is kept for the commands in the README, the docs and the committed studies.
"""

from diffjax.configs.train.unet import get_config  # noqa: F401
