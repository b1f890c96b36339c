"""pytorch-fid's FID Inception weights -> `diffjax.models.inception.FIDInceptionV3` params.

The published file (`pt_inception-2015-12-05-6726825d.pth`, TensorFlow's FID graph ported
by pytorch-fid) is a torchvision `Inception3` state dict: `Mixed_5b.branch1x1.conv.weight`,
`....bn.{weight,bias,running_mean,running_var}`, plus the classifier `fc.*` that pool3
features never use. pytorch-fid's own `InceptionV3` module saves the same tensors as
`blocks.I.J.*`; both layouts are read. The map is derived from the model's own param tree
(one rule per leaf name), so it cannot drift from the module.

Weights are read from `.safetensors` / `.npz` with no torch, or, with `allow_pickle`, from
the `.pth` pickle through `diffjax.weights.pickle_reader`'s tensors-only unpickler;
`save_inception` writes the .safetensors to keep instead.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np

from diffjax.models.inception import InceptionConfig
from diffjax.weights.io import WeightsError, load_state_dict, save_state_dict
from diffjax.weights.mapping import (flatten_paths, params_to_state_dict,
                                     state_dict_to_params)

# our leaf name -> (torch suffix, layout)
_LEAVES = {"kernel": ("weight", "conv"), "scale": ("weight", "same"),
           "bias": ("bias", "same"), "mean": ("running_mean", "same"),
           "var": ("running_var", "same")}

# pytorch-fid's InceptionV3 wrapper: blocks.I.J -> the Inception3 module it holds
# (J counts layers inside block I; the max pools in between hold no tensors).
_BLOCKS = {(0, 0): "Conv2d_1a_3x3", (0, 1): "Conv2d_2a_3x3", (0, 2): "Conv2d_2b_3x3",
           (1, 0): "Conv2d_3b_1x1", (1, 1): "Conv2d_4a_3x3",
           **{(2, j): n for j, n in enumerate(("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
                                               "Mixed_6b", "Mixed_6c", "Mixed_6d",
                                               "Mixed_6e"))},
           (3, 0): "Mixed_7a", (3, 1): "Mixed_7b", (3, 2): "Mixed_7c"}

# tensors of the full network that pool3 features never read
_UNUSED = re.compile(r"^(fc\.|AuxLogits\.)|num_batches_tracked$")


@functools.lru_cache(maxsize=8)
def abstract_inception_params(config: InceptionConfig = InceptionConfig()):
    """The param tree's shapes (jax.eval_shape of init; nothing allocated; cached: tracing
    the 94 layers takes seconds)."""
    import jax
    import jax.numpy as jnp

    from diffjax.models.inception import FIDInceptionV3
    return jax.eval_shape(lambda: FIDInceptionV3(config).init(
        jax.random.key(0), jnp.zeros((1, 75, 75, 3))))["params"]


def random_inception_params(config: InceptionConfig = InceptionConfig(), seed: int = 0):
    """Seeded random params (He-scaled kernels, random batch-norm statistics): for tests and
    smoke runs only, never for a reported FID."""
    import flax.linen as nn
    import jax
    rng = np.random.default_rng(seed)

    def draw(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            return rng.normal(0, (2 / np.prod(s.shape[:-1])) ** 0.5, s.shape).astype(np.float32)
        if leaf in ("scale", "var"):
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        return rng.normal(0, 0.1, s.shape).astype(np.float32)
    return jax.tree_util.tree_map_with_path(
        draw, nn.meta.unbox(abstract_inception_params(config)))


def inception_rows(config: InceptionConfig = InceptionConfig()):
    """(torch key, flax path, layout) for every param of the model."""
    rows = []
    for path in flatten_paths(abstract_inception_params(config)):
        suffix, layout = _LEAVES[path[-1]]
        rows.append((".".join(path[:-1] + (suffix,)), path, layout))
    return rows


def _canonical_keys(sd: dict) -> dict:
    """Either layout -> torchvision Inception3 keys, the unused tensors dropped."""
    out = {}
    for key, value in sd.items():
        m = re.match(r"^blocks\.(\d+)\.(\d+)\.(.*)$", key)
        if m:
            name = _BLOCKS.get((int(m[1]), int(m[2])))
            if name is None:
                raise WeightsError(f"Inception checkpoint: {key!r} is not a layer of "
                                   "pytorch-fid's InceptionV3 blocks")
            key = f"{name}.{m[3]}"
        if not _UNUSED.search(key):
            out[key] = value
    return out


def params_from_state_dict(sd: dict, config: InceptionConfig = InceptionConfig(),
                           what: str = "Inception checkpoint") -> dict:
    """A pytorch-fid / torchvision FID-Inception state dict (numpy) -> params (numpy)."""
    import flax.linen as nn
    return state_dict_to_params(_canonical_keys(sd), inception_rows(config),
                                nn.meta.unbox(abstract_inception_params(config)), what)


def params_to_torch_state_dict(params, config: InceptionConfig = InceptionConfig()) -> dict:
    """Params -> the Inception3 keys pytorch-fid loads (no `fc.*`: load it non-strictly)."""
    return params_to_state_dict(params, inception_rows(config))


def read_tensors(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """A state dict from .safetensors, .npz or a torch pickle (.pth/.pt/.bin), tensors only.

    Pickles are refused unless `allow_pickle` (they can run code); then they are read by
    `diffjax.weights.pickle_reader`'s restricted unpickler (no torch), or, for the legacy
    pre-1.6 format it does not read, by `torch.load(weights_only=True)` if torch exists."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    from diffjax.weights import pickle_reader
    if path.endswith(pickle_reader.PICKLE_SUFFIXES):
        import zipfile
        if not allow_pickle or zipfile.is_zipfile(path):
            return pickle_reader.load_pickle_state_dict(path, allow_pickle)
    return load_state_dict(path, allow_pickle)


def load_inception(path: str, config: InceptionConfig = InceptionConfig(),
                   allow_pickle: bool = False) -> dict:
    """Params of the FID Inception from a local weights file (nothing is downloaded)."""
    return params_from_state_dict(read_tensors(path, allow_pickle), config,
                                  f"Inception weights {path}")


def save_inception(params, path: str, config: InceptionConfig = InceptionConfig()) -> None:
    """Write params as a torch-layout .safetensors (the form to keep instead of a pickle)."""
    save_state_dict(params_to_torch_state_dict(params, config), path,
                    {"format": "pt", "diffjax": "fid_inception_v3"})
