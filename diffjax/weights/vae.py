"""diffusers AutoencoderKL folders <-> diffjax VAE params and config."""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from diffjax.models.abstract import abstract_params
from diffjax.models.vae import VAEConfig
from diffjax.weights.io import (WeightsError, find_weights_file, load_state_dict,
                                read_config_json, save_component)
from diffjax.weights.mapping import auto_rows, params_to_state_dict, state_dict_to_params

_FIELDS = [f.name for f in dataclasses.fields(VAEConfig) if f.name not in ("dtype",
                                                                          "attention_impl")]
# Attention names of checkpoints saved before diffusers 0.14.
_LEGACY = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.",
           ".proj_attn.": ".to_out.0."}


def vae_rows(config: VAEConfig):
    return auto_rows(nn.meta.unbox(abstract_params(config)))


def _modernise(sd):
    out = {}
    for k, v in sd.items():
        for old, new in _LEGACY.items():
            k = k.replace(old, new)
        if v.ndim == 4 and ".attentions." in k and v.shape[2:] == (1, 1):
            v = v[:, :, 0, 0]  # legacy 1x1-conv attention projections
        out[k] = v
    return out


# Every parameter of diffusers' AutoencoderKL.__init__ is a VAEConfig field (computed as
# diffusers does) or in ONLY (accepted at these values only, any other refused by name);
# tests/test_model_options.py enumerates the installed diffusers' signature.
IMPLEMENTED = tuple(_FIELDS)
ONLY = {
    "down_block_types": ("DownEncoderBlock2D",),   # per entry
    "up_block_types": ("UpDecoderBlock2D",),
    "shift_factor": (None,),   # SD3/Flux latents: (z - shift) * scale; SD/SDXL have none
}


def vae_config_from_diffusers(d: dict, **overrides) -> VAEConfig:
    """diffusers' vae/config.json -> VAEConfig (latents_mean / latents_std / force_upcast
    included). An option diffjax does not compute as diffusers does is refused by name."""
    bad = []
    for k, v in d.items():
        if k.startswith("_") or (k in IMPLEMENTED and k not in ONLY):
            continue
        if k not in ONLY:
            bad.append(f"unknown option {k}={v!r}")
        elif not (v in ONLY[k] or (isinstance(v, (list, tuple))
                                        and all(x in ONLY[k] for x in v))):
            bad.append(f"{k}={v!r} (only {' or '.join(repr(a) for a in ONLY[k])})")
    if bad:
        raise WeightsError(f"VAE config: not supported: {'; '.join(bad)}")
    kw = {k: (tuple(d[k]) if isinstance(d[k], list) else d[k]) for k in _FIELDS
          if k in d and k not in ONLY}
    kw.update(overrides)
    try:
        return VAEConfig(**kw)
    except ValueError as e:
        raise WeightsError(f"VAE config: {str(e).removeprefix('VAEConfig: ')}") from None


def vae_config_to_diffusers(config: VAEConfig) -> dict:
    d = {k: (list(v) if isinstance(v, tuple) else v)
         for k, v in ((k, getattr(config, k)) for k in _FIELDS)}
    n = len(config.block_out_channels)
    d.update(_class_name="AutoencoderKL", down_block_types=["DownEncoderBlock2D"] * n,
             up_block_types=["UpDecoderBlock2D"] * n)
    return d


def vae_params_from_state_dict(sd, config: VAEConfig, what="VAE checkpoint"):
    return state_dict_to_params(_modernise(sd), vae_rows(config), nn.meta.unbox(abstract_params(config)),
                                what)


def load_vae(folder: str, **overrides) -> tuple[VAEConfig, dict]:
    config = vae_config_from_diffusers(read_config_json(folder, "VAE"), **overrides)
    sd = load_state_dict(find_weights_file(folder))
    return config, vae_params_from_state_dict(sd, config, f"VAE in {folder}")


def export_vae(config: VAEConfig, params, folder: str, dtype: str = "float32") -> None:
    """config.json + diffusion_pytorch_model.safetensors that diffusers loads."""
    save_component(folder, params_to_state_dict(params, vae_rows(config)),
                   "diffusion_pytorch_model.safetensors", vae_config_to_diffusers(config), dtype)
