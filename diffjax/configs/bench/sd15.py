"""SD1.5-size UNet (random weights), 512x512 (64x64 latents), CFG batch 2, vs diffusers.

    diffjax bench --config diffjax.configs.bench.sd15 --out runs/bench-sd15
    diffjax bench --config diffjax.configs.bench.sd15:dtype=bfloat16,steps=50 --out runs/gpu

On a 2-core CPU one UNet call takes tens of seconds: keep steps and repeats small there.
"""

from diffjax.bench import BenchSpec
from diffjax.config import parse_arg
from diffjax.spec import config_dict


def get_config(arg=None):
    a = parse_arg(arg, dtype="float32", steps=2, repeats=2, batch=1, vs="diffusers",
                  attention="auto")
    return config_dict(
        BenchSpec, model="sd15", height=512, width=512, dtype=a.dtype, batch_sizes=(a.batch,),
        steps=a.steps, attention=a.attention, repeats=a.repeats, vs=a.vs)
