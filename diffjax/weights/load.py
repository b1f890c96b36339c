"""`load(source)`: every model source diffjax reads, as one `Components`.

A source is a packaged model's name ("mini": trained weights inside the package), a preset
name (a published architecture with seeded random weights), a diffjax orbax checkpoint or a
diffusers-format folder. Names win only when no such path exists, so a folder called
`tiny` in the working directory is still read as a folder.
"""

from __future__ import annotations

import os

from diffjax.weights.checkpoint import is_checkpoint, load_checkpoint
from diffjax.weights.components import (PACKAGED_MODELS, PRESET_MODELS, Components,
                                        packaged_model_dir, preset_components)
from diffjax.weights.diffusers_folder import load_sd_folder


def load(source: str, dtype: str = "float32", attention: str = "auto",
         seed: int = 0, prediction_type: str | None = None,
         allow_pickle: bool = False) -> Components:
    """The model `source` names, its networks computing in `dtype` with the `attention`
    kernel (params stay float32); `seed` draws a preset's random weights. Errors
    (`WeightsError`) name what `source` was expected to be. A single-file checkpoint
    (`weights.single_file`) may need `prediction_type` (SD 2.x); pickle files are read
    only with `allow_pickle` (`weights.pickle_reader`)."""
    if source in PACKAGED_MODELS and not os.path.exists(source):
        comps = load_sd_folder(packaged_model_dir(source), dtype, attention)
        comps.name = source
        return comps
    if source in PRESET_MODELS and not os.path.exists(source):
        return preset_components(source, seed, dtype, attention)
    if is_checkpoint(source):
        from diffjax.weights.io import check_params_finite
        comps = load_checkpoint(source, dtype, attention)
        for name in ("text_params", "text_params_2", "unet_params", "vae_params"):
            if getattr(comps, name, None) is not None:
                check_params_finite(getattr(comps, name), f"{source} ({name})")
        return comps
    from diffjax.weights.single_file import is_single_file, load_single_file
    if is_single_file(source):
        return load_single_file(source, dtype, attention, prediction_type, allow_pickle)
    return load_sd_folder(source, dtype, attention)   # named errors for anything else
