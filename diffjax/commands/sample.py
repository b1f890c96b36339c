"""`diffjax sample`: one prompt or a prompt file -> PNGs with metadata, resumable.

The job is a fixed list of items (prompt, negative prompt, seed) cut into fixed batches, so
a rerun after an interruption recomputes exactly the unfinished batches with exactly the
same inputs and writes identical files. PNGs are written atomically; `index.jsonl` (one
line per image, in item order) is rewritten atomically at the end of every batch.
"""

from __future__ import annotations

import json
import os
import sys
import time

from diffjax import outputs, prompts

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
    from diffjax.commands import image_flags   # --init-image --mask --strength --aspect ...
    image_flags.add_arguments(parser)


FLAG_TO_KEY = {"prompt": "prompt", "prompt_file": "prompt_file", "seeds": "seeds",
               "negative_prompt": "negative_prompt", "model": "model", "out": "out"}


def resolve_config(args):
    from diffjax.config import apply_override, load_config
    config = load_config(args.config, args.config_overrides)
    for flag, key in FLAG_TO_KEY.items():
        value = getattr(args, flag)
        if value is not None:
            apply_override(config, f"{key}={value}")
    return config


def job_items(config) -> list[prompts.Item]:
    seeds = prompts.parse_seeds(config.seeds)
    if bool(config.prompt) == bool(config.prompt_file):
        raise prompts.PromptFileError("give exactly one of --prompt or --prompt-file")
    if config.prompt_file:
        return prompts.read_prompt_file(config.prompt_file, seeds, config.negative_prompt)
    return prompts.items_for_prompt(config.prompt, seeds, config.negative_prompt)


def _check_same_job(out, config) -> None:
    """Refuse to resume into a directory that holds a different job's outputs."""
    from etils import epath

    from diffjax.config import CONFIG_JSON, config_to_dict
    path = epath.Path(out) / CONFIG_JSON
    if not path.exists():
        return
    old = json.loads(path.read_text())
    old.pop("_diffjax", None)
    new = config_to_dict(config)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise prompts.PromptFileError(
            f"{out} holds another job (config keys differ: {', '.join(changed)}); "
            "use a new --out, or rerun with the same config to resume")


def run(args) -> int:
    from etils import epath

    from diffjax.config import save_config
    config = resolve_config(args)
    if not config.out:
        print("diffjax sample: --out (config.out) is required", file=sys.stderr)
        return 2
    try:
        items = job_items(config)
    except prompts.PromptFileError as e:
        print(f"diffjax sample: {e}", file=sys.stderr)
        return 2
    from diffjax.pipeline import enable_compilation_cache, load_pipeline, spec_from_config
    from diffjax.sharding import initialize_distributed
    enable_compilation_cache(config.compilation_cache)
    initialize_distributed(config.distributed.coordinator, config.distributed.num_processes,
                           config.distributed.process_id)
    from diffjax.commands import image_flags
    from diffjax.images import ImageConditioningError
    try:                                       # img2img / inpainting / aspect -> config
        comps = image_flags.apply_flags(config, args)
    except ImageConditioningError as e:
        print(f"diffjax sample: {e}", file=sys.stderr)
        return 2
    spec = spec_from_config(config)            # validates before anything is written
    out = epath.Path(config.out)
    try:
        _check_same_job(out, config)
    except prompts.PromptFileError as e:
        print(f"diffjax sample: {e}", file=sys.stderr)
        return 2
    if comps is None and not config.get("image"):
        pipe = load_pipeline(config.model, spec)
    else:
        try:
            pipe = image_flags.pipeline_for(config, spec, comps)
        except (ImageConditioningError, OSError) as e:
            print(f"diffjax sample: {e}", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    import jax
    if jax.process_index() == 0:
        save_config(config, os.fspath(out))
    return write_job(pipe, items, out, spec.batch_size)


INDEX_EVERY_S = 30.0  # rewrite index.jsonl at most this often during a job (and at the end)


def write_job(pipe, items, out, batch_size: int) -> int:
    """Generate every unfinished batch and write its PNGs; keep index.jsonl current."""
    import jax
    from tqdm import tqdm

    all_batches = prompts.batches(items, batch_size)
    if jax.process_index() == 0:
        for stale in out.glob(".*.tmp-*"):   # left by a job killed mid-write
            stale.unlink()
    finished = {i.stem for i in items if (out / f"{i.stem}.png").exists()}  # one scan
    todo = [b for b in all_batches if not all(i.stem in finished for i in b)]
    main_process = jax.process_index() == 0
    bar = tqdm(total=len(items), initial=len(items) - sum(len(b) for b in todo), unit="img",
               desc="sampling", disable=not main_process, dynamic_ncols=True)
    compile_s = pipe.compile_seconds(batch_size)
    bar.write(f"compiled in {compile_s:.1f} s (batch {batch_size}); "
              f"{len(todo)} of {len(all_batches)} batches to do")
    t0 = last_index = time.perf_counter()
    for batch in todo:
        images, owned = pipe.generate_local([i.prompt for i in batch],
                                            [i.negative_prompt for i in batch],
                                            [i.seed for i in batch])
        for pos in owned:                 # the items this process's devices computed
            item = batch[pos]
            meta = pipe.metadata(item.prompt, item.negative_prompt, item.seed)
            outputs.atomic_write(out / f"{item.stem}.png",
                                 outputs.png_bytes(outputs.to_uint8(images[pos]), meta))
        finished.update(i.stem for i in batch)
        bar.update(len(batch))
        if main_process and time.perf_counter() - last_index > INDEX_EVERY_S:
            _write_index(out, items, finished)
            last_index = time.perf_counter()
    bar.close()
    if main_process:
        _write_index(out, items, finished)
        n_new = sum(len(b) for b in todo)
        rate = n_new / max(time.perf_counter() - t0, 1e-9)
        print(f"{len(items)} images in {out} ({n_new} new, {rate:.2f} images/s after compile)")
    return 0


def _write_index(out, items, finished) -> None:
    lines = [json.dumps(dict(file=f"{i.stem}.png", index=i.index, prompt=i.prompt,
                             negative_prompt=i.negative_prompt, seed=i.seed))
             for i in items if i.stem in finished]
    outputs.atomic_write(out / "index.jsonl", "\n".join(lines) + ("\n" if lines else ""))
