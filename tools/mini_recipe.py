"""diffjax-mini from scratch, in order: data -> clip -> vae -> assemble -> unet -> package
-> evaluate. Each training stage resumes from its checkpoints when rerun.

    python tools/mini_recipe.py all                 # the whole recipe (see the README's times)
    python tools/mini_recipe.py evaluate            # prompt accuracy + CLIP ranking + grid
    python tools/mini_recipe.py STAGE [--runs runs/mini] [--seed 1] [--out DIR]

Why a script and not one config: the three networks train in sequence, each frozen for
the next (as Stable Diffusion's were), and two steps sit between trainings: `assemble`
writes a diffusers-format folder with the trained CLIP (text and image towers) and VAE
plus a fresh UNet (the UNet trainer's `model`), after measuring the VAE's latent scaling
factor (1/std of its latents, as LDM chose 0.18215); `package` writes the EMA UNet into
that folder as the shipped model (float16 storage, < 25 MB). Every training stage is a
plain `diffjax train --config diffjax.configs.mini.<stage>:<args>` run; its workdir's
config.json reruns it. Run from the repository root: the default paths (runs/, data/,
diffjax/assets/mini) are relative to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

import numpy as np

# The recipe, one stage after another in this process. (Side by side, as separate
# processes, saved nothing on the 2-core CPU: CLIP and VAE took 31.2 min together against
# 29.7 one after the other.)
PLAN = ("data", "clip", "vae", "assemble", "unet", "package", "evaluate")
TRAIN_STAGES = ("clip", "vae", "unet")
# The UNet is conditioned on the text tower's token embeddings (clip_skip 2 of its 2
# layers), not its last layer: the last layer gives the shape word of an unseen (shape,
# colour) pair nearly the state of a seen pair of that colour (purple star ~ purple
# triangle, cosine 0.958) and a UNet trained on it drew held-out pairs as seen ones (77.4%
# right); the embeddings keep each word apart (tools/mini_heldout_probes.py states).
UNET_CLIP_SKIP = 2
# The configs' defaults are the recipe's steps; here only what a stage takes from the runs
# before it.
STAGE_ARGS = {"unet": lambda runs: {"model": os.path.join(runs, "base"),
                                    "clip_skip": UNET_CLIP_SKIP}}
DATA_SIZES = {"train": 50000, "test": 1000, "holdout": 1000}
SHIPPED = os.path.join("diffjax", "assets", "mini")  # in the checkout the tool runs in
SHIPPED_SEED = 1  # the shipped model is this recipe's run with seed 1 (README)
# Pixels in [-1, 1], as every mini network was trained: mean = std = 0.5 on [0, 1].
MINI_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def dataset_dir(data_root: str) -> str:
    name = "r32-" + "-".join(f"{k}{v}" for k, v in DATA_SIZES.items())
    return os.path.join(data_root, "shapes", name, "1.0.0")


def stage_data(a) -> None:
    from diffjax.data import builders
    builders.build_shapes(a.data, 32, DATA_SIZES)


def train_stage(a, name: str, **args) -> None:
    """`diffjax train --config diffjax.configs.mini.NAME:dataset=...,seed=...` in-process."""
    from diffjax.commands.train import get_trainer
    from diffjax.config import load_config
    arg = ",".join(f"{k}={v}" for k, v in dict(dataset=dataset_dir(a.data), seed=a.seed,
                                                **args).items())
    config = load_config(f"diffjax.configs.mini.{name}:{arg}", [])
    t0 = time.time()
    get_trainer(config)(config, os.path.join(a.runs, name))
    _log_time(a, name, time.time() - t0)


def _log_time(a, stage: str, seconds: float) -> None:
    path = os.path.join(a.runs, "times.json")
    times = json.load(open(path)) if os.path.exists(path) else {}
    times[stage] = round(times.get(stage, 0.0) + seconds, 1)  # summed across resumes
    with open(path + ".tmp", "w") as f:
        json.dump(times, f, indent=1)
    os.replace(path + ".tmp", path)


def latent_scale(vae_config, vae_params, data: str, n: int = 2048) -> float:
    """1 / std of the VAE posterior means over the first n training images."""
    import jax

    from diffjax.data import builders
    from diffjax.models.vae import AutoencoderKL
    src = builders.open_source(data, "train", None)
    x = np.stack([np.asarray(src[i]["image"]) for i in range(n)]).astype(np.float32)
    vae = AutoencoderKL(vae_config)
    enc = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=AutoencoderKL.encode).mean)
    z = np.concatenate([np.asarray(enc(vae_params, x[i:i + 256] / 127.5 - 1.0))
                        for i in range(0, n, 256)])
    return float(1.0 / z.std())


def stage_assemble(a) -> None:
    """runs/base: trained CLIP (text + image towers) and VAE, a seeded fresh mini UNet."""
    from diffjax.metrics.clip_features import write_normalization
    from diffjax.models import presets
    from diffjax.train.checkpoint import load_trained_params
    from diffjax.train.clip_trainer import clip_configs
    from diffjax.weights.components import SD_SCHEDULER, Components, random_params
    from diffjax.weights.diffusers_folder import export_sd_folder
    import flax.linen as nn

    from diffjax.models.abstract import abstract_params
    clip, clip_step = load_trained_params(os.path.join(a.runs, "clip"))
    vae_p, vae_step = load_trained_params(os.path.join(a.runs, "vae"))
    tc, vc = clip_configs("mini", "mini", 32)
    vae_c = presets.VAE_PRESETS["mini"]
    scale = latent_scale(vae_c, vae_p, dataset_dir(a.data))
    vae_c = dataclasses.replace(vae_c, scaling_factor=round(scale, 5))
    uc = presets.UNET_PRESETS["mini"]
    up = random_params(nn.meta.unbox(abstract_params(uc)), a.seed + 1)
    comps = Components("mini", tc, clip["text_model"], uc, up, vae_c, vae_p, None,
                       dict(SD_SCHEDULER), vc, clip["vision_model"])
    out = os.path.join(a.runs, "base")
    export_sd_folder(comps, out)
    write_normalization(out, *MINI_NORMALIZATION, 32)
    print(f"assembled {out}: CLIP step {clip_step}, VAE step {vae_step}, "
          f"latent scaling_factor {vae_c.scaling_factor}")


def repo_relative(value):
    """`value` (a run's config.json) with paths under the repository root (the current
    directory, where the recipe runs) made relative to it, so the shipped record reruns from
    any clone (a stage's config.json keeps the paths it was given: absolute when --runs /
    --data were)."""
    if isinstance(value, dict):  # explicit walk: keeps the config's key order, which
        return {k: repo_relative(v) for k, v in value.items()}  # jax.tree_map would sort
    if isinstance(value, list):
        return [repo_relative(v) for v in value]
    if isinstance(value, str) and value.startswith(os.getcwd() + os.sep):
        return os.path.relpath(value)
    return value


def stage_package(a) -> None:
    """The shipped folder: runs/base (the CLIP and VAE runs' EMA params) with the UNet
    run's EMA UNet, declaring the clip_skip it was trained on; float16 storage."""
    import shutil

    from diffjax.metrics.clip_features import write_normalization
    from diffjax.train.checkpoint import load_trained_params
    from diffjax.weights.components import resolve_clip_skip
    from diffjax.weights.diffusers_folder import export_sd_folder, load_sd_folder
    comps = load_sd_folder(os.path.join(a.runs, "base"))
    configs = {s: repo_relative(json.load(open(os.path.join(a.runs, s, "config.json"))))
               for s in TRAIN_STAGES}
    comps.unet_params, unet_step = load_trained_params(os.path.join(a.runs, "unet"))
    # The layer the UNet run was trained on, as its config.json says (-1: the base's own).
    comps.clip_skip = resolve_clip_skip(configs["unet"]["train"]["clip_skip"], comps,
                                        "runs' unet train.clip_skip")
    tmp = a.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export_sd_folder(comps, tmp, dtype="float16")
    write_normalization(tmp, *MINI_NORMALIZATION, 32)
    times = json.load(open(os.path.join(a.runs, "times.json")))
    with open(os.path.join(tmp, "diffjax_mini.json"), "w") as f:
        json.dump({"what": "diffjax-mini: CLIP + KL-f4 VAE + UNet trained from scratch on "
                           "`shapes` (32 px) by tools/mini_recipe.py",
                   "seed": a.seed, "unet_step": unet_step, "clip_skip": comps.clip_skip,
                   "dataset_sizes": DATA_SIZES,
                   "date": datetime.date.today().isoformat(), "train_seconds": times,
                   "configs": configs}, f, indent=1)
    shutil.rmtree(a.out, ignore_errors=True)
    os.replace(tmp, a.out)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(a.out) for f in fs)
    print(f"packaged {a.out}: {size / 1e6:.1f} MB, UNet step {unet_step}")


