"""The GMM convergence study (experiments/results/gmm_convergence/), from the package.

`--config configs/experiments/gmm_convergence.py[:args]` is
`--config diffjax.configs.compare.gmm_convergence[:args]`; this path is kept for the commands in
the README, the docs and the committed studies.
"""

from diffjax.configs.compare.gmm_convergence import get_config  # noqa: F401
