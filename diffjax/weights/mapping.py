"""Key-by-key maps between PyTorch state dicts and Flax param trees.

A mapping is a list of `(torch_key, flax_path, layout)` rows. `layout` names how the
tensor is laid out differently: "same", "linear" (torch [out, in] <-> flax [in, out]) or
"conv" (torch [out, in, kh, kw] <-> flax [kh, kw, in, out]). Both directions use the same
rows, so import and export cannot drift apart, and the expected shapes come from the
model itself (`models.abstract.abstract_params`), so a checkpoint of the wrong size fails
on the first mismatched key with its name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from diffjax.weights.io import check_state_dict

Row = tuple[str, tuple[str, ...], str]

_TO_FLAX = {"same": lambda a: a, "linear": lambda a: a.T,
            "conv": lambda a: a.transpose(2, 3, 1, 0)}
_TO_TORCH = {"same": lambda a: a, "linear": lambda a: a.T,
             "conv": lambda a: a.transpose(3, 2, 0, 1)}
_SHAPE_TO_TORCH = {"same": lambda s: s, "linear": lambda s: s[::-1],
                   "conv": lambda s: (s[3], s[2], s[0], s[1])}


def get_path(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set_path(tree: dict, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def flatten_paths(tree, prefix=()) -> dict[tuple[str, ...], object]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(flatten_paths(v, prefix + (k,)))
        return out
    return {prefix: tree}


def check_mapping_covers(rows: Sequence[Row], abstract_params) -> None:
    """Every model param is mapped exactly once (guards the mapping code itself)."""
    model = set(flatten_paths(abstract_params))
    mapped = [r[1] for r in rows]
    missing = model - set(mapped)
    extra = set(mapped) - model
    if missing or extra or len(mapped) != len(set(mapped)):
        raise AssertionError(f"mapping does not cover the model 1:1: unmapped "
                             f"{sorted(missing)[:5]}, unknown {sorted(extra)[:5]}")


def state_dict_to_params(sd: Mapping[str, np.ndarray], rows: Sequence[Row], abstract_params,
                         what: str, ignore_suffixes: Sequence[str] = ()) -> dict:
    """Torch state dict -> nested Flax params (numpy), after a full key/shape check."""
    sd = {k: v for k, v in sd.items() if not k.endswith(tuple(ignore_suffixes))}
    expected = {}
    for key, path, layout in rows:
        shape = tuple(get_path(abstract_params, path).shape)
        expected[key] = _SHAPE_TO_TORCH[layout](shape)
    check_state_dict(expected, sd, what)
    params: dict = {}
    for key, path, layout in rows:
        _set_path(params, path, np.ascontiguousarray(_TO_FLAX[layout](np.asarray(sd[key]))))
    return params


def params_to_state_dict(params, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """Nested Flax params -> torch-layout state dict (numpy), for export."""
    return {key: np.ascontiguousarray(_TO_TORCH[layout](np.asarray(get_path(params, path))))
            for key, path, layout in rows}


# ----------------------------------------------------------------------------------------
# rows derived from module names that mirror the torch module tree
# ----------------------------------------------------------------------------------------
import re  # noqa: E402

# Flax names "down_blocks_0_resnets_1" <-> torch "down_blocks.0.resnets.1" for these lists.
_LIST_NAMES = re.compile(r"(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|"
                         r"transformer_blocks|to_out|net)_(\d+)(_?)")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def _torch_name(element: str) -> str:
    return _LIST_NAMES.sub(lambda m: f"{m[1]}.{m[2]}" + ("." if m[3] else ""), element)


def auto_rows(abstract_params, prefix: str = "") -> list[Row]:
    """Rows for a module whose Flax names mirror the torch module names."""
    rows = []
    for path, leaf in sorted(flatten_paths(abstract_params).items()):
        *mods, last = path
        key = prefix + ".".join([_torch_name(m) for m in mods] + [_LEAF[last]])
        ndim = len(leaf.shape)
        layout = "conv" if (last == "kernel" and ndim == 4) else (
            "linear" if last == "kernel" else "same")
        rows.append((key, path, layout))
    return rows