def sample_pipeline(model: str, batch: int):
    """`model` with the default sample config (diffjax.configs.sample) at batch size `batch`:
    what every figure of the recipe and its probes is measured with."""
    from diffjax.config import load_config
    from diffjax.pipeline_loading import load_pipeline
    config = load_config("diffjax.configs.sample", [f"batch_size={batch}"])
    return load_pipeline(model, config)


def evaluate(model: str, n: int, seed_offset: int = 0, batch: int = 100) -> dict:
    """Prompt accuracy (oracle) of `model` on the first n `test` (seen combinations) and
    n `holdout` captions, the default sampler of diffjax.configs.sample; the CLIP ranking."""
    from diffjax.data import shapes as S
    from diffjax.metrics import shapes_oracle
    from diffjax.metrics.clip_features import CLIPFeatures
    pipe = sample_pipeline(model, batch)
    result = {"model": model, "sampler": pipe.spec.sampler, "steps": pipe.spec.steps,
              "guidance_scale": pipe.spec.guidance_scale, "n_per_split": n}
    for split in ("test", "holdout"):
        ex = [S.example(split, i, 32) for i in range(n)]
        captions = [e["caption"] for e in ex]
        images = pipe(captions, [seed_offset + i for i in range(n)])
        per = [shapes_oracle.check(im, c) for im, c in zip(images, captions)]
        result[split] = {"prompt_accuracy": float(np.mean([p["all"] for p in per]))}
        for k in shapes_oracle.ATTRIBUTES:
            stated = [p[k] for p in per if k in p]
            result[split][k] = float(np.mean(stated)) if stated else None
        print(split, result[split], flush=True)
    clip = CLIPFeatures.from_model(model)
    result["clip_ranking"] = clip_ranking(clip, n)
    result["clip_position_ranking"] = clip_position_ranking(clip, n)
    result["vae_round_trip"] = vae_round_trip(pipe.components, n)
    return result


