"""Samplers on diffjax-mini: prompt accuracy, CLIP score, Fréchet distance and convergence
error vs NFE, on `shapes` test captions (seen combinations), guidance 5.

    diffjax compare --config diffjax.configs.compare.mini_samplers --out runs/mini_samplers

Expected result: table.md with one table per metric (rows: samplers, columns: steps),
*_karras_g5.png plots, and grid_karras_g5_seed{0..3}.png (rows: samplers, columns: steps).
The committed study is experiments/results/mini_samplers/.
"""

import ml_collections

from diffjax.config import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, seeds=200, guidance=5.0)
    c = ml_collections.ConfigDict()
    c.name = "mini_samplers"
    c.out = ""
    c.model = ml_collections.ConfigDict(dict(
        kind="pipeline", path="mini", seed=0, dim=0, n_components=0, spread=0.0, std=0.0))
    c.prompts = "shapes:test"   # seed i draws the caption of test example i
    c.samplers = ("euler", "ddim", "dpmpp_2m", "unipc")
    c.sampler_options = ml_collections.ConfigDict()  # {sampler: {option: value}}
    c.steps = (5, 10, 20)
    c.guidance_scales = (a.guidance,)
    c.schedules = ("karras",)
    c.seeds = a.seeds
    c.metrics = ("prompt_accuracy", "clip_score", "frechet", "rmse")
    c.reference = ml_collections.ConfigDict(dict(sampler="dpmpp_2m", steps=200,
                                                 schedule="karras", sigma_min=0.0))
    c.fit_last = 2
    c.dtype = "float32"
    c.feature_extractor = "mini"   # the shipped mini CLIP (or a CLIP folder)
    c.real_images = "shapes:test"  # frechet: renders of the same test examples
    c.grid_prompts = 4             # image grids for seeds 0..3
    return c
