"""diffusers UNet2DConditionModel folders <-> diffjax UNet params and config."""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from diffjax.models.abstract import abstract_params
from diffjax.models.unet import UNetConfig
from diffjax.weights.io import (WeightsError, find_weights_file, load_state_dict,
                                read_config_json, save_component)
from diffjax.weights.mapping import auto_rows, params_to_state_dict, state_dict_to_params

_FIELDS = [f.name for f in dataclasses.fields(UNetConfig)
           if f.name not in ("dtype", "attention_impl", "remat")]
_TUPLES = ("block_out_channels", "down_block_types", "up_block_types")

# Every parameter of diffusers' UNet2DConditionModel.__init__ is in exactly one of these
# (tests/test_model_options.py enumerates the installed diffusers' signature):
# - IMPLEMENTED: UNetConfig fields, computed as diffusers does (some values are refused by
#   UNetConfig itself, e.g. per-block layers_per_block);
# - ONLY: accepted at these values only, any other is refused by name;
# - NO_EFFECT: read by diffusers only for block or embedding types diffjax refuses, or only
#   in training (dropout): accepted whatever the value.
IMPLEMENTED = tuple(_FIELDS)
ONLY = {
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "dual_cross_attention": (False,),
    "reverse_transformer_layers_per_block": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "num_attention_heads": (None,),   # diffusers itself refuses it (its issue #2011)
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",),
    "time_cond_proj_dim": (None,),
    "attention_type": ("default",),
    "cross_attention_norm": (None,),
}
NO_EFFECT = {
    "dropout": "training only",
    "resnet_skip_time_act": "read only by the Simple/ResnetDownsample blocks",
    "resnet_out_scale_factor": "read only by the Simple/ResnetDownsample blocks",
    "addition_embed_type_num_heads": "read only for addition_embed_type='text'",
}


def unet_rows(config: UNetConfig):
    return auto_rows(nn.meta.unbox(abstract_params(config)))


def _tuple(v):
    return tuple(_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


def _refusals(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        if k.startswith("_") or k in IMPLEMENTED or k in NO_EFFECT:
            continue
        if k not in ONLY:
            out.append(f"unknown option {k}={v!r}")
        elif not (v in ONLY[k] or (isinstance(v, (list, tuple))
                                        and all(x in ONLY[k] for x in v))):
            allowed = " or ".join(repr(a) for a in ONLY[k])
            out.append(f"{k}={v!r} (only {allowed})")
    return out


def unet_config_from_diffusers(d: dict, **overrides) -> UNetConfig:
    """diffusers' unet/config.json -> UNetConfig. An option diffjax does not compute as
    diffusers does is refused by name (WeightsError), never silently ignored."""
    bad = _refusals(d)
    if bad:
        raise WeightsError(f"UNet config: not supported: {'; '.join(bad)}")
    kw = {k: _tuple(d[k]) for k in _FIELDS if k in d}
    kw.update(overrides)
    try:
        return UNetConfig(**kw)
    except ValueError as e:
        raise WeightsError(f"UNet config: {str(e).removeprefix('UNetConfig: ')}") from None


def unet_config_to_diffusers(config: UNetConfig) -> dict:
    d = {k: getattr(config, k) for k in _FIELDS}
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    d.update(_class_name="UNet2DConditionModel", only_cross_attention=False,
             dual_cross_attention=False, resnet_time_scale_shift="default",
             mid_block_type="UNetMidBlock2DCrossAttn")
    return d


def unet_params_from_state_dict(sd, config: UNetConfig, what="UNet checkpoint"):
    return state_dict_to_params(sd, unet_rows(config), nn.meta.unbox(abstract_params(config)), what)


def unet_params_to_state_dict(params, config: UNetConfig) -> dict:
    return params_to_state_dict(params, unet_rows(config))


def load_unet(folder: str, **overrides) -> tuple[UNetConfig, dict]:
    config = unet_config_from_diffusers(read_config_json(folder, "UNet"), **overrides)
    sd = load_state_dict(find_weights_file(folder))
    return config, unet_params_from_state_dict(sd, config, f"UNet in {folder}")


def export_unet(config: UNetConfig, params, folder: str, dtype: str = "float32") -> None:
    """config.json + diffusion_pytorch_model.safetensors that diffusers loads."""
    save_component(folder, unet_params_to_state_dict(params, config),
                   "diffusion_pytorch_model.safetensors", unet_config_to_diffusers(config), dtype)
