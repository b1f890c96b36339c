"""The `clip` training config, re-exported from the package.

`--config configs/train/clip.py[:args]` is `--config diffjax.configs.train.clip[:args]`; this
path is kept for the commands in the README, the docs and the committed studies.
"""

from diffjax.configs.train.clip import get_config  # noqa: F401
