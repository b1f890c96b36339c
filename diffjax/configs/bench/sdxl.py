"""SDXL base 1.0 (random weights), 1024x1024 (128x128 latents), 20 Euler steps, CFG 5,
bf16, batch 1 / 4 / 8, against diffusers' UNet (MLPerf text-to-image's setting: SDXL base,
Euler, 20 steps). Each row has XLA's planned device memory of the UNet call and of the
whole sample program (`unet_planned_bytes`, `sample_planned_bytes`), known before they run.

    diffjax bench --config diffjax.configs.bench.sdxl --out runs/bench-sdxl        # a GPU/TPU
    diffjax bench --config diffjax.configs.bench.sdxl:size=256,steps=2,batch=1,dtype=float32,repeats=1 \
        --out runs/bench-sdxl-cpu    # CPU: the SDXL UNet call vs diffusers at 32x32 latents

The full-size weights are materialised (2.6 B UNet + 0.8 B text params: ~14 GB float32 on
the host): a CPU run needs that much memory whatever `size`. `model=` takes a diffusers SDXL
folder instead (e.g. a scaled-down one for a smoke run).
"""

from diffjax.bench import BenchSpec
from diffjax.config import parse_arg
from diffjax.spec import config_dict


def get_config(arg=None):
    a = parse_arg(arg, model="sdxl", size=1024, dtype="bfloat16", steps=20, repeats=3,
                  batch=0, vs="diffusers", attention="auto")
    return config_dict(
        BenchSpec, model=a.model, height=a.size, width=a.size, dtype=a.dtype,
        batch_sizes=(a.batch,) if a.batch else (1, 4, 8), steps=a.steps, sampler="euler",
        attention=a.attention, repeats=a.repeats, vs=a.vs)
