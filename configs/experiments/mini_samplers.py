"""The diffjax-mini samplers study (experiments/results/mini_samplers/), from the package.

`--config configs/experiments/mini_samplers.py[:args]` is
`--config diffjax.configs.compare.mini_samplers[:args]`; this path is kept for the commands in
the README, the docs and the committed studies.
"""

from diffjax.configs.compare.mini_samplers import get_config  # noqa: F401
