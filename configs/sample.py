"""The default `diffjax sample` config, re-exported from the package.

`--config configs/sample.py[:args]` is `--config diffjax.configs.sample[:args]`; this
path is kept for the commands in the README, the docs and the committed studies.
"""

from diffjax.configs.sample import get_config  # noqa: F401
