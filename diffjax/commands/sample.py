"""`diffjax sample`: one prompt or a prompt file -> PNGs with metadata, resumable.

Every input is checked before the model is loaded or the program compiled (the output
folder, the prompts and seeds, the sampler and schedule, the mesh, the job already in the
folder, the memory a size needs), so a mistake is one line and exit status 2. The job
itself (`diffjax.commands.job`) is resumable: fixed items (computed lazily) in fixed
batches, finished files verified, clean stops on SIGTERM/SIGINT (exit status 75), multi-
process jobs that resume with the same or another process count. The job's identity is its
config minus the per-launch settings (`NOT_IDENTITY`: out, distributed, compilation_cache,
mesh), so a moved folder or a new coordinator port resumes the same job.
"""

from __future__ import annotations

import json
import os
import sys

from diffjax import prompts

DEFAULT_CONFIG = "diffjax.configs.sample"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="packaged config (diffjax.configs.NAME[:args]), config file "
                             "(path.py[:args]) or a run's config.json "
                             f"(default: {DEFAULT_CONFIG})")
    parser.add_argument("--prompt", help="the prompt (sets config.prompt)")
    parser.add_argument("--prompt-file", help=".txt or .jsonl prompt file (config.prompt_file)")
    parser.add_argument("--seeds", help="'0:8', '3' or '1,5,9' (config.seeds)")
    parser.add_argument("--negative-prompt", help="config.negative_prompt")
    parser.add_argument("--model", help="preset name, diffusers folder or diffjax checkpoint "
                                        "(config.model)")
    parser.add_argument("--out", help="output directory, local or gs:// (config.out)")
    parser.add_argument("--lora", action="append", metavar="FILE[:SCALE]",
                        help="a LoRA fused at load, repeatable (config.loras)")
    parser.add_argument("--embedding", action="append", metavar="FILE",
                        help="a textual-inversion embedding, repeatable (config.embeddings)")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"),
                        help="an SD 2.x single file's prediction type (config.prediction_type)")
    parser.add_argument("--allow-pickle", action="store_true", default=None,
                        help="read .ckpt/.pt/.bin files with the restricted tensors-only "
                             "unpickler (config.allow_pickle)")
    from diffjax.commands import image_flags   # --init-image --mask --strength --aspect ...
    image_flags.add_arguments(parser)


FLAG_TO_KEY = {"prompt": "prompt", "prompt_file": "prompt_file", "seeds": "seeds",
               "negative_prompt": "negative_prompt", "model": "model", "out": "out",
               "prediction_type": "prediction_type", "allow_pickle": "allow_pickle"}
LIST_FLAGS = {"lora": "loras", "embedding": "embeddings"}   # repeatable flags


def resolve_config(args):
    from diffjax.config import apply_override, load_config
    config = load_config(args.config, args.config_overrides)
    for flag, key in FLAG_TO_KEY.items():
        value = getattr(args, flag, None)
        if value is not None:
            apply_override(config, f"{key}={value}")
    for flag, key in LIST_FLAGS.items():
        values = getattr(args, flag, None)
        if values:
            apply_override(config, f"{key}={','.join(values)}")
    return config


def job_items(config) -> prompts.Job:
    """The job's items, computed lazily (a billion seeds take no memory)."""
    seeds = prompts.parse_seeds(config.seeds)
    if bool(config.prompt) == bool(config.prompt_file):
        raise prompts.PromptFileError("give exactly one of --prompt or --prompt-file")
    if config.prompt_file:
        return prompts.read_prompt_file(config.prompt_file, seeds, config.negative_prompt)
    return prompts.items_for_prompt(config.prompt, seeds, config.negative_prompt)


# Per-launch settings: where the job runs, not what it draws. A rerun may change them (a new
# coordinator port, another process count, a moved folder, another mesh or cache) and
# still resumes the same job.
NOT_IDENTITY = ("out", "distributed", "compilation_cache", "mesh")


def job_identity(config_dict: dict) -> dict:
    """The config's keys that decide what the job draws, flattened to dotted names."""
    flat: dict = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, prefix + k + ".")
            else:
                flat[prefix + k] = v
    walk({k: v for k, v in config_dict.items() if k not in NOT_IDENTITY and k != "_diffjax"},
         "")
    return flat


def identity_changes(old: dict, new: dict) -> list[str]:
    """Keys whose value differs between two config dicts' identities. A key only one side
    has (a config.json written before the key existed) differs only if its value is not
    the packaged default (so a newer diffjax still resumes an older job)."""
    from diffjax.config import config_to_dict, load_config
    old, new = job_identity(old), job_identity(new)
    defaults = job_identity(config_to_dict(load_config(DEFAULT_CONFIG)))
    changed = []
    for k in sorted(set(old) | set(new)):
        if k in old and k in new:
            if old[k] != new[k]:
                changed.append(k)
        elif (old.get(k, new.get(k)) != defaults.get(k, object())):
            changed.append(k)
    return changed


