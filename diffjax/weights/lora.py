"""LoRA files (kohya/A1111, diffusers/PEFT, LoCon conv layers) fused into a model's params.

A LoRA stores, per adapted layer W [out, in(, kh, kw)], a low-rank pair `down` [r, in(, kh,
kw)] and `up` [out, r(, 1, 1)] (and optionally `alpha`); the adapted layer is
W + scale * (alpha / r) * up @ down. Several LoRAs with their own scales add up. diffjax
fuses the sum into the params once at load (no per-step cost), as diffusers' `fuse_lora`
does; on params already placed on devices the add is one jitted function per leaf that
keeps the leaf's own sharding (`fuse_placed`).

Key formats, told per key:
- kohya / A1111: `lora_unet_<module>` (module names with `_` for `.`, in diffusers' naming
  as kohya's SD1/SD2 scripts write them, or the LDM naming of its SDXL scripts),
  `lora_te_` (SD1/SD2 text encoder), `lora_te1_` / `lora_te2_` (SDXL), each with
  `.lora_down.weight`, `.lora_up.weight`, `.alpha`.
- diffusers / PEFT: `unet.<module>`, `text_encoder.<module>`, `text_encoder_2.<module>` with
  `.lora_A.weight` / `.lora_B.weight` (or the older `.lora.down.weight` / `.lora.up.weight`),
  optional `.alpha`; without alpha the scale is 1 (alpha = rank), as diffusers loads them.
Every key must land on a layer of the model: anything else (an unknown format, a layer the
model lacks, DoRA magnitudes, ...) is a named error listing the keys, never dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import numpy as np

from diffjax.weights.io import WeightsError


class LoraError(WeightsError):
    """A LoRA file that cannot be applied to this model (keys named)."""


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    path: str
    scale: float = 1.0


def parse_lora_arg(text: str) -> LoraSpec:
    """`FILE:SCALE` or `FILE` (scale 1): the `--lora` flag and the config's `loras` list."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            return LoraSpec(path, float(tail))
        except ValueError:
            pass
    return LoraSpec(text, 1.0)


# ------------------------------------------------------------------ the model's layers
# network name in Components -> (config field, params field)
NETWORKS = {"unet": ("unet_config", "unet_params"), "text": ("text_config", "text_params"),
            "text_2": ("text_config_2", "text_params_2")}


@functools.lru_cache(maxsize=8)
def _rows(network: str, config):
    """The network's (torch key, flax path, layout) rows (cached: tracing is slow)."""
    if network == "unet":
        from diffjax.weights.unet import unet_rows
        return unet_rows(config)
    from diffjax.weights.clip import text_rows
    return text_rows(config)


@functools.lru_cache(maxsize=8)
def _shapes(config):
    import flax.linen as nn

    from diffjax.models.abstract import abstract_params
    return nn.meta.unbox(abstract_params(config))


def layer_table(components) -> dict[str, tuple[str, str]]:
    """Every LoRA-adaptable layer of `components`, under each name a LoRA file may use:
    name -> (network, diffusers weight key). Linear and conv weights are adaptable."""
    from diffjax.weights import ldm_keys
    sdxl = getattr(components, "text_config_2", None) is not None
    table: dict[str, tuple[str, str]] = {}
    for network, (config_field, _) in NETWORKS.items():
        config = getattr(components, config_field, None)
        if config is None:
            continue
        for key, _, layout in _rows(network, config):
            if layout not in ("linear", "conv") or not key.endswith(".weight"):
                continue
            module = key[:-len(".weight")]
            target = (network, key)
            if network == "unet":
                table["unet." + module] = target
                table["lora_unet_" + module.replace(".", "_")] = target
                uc = config
                ldm = ldm_keys.unet_to_ldm(key, uc.layers_per_block,
                                           lambda b: "CrossAttn" in uc.up_block_types[b])
                if ldm:
                    table["lora_unet_" + ldm[:-len(".weight")].replace(".", "_")] = target
            else:
                peft = "text_encoder." if network == "text" else "text_encoder_2."
                kohya = ("lora_te1_" if network == "text" else "lora_te2_") if sdxl \
                    else "lora_te_"
                short = module[len("text_model."):] if module.startswith("text_model.") \
                    else module
                for name in (peft + module, peft + short,
                             kohya + module.replace(".", "_")):
                    table[name] = target
    return table


# --------------------------------------------------------------------------- reading
_SUFFIXES = [(".lora_down.weight", "down"), (".lora_up.weight", "up"),
             (".lora_A.weight", "down"), (".lora_B.weight", "up"),
             (".lora.down.weight", "down"), (".lora.up.weight", "up"), (".alpha", "alpha")]


