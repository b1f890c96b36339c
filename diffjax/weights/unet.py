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


def unet_rows(config: UNetConfig):
    return auto_rows(nn.meta.unbox(abstract_params(config)))


def unet_config_from_diffusers(d: dict, **overrides) -> UNetConfig:
    """diffusers' unet/config.json -> UNetConfig; unsupported options are errors."""
    unsupported = {k: d[k] for k in ("class_embed_type", "addition_embed_type",
                                     "time_embedding_type", "encoder_hid_dim")
                   if d.get(k) not in (None, "positional")}
    if d.get("num_attention_heads") is not None:
        d = dict(d, attention_head_dim=d["num_attention_heads"])
    if unsupported:
        raise WeightsError(f"UNet config uses options diffjax does not support: {unsupported}")
    kw = {k: (tuple(d[k]) if k in _TUPLES or isinstance(d[k], list) else d[k])
          for k in _FIELDS if k in d}
    if isinstance(kw.get("transformer_layers_per_block"), tuple):
        if len(set(kw["transformer_layers_per_block"])) != 1:
            raise WeightsError("per-block transformer_layers_per_block is not supported")
        kw["transformer_layers_per_block"] = kw["transformer_layers_per_block"][0]
    kw.update(overrides)
    return UNetConfig(**kw)


def unet_config_to_diffusers(config: UNetConfig) -> dict:
    d = {k: getattr(config, k) for k in _FIELDS}
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    d.update(_class_name="UNet2DConditionModel", act_fn="silu", center_input_sample=False,
             downsample_padding=1, mid_block_scale_factor=1, only_cross_attention=False,
             dual_cross_attention=False, resnet_time_scale_shift="default")
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