def vae_round_trip(c, n: int) -> dict:
    """Oracle agreement on the VAE round trip (encode mean -> decode) of n test renders by
    Components c (the evaluated pipeline's, not loaded again): the ceiling the decoder puts
    on prompt accuracy, per attribute."""
    import jax

    from diffjax.data import shapes as S
    from diffjax.metrics import shapes_oracle
    from diffjax.models.vae import AutoencoderKL
    vae = AutoencoderKL(c.vae_config)
    f = jax.jit(lambda p, x: vae.apply({"params": p}, vae.apply(
        {"params": p}, x, method=AutoencoderKL.encode).mean, method=AutoencoderKL.decode))
    ex = [S.example("test", i, 32) for i in range(n)]
    x = np.stack([e["image"] for e in ex]).astype(np.float32) / 127.5 - 1.0
    out = np.concatenate([np.asarray(f(c.vae_params, x[i:i + 250])) for i in range(0, n, 250)])
    per = [shapes_oracle.check((o + 1.0) / 2.0, {k: e[k] for k in shapes_oracle.ATTRIBUTES})
           for o, e in zip(np.clip(out, -1, 1), ex)]
    return {k: float(np.mean([p[k] for p in per])) for k in ("all",) + shapes_oracle.ATTRIBUTES}


def clip_ranking(clip, n: int) -> dict:
    """Fraction of held-out renders whose CLIP score ranks their own caption above the
    caption of another example that differs in shape or colour (pairs i, i+1)."""
    from diffjax.data import shapes as S
    ex = [S.example("holdout", i, 32) for i in range(n + 1)]
    images = np.stack([e["image"] for e in ex[:n]])
    own = [e["caption"] for e in ex[:n]]
    other = []
    for i in range(n):  # the next example that differs in shape or colour
        j = i + 1
        while (ex[j % len(ex)]["shape"], ex[j % len(ex)]["colour"]) == (ex[i]["shape"],
                                                                        ex[i]["colour"]):
            j += 1
        other.append(ex[j % len(ex)]["caption"])
    img = clip.image_embeds(images)  # once, for both captions
    s_own, s_other = (clip.score_of_embeds(img, clip.text_embeds(c)) for c in (own, other))
    return {"pairs": n, "own_above_mismatched": float(np.mean(s_own > s_other)),
            "mean_score_own": float(s_own.mean()), "mean_score_mismatched":
            float(s_other.mean())}