def check_same_job(out, config) -> None:
    """Refuse to resume into a directory that holds a different job's outputs. Every
    process makes this check, on the same keys (`job_identity`)."""
    from etils import epath

    from diffjax.config import CONFIG_JSON, config_to_dict
    path = epath.Path(out) / CONFIG_JSON
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise prompts.PromptFileError(
            f"{path} is not valid JSON, so it is unknown which job {out} holds; use a new "
            "--out, or restore that file") from None
    changed = identity_changes(old, config_to_dict(config))
    if changed:
        raise prompts.PromptFileError(
            f"{out} holds another job (config keys differ: {', '.join(changed)}); "
            "use a new --out, or rerun with the same config to resume")


def check_schedule(name: str) -> None:
    from diffjax.diffusion import schedules
    from diffjax.spec import ConfigError
    valid = sorted(set(schedules.SCHEDULES) | {"model"})
    if name not in valid:
        raise ConfigError(f"sampler.schedule {name!r} is not a schedule; valid: "
                          f"{', '.join(valid)}")


def check_image_files(config) -> None:
    """The init image and mask decode (named errors), before the model is loaded."""
    image = config.get("image")
    if image and image.get("init_image"):
        from diffjax import images
        images.load_image(image.init_image)
        if image.get("mask"):
            images.load_mask(image.mask)


def check_mesh(spec) -> None:
    """The mesh fits these devices and the batch splits over its data axes (before the
    model is loaded)."""
    import jax

    from diffjax import sharding
    from diffjax.spec import ConfigError
    shape = sharding.resolve_mesh_shape(spec.mesh_shape, jax.device_count())
    n_data = sharding.data_ways(shape)
    if spec.batch_size % n_data:
        raise ConfigError(f"batch_size {spec.batch_size} cannot be split over the mesh's data "
                          f"axes (data x fsdp = {n_data}, mesh {shape}); use a multiple of "
                          f"{n_data}")


def run(args) -> int:
    from diffjax.commands import image_flags, preflight
    from diffjax.spec import ConfigError
    from diffjax.config import check_finite
    config = resolve_config(args)
    check_finite(config)         # flags too: --strength nan is not a strength
    if not config.out:
        raise ConfigError("--out (config.out) is required")
    # -- the user's inputs, checked before joining a job, loading or compiling ----------
    preflight.check_output_dir(config.out)
    items = job_items(config)
    from diffjax.sample_spec import spec_from_config
    spec = spec_from_config(config)
    check_schedule(spec.schedule)
    if spec.height and spec.width:
        preflight.check_image_memory(spec.batch_size, spec.height, spec.width)
    needs_model = getattr(args, "aspect", None) is not None or getattr(
        args, "pixels", None) is not None
    comps = None
    if not needs_model:          # records the image flags in config; loads nothing
        comps = image_flags.apply_flags(config, args)
        check_finite(config)
        check_image_files(config)
        check_same_job(config.out, config)
    # From here a SIGTERM/SIGINT stops the job cleanly before its next batch (exit 75).
    from diffjax.commands.job import StopRequest
    with StopRequest() as stop:
        return _run_job(config, args, spec, items, comps, needs_model, stop)


def _run_job(config, args, spec, items, comps, needs_model, stop) -> int:
    from diffjax.commands import image_flags, preflight
    from diffjax.config import check_finite
    from diffjax.pipeline import enable_compilation_cache
    from diffjax.sample_spec import spec_from_config
    # -- join the job (every process has passed the same checks) ------------------------
    import jax

    from diffjax.sharding import initialize_distributed, owned_rows
    # jax's own preemption service would take SIGTERM from our handler (see job.py)
    jax.config.update("jax_enable_preemption_service", False)
    d = config.distributed
    initialize_distributed(d.coordinator, d.num_processes, d.process_id,
                           int(d.get("timeout_s", 300)))
    enable_compilation_cache(config.compilation_cache)
    if needs_model:              # --aspect/--pixels need the model's size factor
        comps = image_flags.apply_flags(config, args)
        check_finite(config)
        check_image_files(config)
        check_same_job(config.out, config)
        spec = spec_from_config(config)
        preflight.check_image_memory(spec.batch_size, spec.height, spec.width)
    check_mesh(spec)
    # -- the model, the program --------------------------------------------------------
    pipe = image_flags.pipeline_for(config, spec, comps)
    from diffjax.sharding import data_size
    rows_per_device = spec.batch_size // data_size(pipe.mesh)
    preflight.check_image_memory(spec.batch_size, pipe.height, pipe.width)
    preflight.check_device_memory(max(1, rows_per_device), pipe.height, pipe.width,
                                  pipe.components.vae_config.block_out_channels[0])
    from etils import epath
    out = epath.Path(config.out)
    compile_s = pipe.compile_seconds(spec.batch_size)
    preflight.check_program_memory(pipe.memory_plan())
    out.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        from diffjax.config import save_config
        save_config(config, os.fspath(out))
        n = len(items)
        print(f"compiled in {compile_s:.1f} s (batch {spec.batch_size}); {n} image(s) in "
              f"{prompts.num_batches(n, spec.batch_size)} batch(es)", file=sys.stderr)
    from diffjax.commands.job import run_job
    return run_job(pipe, items, out, spec.batch_size, owned_rows(pipe.mesh, spec.batch_size),
                   stop)
