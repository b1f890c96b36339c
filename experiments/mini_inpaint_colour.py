"""Inpainting with diffjax-mini: repaint a shape in another colour; does the oracle agree?

    python experiments/mini_inpaint_colour.py OUT_DIR [n_images] [n_seeds]

For each of the first n_images large shapes of the `shapes` test split: the mask is the
shape's coverage dilated by 2 px (so no edge pixel of the old colour survives), the prompt
is the example's own attributes with the colour changed to the next one of COLOURS, and
the mini model inpaints it with blending (ordinary UNet, RePaint-style), strength 1, the
default sampler (diffjax.configs.sample), seeds 0..n_seeds-1. Counted: the oracle's colour
equals the new one (the criterion), and separately shape/background kept.
Writes OUT_DIR/results.json and OUT_DIR/grid.png (rows: init image, then seeds).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    from diffjax.metrics.shapes_oracle import _dilate
    return _dilate(mask, px)


def main(out: str, n_images: int = 8, n_seeds: int = 16) -> dict:
    from diffjax.config import load_config
    from diffjax.weights.load import load
    from diffjax.data import shapes as S
    from diffjax.metrics import shapes_oracle
    from diffjax.pipeline import TextToImage
    from diffjax.sample_spec import InitImage, spec_from_config
    from diffjax.train.run_log import save_grid

    config = load_config("diffjax.configs.sample", [])
    config.batch_size = n_seeds
    spec = spec_from_config(config)
    comps = load("mini", spec.dtype, spec.attention)
    colours = list(S.COLOURS)
    trials, rows, i = [], [], 0
    while len(trials) < n_images:
        spec_i = S.sample_spec("test", i)
        i += 1
        if spec_i.size != "large":
            continue
        init = S.render(spec_i, 32)
        alpha = S.shape_alpha(spec_i.shape, spec_i.cx, spec_i.cy, spec_i.radius, 32)
        mask = dilate(alpha > 0, 2).astype(np.float32)
        new = colours[(colours.index(spec_i.colour) + 1) % len(colours)]
        prompt = (f"a large {new} {spec_i.shape} on a {spec_i.background} background")
        pipe = TextToImage(comps, spec, init=InitImage(init, mask, strength=1.0))
        images = pipe([prompt] * n_seeds, list(range(n_seeds)))
        got = [shapes_oracle.analyze(im) for im in images]
        trials.append({"index": i - 1, "prompt": prompt, "old_colour": spec_i.colour,
                       "new_colour": new, "shape": spec_i.shape,
                       "colour_changed": float(np.mean([g["colour"] == new for g in got])),
                       "shape_kept": float(np.mean([g["shape"] == spec_i.shape for g in got])),
                       "background_kept": float(np.mean([g["background"] == spec_i.background
                                                         for g in got]))})
        print(trials[-1], flush=True)
        rows.append(np.concatenate([init[None].astype(np.float32) / 255.0, images]))
    result = {"n_images": n_images, "n_seeds": n_seeds, "sampler": config.sampler.name,
              "steps": config.sampler.steps, "guidance_scale": config.guidance_scale,
              "colour_changed": float(np.mean([t["colour_changed"] for t in trials])),
              "shape_kept": float(np.mean([t["shape_kept"] for t in trials])),
              "trials": trials}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    save_grid(np.concatenate(rows), os.path.join(out, "grid.png"), cols=n_seeds + 1, scale=2)
    print(json.dumps({k: v for k, v in result.items() if k != "trials"}))
    return result


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
