"""Text-to-image sampling: the config behind `diffjax sample`.

    diffjax sample --config diffjax.configs.sample:sampler=euler,steps=30 \
        --prompt "a red circle in the top left" --seeds 0:8 --out runs/demo

Expected result: runs/demo/000000-seed0.png ... 000007-seed7.png, each with its parameters
in the PNG text chunk, plus index.jsonl and this config resolved as config.json;
`diffjax sample --config runs/demo/config.json` reproduces the same files.
"""

import ml_collections

from diffjax.config import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, model="mini", sampler="dpmpp_2m", steps=20, guidance_scale=5.0,
                  size=0, batch_size=8)
    c = ml_collections.ConfigDict()
    # The job: what to draw. --prompt / --prompt-file / --seeds / --out set these.
    c.prompt = ""
    c.prompt_file = ""              # .txt (a prompt per line) or .jsonl (prompt, negative_prompt, seed(s))
    c.seeds = "0:4"                 # 'start:stop', 'n' or 'a,b,c' (per prompt, unless the file says)
    c.negative_prompt = ""
    c.out = ""                      # output directory (local path or gs://...)
    # The model: "mini" (trained, shipped in the package: tools/mini_recipe.py), a random-
    # weight preset ("tiny", "sd15", ...), a diffusers-format folder or a diffjax checkpoint.
    c.model = a.model
    c.sampler = ml_collections.ConfigDict(dict(
        name=a.sampler,
        steps=a.steps,
        schedule="karras",          # sigma grid, see `diffjax.diffusion.schedules`
    ))
    # The sampler function's keyword options (`diffjax samplers` lists them with their
    # defaults), e.g. --config.sampler.options.s_churn=40 for heun; empty = its defaults.
    # Unlocked: an override adds a key, checked against the sampler's signature.
    c.sampler.options = ml_collections.ConfigDict()
    c.guidance_scale = a.guidance_scale
    c.guidance_rescale = 0.0
    c.height = a.size               # 0 = the model's native size
    c.width = a.size
    c.clip_skip = -1                # -1 = the model's own; 0 = last layer; 1 = penultimate
    c.batch_size = a.batch_size     # images per jitted call, over all devices (tail padded)
    c.dtype = "float32"             # network compute dtype; schedules are always float32
    c.attention = "auto"            # auto (per backend) | xla | cudnn | chunked | pallas (TPU)
    # SDXL (ignored by SD1/SD2 models; defaults as diffusers'): the second text tower's
    # prompts ("" = the prompt / negative prompt), micro-conditioning as (height, width) /
    # (top, left) pairs ("" or () = the output size; negative_*: the positive ones), the
    # refiner's aesthetic scores, the ensemble split (fractions of the training timesteps)
    c.prompt_2 = ""
    c.negative_prompt_2 = ""
    c.original_size = ()
    c.crops_coords_top_left = (0, 0)
    c.target_size = ()
    c.negative_original_size = ()
    c.negative_crops_coords_top_left = (0, 0)
    c.negative_target_size = ()
    c.aesthetic_score = 6.0
    c.negative_aesthetic_score = 2.5
    c.denoising_start = 0.0         # > 0: continue given latents (a refiner's Python use)
    c.denoising_end = 1.0           # < 1: stop early (the latents are still noisy)
    # base -> refiner: with a refiner model, the base denoises down to `switch` and the
    # refiner finishes (diffusers' denoising_end / denoising_start), e.g.
    # --config.refiner.model=stabilityai/...-refiner-1.0-folder --config.refiner.switch=0.8
    c.refiner = ml_collections.ConfigDict(dict(model="", switch=0.8))
    # Checkpoints people hold (#27): prompts in A1111's syntax ("a1111": (word:1.3), [word],
    # BREAK, prompts longer than 75 tokens in chunks) or "plain"; max_prompt_chunks > 0
    # truncates (reported). loras: "FILE:SCALE" entries fused at load; embeddings:
    # textual-inversion files; prediction_type: an SD 2.x single file's ("" = from the
    # file); allow_pickle: read .ckpt/.pt/.bin with the restricted (tensors-only) unpickler.
    c.prompt_syntax = "a1111"
    c.max_prompt_chunks = 0
    c.loras = ()
    c.embeddings = ()
    c.prediction_type = ""
    c.allow_pickle = False
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))  # ('data','fsdp','tensor')
    c.compilation_cache = "~/.cache/diffjax/jax"  # persistent XLA cache ("" = off)
    # Multi-host: coordinator "" = one process; "auto" = platform discovery (TPU pods);
    # "host:port" with num_processes and this process's id. Each process writes its shard.
    # timeout_s: a process whose peers have not all joined by then fails, naming the
    # coordinator. Not part of the job's identity: a rerun may change any of these.
    c.distributed = ml_collections.ConfigDict(dict(coordinator="", num_processes=1,
                                                   process_id=0, timeout_s=300))
    return c
