"""diffjax-mini's `clip` stage, re-exported from the package.

`--config configs/mini/clip.py[:args]` is `--config diffjax.configs.mini.clip[:args]`; this
path is kept for the commands in the README, the docs and the committed studies.
"""

from diffjax.configs.mini.clip import get_config  # noqa: F401
