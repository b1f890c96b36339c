"""Smoke benchmark on the tiny preset (random weights), seconds on a CPU.

    diffjax bench --config diffjax.configs.bench.tiny --out runs/bench-tiny

Writes results.json / results.md: UNet call, N-step sample and VAE decode times, compile
times, FLOPs (XLA and analytic), MFU against a matmul probe of this CPU.
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        model="tiny", height=0, width=0, dtype="float32", batch_sizes=(1, 4), steps=10,
        sampler="euler", attention="auto", repeats=3, vs="",
        startup=True))   # fresh-process cold / cached compile times (two subprocesses)
