"""Text-to-image sampling: the config behind `diffjax sample`.

    diffjax sample --config configs/sample.py:sampler=dpmpp_2m,steps=20 \
        --prompt "a red circle in the top left" --seeds 0:8 --out runs/demo

Writes one PNG per (prompt, seed) with its parameters in the PNG text chunk, an index.jsonl
and this config resolved as config.json; `--config runs/demo/config.json` reproduces it.
"""

import ml_collections

from diffjax.config import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, model="mini", sampler="dpmpp_2m", steps=20, guidance_scale=5.0,
                  size=0, batch_size=8)
    c = ml_collections.ConfigDict()
    # A preset name ("mini", "tiny", ...), a diffusers-format folder, or a diffjax checkpoint.
    c.model = a.model
    c.sampler = ml_collections.ConfigDict(dict(
        name=a.sampler, steps=a.steps,
        schedule="karras",          # sigma grid: karras | exponential | uniform | leading | trailing | linspace
        eta=1.0,                    # noise scale of ancestral/SDE samplers
        order=2,                    # for samplers with an order option (unipc, deis)
    ))
    c.guidance_scale = a.guidance_scale
    c.guidance_rescale = 0.0
    c.negative_prompt = ""
    c.height = a.size               # 0 = the model's native size
    c.width = a.size
    c.clip_skip = 0                 # 0 = last layer; 1 = penultimate (SD2 style)
    c.batch_size = a.batch_size     # images per device step (padded at the tail)
    c.dtype = "float32"             # network compute dtype; schedules are always float32
    c.attention = "xla"             # xla | cudnn | chunked
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))  # ('data','fsdp','tensor')
    return c
