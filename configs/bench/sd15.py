"""The SD1.5-size `diffjax bench` preset, re-exported from the package.

`--config configs/bench/sd15.py[:args]` is `--config diffjax.configs.bench.sd15[:args]`; this
path is kept for the commands in the README, the docs and the committed studies.
"""

from diffjax.configs.bench.sd15 import get_config  # noqa: F401
