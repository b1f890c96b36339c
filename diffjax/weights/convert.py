"""Conversion of a whole model between formats: diffusers folder <-> diffjax checkpoint.

A diffusers folder is the exchange format (what the Hub and every other tool read); a
diffjax checkpoint (`weights.checkpoint`) is what a JAX job loads onto its shardings.
Conversion never changes a number: params keep the dtype they were loaded in (float32 from
a diffusers folder), so folder -> checkpoint -> folder is bit-exact.
"""

from __future__ import annotations

import os
import shutil

from diffjax.weights.checkpoint import is_checkpoint, present, save_checkpoint
from diffjax.weights.diffusers_folder import export_sd_folder
from diffjax.weights.io import WeightsError
from diffjax.weights.load import load

FORMATS = ("diffjax", "diffusers", "single-file")


def _n_params(params) -> int:
    import jax
    import numpy as np
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def convert(source: str, dest: str, to: str | None = None, force: bool = False,
            seed: int = 0, prediction_type: str | None = None,
            allow_pickle: bool = False) -> tuple[str, dict[str, int]]:
    """Convert `source` (preset | diffusers folder | diffjax checkpoint) into `dest`.

    to: "diffjax" (orbax checkpoint), "diffusers" (folder `from_pretrained` loads) or
    "single-file" (one LDM/SGM-layout .safetensors); None: the other format than the
    source's (a preset becomes a diffjax checkpoint, a single file a diffusers folder).
    Returns the format written and each network's parameter count.
    """
    from diffjax.weights.single_file import export_single_file, is_single_file
    if to is None:
        to = "diffusers" if is_checkpoint(source) or is_single_file(source) else "diffjax"
    if to not in FORMATS:
        raise WeightsError(f"unknown target format {to!r}; expected one of {FORMATS}")
    if os.path.abspath(source) == os.path.abspath(dest):
        raise WeightsError(f"source and destination are the same path {source!r}")
    if os.path.exists(dest) and not force:
        raise WeightsError(f"destination {dest!r} already exists (use --force to replace it)")
    c = load(source, seed=seed, prediction_type=prediction_type, allow_pickle=allow_pickle)
    if to == "diffjax":
        save_checkpoint(c, dest, force=force)
    elif to == "single-file":       # one LDM/SGM-layout .safetensors (A1111 / ComfyUI)
        export_single_file(c, dest)
    else:
        partial = os.path.abspath(dest) + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        export_sd_folder(c, partial)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.replace(partial, dest)
    return to, {name: _n_params(getattr(c, params_field))
                for name, (_, params_field, _) in present(c).items()}
