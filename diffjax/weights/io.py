"""Reading, writing and checking PyTorch-style state dicts, with no torch required.

A state dict here is a flat `{dotted.key: numpy array}`. Conversion code maps those keys to
our param tree; `check_state_dict` makes every mismatch an error that lists the keys, so a
checkpoint is never loaded partially.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import numpy as np


class WeightsError(ValueError):
    """A checkpoint does not match the model it is loaded into."""


def _fmt_items(items, limit=8):
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_state_dict(expected: Mapping[str, tuple], got: Mapping[str, np.ndarray],
                     what: str = "checkpoint") -> None:
    """Raise WeightsError naming missing, unexpected and mis-shaped keys (first few of each).

    expected: key -> shape the model needs; got: key -> array the file holds.
    """
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(got)
                       if tuple(np.shape(got[k])) != tuple(expected[k]))
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{what} does not match the model:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s): "
                     + _fmt_items(f"{k} {tuple(expected[k])}" for k in missing))
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): "
                     + _fmt_items(f"{k} {tuple(np.shape(got[k]))}" for k in unexpected))
    if misshaped:
        lines.append(f"  {len(misshaped)} mis-shaped key(s): " + _fmt_items(
            f"{k} has {tuple(np.shape(got[k]))}, expected {tuple(expected[k])}"
            for k in misshaped))
    raise WeightsError("\n".join(lines))


def load_state_dict(path: str | os.PathLike,
                    allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Load a `.safetensors` file, or a torch pickle (`.bin`/`.pt`/`.pth`/`.ckpt`) only with
    `allow_pickle`: a pickle can run code when it is read, so it is refused by default
    (naming why and how to convert) and otherwise read by `weights.pickle_reader`'s
    restricted unpickler, which rebuilds tensors only and needs no torch.

    bfloat16 tensors come back as `ml_dtypes.bfloat16` numpy arrays (numpy has no bf16).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        out = _read_safetensors(path)
        check_finite(out, path)
        return out
    if path.endswith((".bin", ".pt", ".pth", ".ckpt")):
        import zipfile

        from diffjax.weights.pickle_reader import load_pickle_state_dict
        if not allow_pickle or zipfile.is_zipfile(path):
            return load_pickle_state_dict(path, allow_pickle)
        out = _legacy_torch_pickle(path)
        check_finite(out, path)
        return out
    raise WeightsError(f"{path!r}: unknown weights format (expected .safetensors or .bin)")


def _legacy_torch_pickle(path: str) -> dict[str, np.ndarray]:
    """A pre-1.6 (non-zip) torch pickle, which the restricted reader does not parse, through
    `torch.load(weights_only=True)` (tensors only) when torch is installed; only reached
    with allow_pickle."""
    try:
        import torch
    except ImportError as e:
        raise WeightsError(f"{path!r} is a legacy (pre-1.6) PyTorch pickle; reading it needs "
                           "torch. Re-save it as .safetensors") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise WeightsError(f"weights file {path!r} cannot be read as a PyTorch checkpoint "
                           f"({type(e).__name__})") from None
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise WeightsError(f"weights file {path!r} holds {type(sd).__name__}; expected a "
                           "state dict")
    return {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in sd.items() if hasattr(v, "detach")}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file; a truncated or corrupted file is a WeightsError
    naming it (not the reader's own exception)."""
    from safetensors import SafetensorError, safe_open
    out = {}
    try:
        with safe_open(path, framework="flax") as f:
            for key in f.keys():
                out[key] = np.asarray(f.get_tensor(key))
    except (SafetensorError, OSError, ValueError) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise WeightsError(f"weights file {path!r} is truncated or corrupted (safetensors: "
                           f"{detail}); re-download or re-convert it") from None
    return out


def check_finite(state: Mapping[str, np.ndarray], what: str = "checkpoint") -> None:
    """Raise WeightsError naming the tensors holding NaN or inf: such weights (a corrupted
    download, random bytes in a payload, a diverged run) give black images, silently."""
    bad = []
    for key, value in state.items():
        a = np.asarray(value)
        if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
            if not np.isfinite(a.astype(np.float32) if a.dtype.kind != "f" else a).all():
                bad.append(key)
    if bad:
        raise WeightsError(f"{what}: {len(bad)} tensor(s) hold NaN or inf: {_fmt_items(bad, 5)}"
                           "; the file is corrupted or the weights diverged")


def check_params_finite(params, what: str) -> None:
    """`check_finite` for a restored param tree (jax arrays, possibly sharded over
    processes: each leaf is reduced on its devices, never gathered to the host)."""
    import jax
    import jax.numpy as jnp

    def finite(leaf) -> bool:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return True
        if getattr(leaf, "is_fully_addressable", True):       # on this host: numpy
            return bool(np.isfinite(np.asarray(leaf, np.float32)).all())
        return bool(jnp.isfinite(leaf).all())                   # reduced where it lives
    bad = [jax.tree_util.keystr(path) for path, leaf in
           jax.tree_util.tree_flatten_with_path(params)[0] if not finite(leaf)]
    if bad:
        raise WeightsError(f"{what}: {len(bad)} tensor(s) hold NaN or inf: {_fmt_items(bad, 5)}"
                           "; the checkpoint is corrupted or the weights diverged")


def save_state_dict(state: Mapping[str, np.ndarray], path: str | os.PathLike,
                    metadata: Mapping[str, str] | None = None) -> None:
    """Write a `.safetensors` file atomically (temp file + rename): never a half file."""
    from safetensors.numpy import save_file
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata=dict(metadata or {"format": "pt"}))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (temp file + rename), indented as diffusers writes it."""
    import json
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def save_component(folder: str | os.PathLike, state: Mapping[str, np.ndarray],
                   weights_name: str, config: dict, dtype: str = "float32") -> None:
    """One component folder of a diffusers-format model: the weights (`weights_name`, a
    safetensors file, stored as `dtype`) and config.json."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    save_state_dict({k: np.asarray(v, np.float32).astype(dtype) for k, v in state.items()},
                    os.path.join(folder, weights_name))
    write_json(os.path.join(folder, "config.json"), config)


def read_config_json(folder: str | os.PathLike, what: str) -> dict:
    """A component folder's config.json, with a named error when it is missing."""
    import json
    path = os.path.join(os.fspath(folder), "config.json")
    if not os.path.exists(path):
        raise WeightsError(f"{what} folder {os.fspath(folder)!r} has no config.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def find_weights_file(folder: str | os.PathLike, stem: str = "diffusion_pytorch_model") -> str:
    """The weights file of a diffusers/transformers component folder, safetensors first."""
    folder = os.fspath(folder)
    candidates = [f"{stem}.safetensors", "model.safetensors", f"{stem}.bin",
                  "pytorch_model.bin"]
    for name in candidates:
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    raise WeightsError(f"no weights file in {folder!r}: looked for {', '.join(candidates)}")