def read_lora(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """A LoRA file's tensors (safetensors; pickles only with allow_pickle)."""
    if not os.path.exists(path):
        raise LoraError(f"LoRA file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from diffjax.weights.io import load_state_dict
        return load_state_dict(path)
    from diffjax.weights.pickle_reader import load_pickle_state_dict
    return load_pickle_state_dict(path, allow_pickle=allow_pickle)


def _group(sd: dict, path: str) -> tuple[dict[str, dict], list[str]]:
    """Keys -> {module name: {"down", "up"[, "alpha"]}}; keys of no known form listed."""
    groups: dict[str, dict] = {}
    unknown = []
    for key, value in sd.items():
        for suffix, part in _SUFFIXES:
            if key.endswith(suffix):
                module = key[:-len(suffix)]
                module = re.sub(r"^base_model\.model\.", "", module)
                groups.setdefault(module, {})[part] = np.asarray(value, np.float32)
                break
        else:
            unknown.append(key)
    incomplete = [m for m, g in groups.items() if not ("down" in g and "up" in g)]
    unknown += [f"{m} (no {'up' if 'down' in groups[m] else 'down'} weight)" for m in incomplete]
    for m in incomplete:
        del groups[m]
    return groups, unknown


def _delta(g: dict, torch_shape: tuple, name: str) -> np.ndarray:
    """(alpha / r) * up @ down in the target layer's torch layout."""
    down, up = g["down"], g["up"]
    r = down.shape[0]
    if up.shape[1] != r or (up.ndim == 4 and up.shape[2:] != (1, 1)):
        raise LoraError(f"LoRA {name}: up {up.shape} does not match down {down.shape} "
                        "(only plain LoRA/LoCon pairs are supported)")
    alpha = float(np.asarray(g["alpha"]).reshape(())) if "alpha" in g else float(r)
    delta = up.reshape(up.shape[0], r) @ down.reshape(r, -1) * (alpha / r)
    if int(np.prod(torch_shape)) != delta.size or torch_shape[0] != up.shape[0]:
        raise LoraError(f"LoRA {name}: update {tuple(up.shape[:1]) + tuple(down.shape[1:])} "
                        f"does not fit the layer's weight {torch_shape}")
    return delta.reshape(torch_shape)


def lora_deltas(components, sd: dict, scale: float = 1.0, what: str = "LoRA",
                table=None) -> dict[tuple[str, tuple[str, ...]], np.ndarray]:
    """A LoRA state dict -> {(network, flax param path): scale * delta in flax layout}.
    Every key must land on a layer (LoraError listing those that do not)."""
    from diffjax.weights.mapping import _SHAPE_TO_TORCH, _TO_FLAX, get_path
    table = table if table is not None else layer_table(components)
    groups, unknown = _group(sd, what)
    unmatched = [m for m in groups if m not in table]
    if unknown or unmatched:
        bad = sorted(unknown + unmatched)
        raise LoraError(f"{what}: {len(bad)} key(s) match no layer of this model: "
                        + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
    rows, shapes = {}, {}
    out: dict = {}
    for module, g in groups.items():
        network, key = table[module]
        if network not in rows:
            config = getattr(components, NETWORKS[network][0])
            rows[network] = {k: (p, lay) for k, p, lay in _rows(network, config)}
            shapes[network] = _shapes(config)
        path, layout = rows[network][key]
        torch_shape = _SHAPE_TO_TORCH[layout](tuple(get_path(shapes[network], path).shape))
        delta = _TO_FLAX[layout](_delta(g, torch_shape, f"{what} {module}")) * scale
        k = (network, path)
        out[k] = out[k] + delta if k in out else delta
    return out


def merge(*deltas: dict) -> dict:
    out: dict = {}
    for d in deltas:
        for k, v in d.items():
            out[k] = out[k] + v if k in out else v
    return out


# --------------------------------------------------------------------------- fusing
def fuse_host(components, deltas: dict) -> None:
    """Add the deltas to `components`' host (numpy) params, in place (float32)."""
    from diffjax.weights.mapping import _set_path, get_path
    for (network, path), delta in deltas.items():
        params = getattr(components, NETWORKS[network][1])
        w = np.asarray(get_path(params, path))
        _set_path(params, path, (w.astype(np.float32) + delta).astype(w.dtype))


def fuse_placed(params: dict, deltas: dict, network_keys: dict | None = None) -> dict:
    """Add the deltas to params already on devices: per touched leaf, one jitted add whose
    output keeps the leaf's sharding (the delta is placed with that sharding first), so a
    sharded model is never gathered. `params` is the pipeline's {"text", "unet", ...} tree;
    network_keys maps LoRA network names to its keys (default: unet->unet, text->text,
    text_2->text_2)."""
    import jax

    from diffjax.weights.mapping import _set_path, get_path
    network_keys = network_keys or {"unet": "unet", "text": "text", "text_2": "text_2"}
    out = jax.tree.map(lambda x: x, params)      # new containers, same leaves
    for (network, path), delta in deltas.items():
        tree = out[network_keys[network]]
        w = get_path(tree, path)
        d = jax.device_put(delta.astype(w.dtype), w.sharding)
        add = jax.jit(lambda a, b: a + b, out_shardings=w.sharding)
        _set_path(tree, path, add(w, d))
    return out


def load_loras(components, specs, allow_pickle: bool = False) -> tuple[dict, dict[str, str]]:
    """The summed deltas of several LoRAs (each with its scale) and their A1111 hashes
    ({name: short hash}) for the metadata."""
    from diffjax.a1111 import lora_hash
    table = layer_table(components)
    deltas, hashes = [], {}
    for spec in specs:
        spec = parse_lora_arg(spec) if isinstance(spec, str) else spec
        sd = read_lora(spec.path, allow_pickle)
        deltas.append(lora_deltas(components, sd, spec.scale, f"LoRA {spec.path}", table))
        hashes[os.path.splitext(os.path.basename(spec.path))[0]] = lora_hash(spec.path)
    return merge(*deltas), hashes


def apply_loras(components, specs, allow_pickle: bool = False) -> dict[str, str]:
    """Fuse LoRAs into `components`' host params (before placement); returns the hashes."""
    deltas, hashes = load_loras(components, specs, allow_pickle)
    fuse_host(components, deltas)
    return hashes
