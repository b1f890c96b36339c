"""diffjax-mini's `unet` stage, re-exported from the package.

`--config configs/mini/unet.py[:args]` is `--config diffjax.configs.mini.unet[:args]`; this
path is kept for the commands in the README, the docs and the committed studies.
"""

from diffjax.configs.mini.unet import get_config  # noqa: F401