def clip_position_ranking(clip, n: int) -> dict:
    """Fraction of n `test` renders whose CLIP score is highest for the caption naming their
    own grid cell among the nine captions "a {size} {colour} {shape} {where}" that differ
    only in position (chance 1/9); and the same for the row alone (the three captions of
    the render's own column, chance 1/3).

    Why: the UNet is conditioned on this text tower; a tower that does not tell "upper left"
    from "lower left" (the first mini CLIP: cosine 0.994 between those captions' embeddings)
    leaves the UNet nothing to place a shape by."""
    from diffjax.data import shapes as S
    ex = [S.example("test", i, 32) for i in range(n)]
    images = np.stack([e["image"] for e in ex])
    rng = np.random.default_rng(0)
    wheres = [S.where_phrase(p, rng) for p in S.POSITIONS]
    captions = [f"a {e['size']} {e['colour']} {e['shape']} {w}" for e in ex for w in wheres]
    scores = clip.score_of_embeds(clip.image_embeds(images)[:, None],  # [n, 9]
                                  clip.text_embeds(captions).reshape(n, len(wheres), -1))
    own = np.array([S.POSITIONS.index(e["position"]) for e in ex])
    col = own % 3
    rows = np.stack([col, col + 3, col + 6], 1)  # the three cells of each render's column
    row_scores = np.take_along_axis(scores, rows, 1)
    return {"renders": n, "position_top1_of_9": float(np.mean(scores.argmax(1) == own)),
            "row_top1_of_3": float(np.mean(row_scores.argmax(1) == own // 3))}


# The README's grid: its first command's prompt, then seen and held-out combinations
# (held out of training: shapes.HELDOUT_SHAPE_COLOUR / HELDOUT_SHAPE_POSITION).
GRID_PROMPTS = (
    "a red circle in the top left",
    "a large blue square in the center on a white background",  # held out: (square, blue)
    "a small green triangle in the lower right corner",
    "a yellow star on the left on a black background",
    "a large purple diamond at the bottom on a gray background",
    "an orange cross at the top",
    "a large green circle in the center",        # held out: (circle, green)
    "a small red star in the middle on a white background",  # seen
)


def save_prompt_grid(model: str, path: str, seeds: int = 6) -> None:
    """Rows = GRID_PROMPTS, columns = seeds 0..seeds-1, the default sample config."""
    from diffjax.train.run_log import save_grid
    pipe = sample_pipeline(model, len(GRID_PROMPTS) * seeds)
    prompts = [p for p in GRID_PROMPTS for _ in range(seeds)]
    images = pipe(prompts, list(range(seeds)) * len(GRID_PROMPTS))
    save_grid(images, path, cols=seeds, scale=3)


def stage_evaluate(a) -> None:
    model = a.model or a.out
    r = evaluate(model, a.n)
    os.makedirs(a.runs, exist_ok=True)
    name = os.path.basename(os.path.normpath(model))
    with open(os.path.join(a.runs, f"evaluate_{name}.json"), "w") as f:
        json.dump(r, f, indent=1)
    save_prompt_grid(model, os.path.join(a.runs, f"grid_{name}.png"))
    print(json.dumps(r, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=PLAN + ("all",))
    p.add_argument("--runs", default="runs/mini", help="workdirs of the three trainings")
    p.add_argument("--data", default="data", help="tfds data_dir for `shapes`")
    p.add_argument("--seed", type=int, default=SHIPPED_SEED,
                   help="seed of every stage (default: the shipped model's)")
    p.add_argument("--out", default=SHIPPED, help="package: where the model goes")
    p.add_argument("--model", default=None,
                   help="evaluate: model name or folder (default: --out, what package wrote)")
    p.add_argument("--n", type=int, default=500, help="evaluate: captions per split")
    a = p.parse_args(argv)
    if a.stage == "all":
        t0 = time.time()
        for s in PLAN:
            run_stage(a, s)
            if s == "package":  # the model is made: the recipe's time to train it
                _log_time(a, "wall_to_package", time.time() - t0)
        _log_time(a, "recipe_wall", time.time() - t0)
    else:
        run_stage(a, a.stage)
    return 0


def run_stage(a, s: str) -> None:
    print(f"== {s}", flush=True)
    if s in TRAIN_STAGES:  # the stages' inputs follow --runs
        train_stage(a, s, **STAGE_ARGS.get(s, lambda runs: {})(a.runs))
    else:
        {"data": stage_data, "assemble": stage_assemble, "package": stage_package,
         "evaluate": stage_evaluate}[s](a)


if __name__ == "__main__":
    sys.exit(main())
