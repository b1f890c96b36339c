"""The tiny `diffjax bench` preset, re-exported from the package.

`--config configs/bench/tiny.py[:args]` is `--config diffjax.configs.bench.tiny[:args]`; this
path is kept for the commands in the README, the docs and the committed studies.
"""

from diffjax.configs.bench.tiny import get_config  # noqa: F401
