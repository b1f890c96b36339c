"""A grid of samples from fixed prompts and seeds, written as a PNG during UNet training.

Why fixed prompts/seeds: grids from successive steps are then comparable image by image,
and whether the model follows the captions (colour, shape, background) is visible at a
glance. The grid is drawn by the real `TextToImage` pipeline (same sampler code as
`diffjax sample`), compiled once; each call swaps in the current UNet params.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np

from diffjax.train.run_log import save_grid
from diffjax.train.spec import SHAPES_PROMPTS



class GridSampler:
    """`grid(unet_params, path)` -> saves len(prompts) x len(seeds) samples as one PNG.

    Rows are prompts, columns seeds. `steps`, `guidance_scale`, `sampler` and `clip_skip` as in
    `diffjax sample`; the text encoder and VAE are the components' (frozen in training).
    """

    def __init__(self, components, prompts: Sequence[str] = SHAPES_PROMPTS,
                 seeds: Sequence[int] = (0, 1), *, sampler: str = "dpmpp_2m", steps: int = 20,
                 guidance_scale: float = 3.0, scale: int = 2, clip_skip: int = -1):
        from diffjax import sharding
        from diffjax.pipeline import TextToImage
        from diffjax.sample_spec import SampleSpec
        if not prompts or not seeds:
            raise ValueError("GridSampler needs at least one prompt and one seed")
        self.prompts = [p for p in prompts for _ in seeds]
        self.seeds = [int(s) for _ in prompts for s in seeds]
        self.cols, self.scale = len(seeds), scale
        n_data = sharding.data_size(sharding.make_mesh((-1, 1, 1)))
        batch = -(-len(self.prompts) // n_data) * n_data  # the mesh needs a multiple
        spec = SampleSpec(sampler=sampler, steps=steps, guidance_scale=guidance_scale,
                          batch_size=batch, clip_skip=clip_skip)
        self.pipe = TextToImage(components, spec)

    def images(self, unet_params) -> np.ndarray:
        """[prompts*seeds, H, W, 3] in [0, 1] for these UNet params."""
        params = dict(self.pipe.params)
        params["unet"] = unet_params
        self.pipe.params = jax.device_put(params, self.pipe.param_shardings)
        return np.asarray(self.pipe(self.prompts, self.seeds))

    def __call__(self, unet_params, path: str) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return save_grid(self.images(unet_params), path, self.cols, self.scale)
