"""diffjax-mini's `vae` stage, re-exported from the package.

`--config configs/mini/vae.py[:args]` is `--config diffjax.configs.mini.vae[:args]`; this
path is kept for the commands in the README, the docs and the committed studies.
"""

from diffjax.configs.mini.vae import get_config  # noqa: F401
