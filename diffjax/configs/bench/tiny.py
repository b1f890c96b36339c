"""Smoke benchmark on the tiny preset (random weights), seconds on a CPU.

    diffjax bench --config diffjax.configs.bench.tiny --out runs/bench-tiny

Writes results.json / results.md: UNet call, N-step sample and VAE decode times, compile
times, FLOPs (XLA and analytic), MFU against a matmul probe of this CPU.
"""

from diffjax.bench import BenchSpec
from diffjax.spec import config_dict


def get_config():
    """Every key of diffjax.bench.BenchSpec: the tiny preset's defaults, batches 1 and 4."""
    return config_dict(BenchSpec, batch_sizes=(1, 4),
                       startup=True)   # fresh-process cold / cached compile times
