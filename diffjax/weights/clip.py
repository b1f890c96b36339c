"""transformers CLIP checkpoints <-> diffjax CLIP params (text and vision towers).

Reads a `text_encoder/` folder of a diffusers-format Stable Diffusion checkpoint (its
config.json is a transformers CLIPTextConfig) and writes one back that transformers'
`CLIPTextModel.from_pretrained` loads. No torch needed for safetensors.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from diffjax.models.abstract import abstract_params
from diffjax.models.clip import CLIPTextConfig, CLIPVisionConfig
from diffjax.weights.io import (WeightsError, find_weights_file, load_state_dict,
                                read_config_json, save_component)
from diffjax.weights.mapping import params_to_state_dict, state_dict_to_params

IGNORED = ("position_ids",)  # a buffer older checkpoints saved; not a parameter


def _encoder_rows(prefix: str, n_layers: int):
    rows = []
    for i in range(n_layers):
        p, f = f"{prefix}encoder.layers.{i}.", ("encoder", f"layers_{i}")
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            rows += [(f"{p}self_attn.{name}.weight", f + ("self_attn", name, "kernel"), "linear"),
                     (f"{p}self_attn.{name}.bias", f + ("self_attn", name, "bias"), "same")]
        for name in ("layer_norm1", "layer_norm2"):
            rows += [(f"{p}{name}.weight", f + (name, "scale"), "same"),
                     (f"{p}{name}.bias", f + (name, "bias"), "same")]
        for name in ("fc1", "fc2"):
            rows += [(f"{p}mlp.{name}.weight", f + (name, "kernel"), "linear"),
                     (f"{p}mlp.{name}.bias", f + (name, "bias"), "same")]
    return rows


def _ln_rows(key: str, name: str):
    return [(f"{key}.weight", (name, "scale"), "same"), (f"{key}.bias", (name, "bias"), "same")]


def text_rows(config: CLIPTextConfig, prefix: str = "text_model."):
    rows = [(f"{prefix}embeddings.token_embedding.weight", ("token_embedding", "embedding"),
             "same"),
            (f"{prefix}embeddings.position_embedding.weight", ("position_embedding",), "same")]
    rows += _encoder_rows(prefix, config.num_hidden_layers)
    rows += _ln_rows(f"{prefix}final_layer_norm", "final_layer_norm")
    if config.projection_dim is not None:
        rows.append(("text_projection.weight", ("text_projection", "kernel"), "linear"))
    return rows


def vision_rows(config: CLIPVisionConfig, prefix: str = "vision_model."):
    rows = [(f"{prefix}embeddings.class_embedding", ("class_embedding",), "same"),
            (f"{prefix}embeddings.patch_embedding.weight", ("patch_embedding", "kernel"), "conv"),
            (f"{prefix}embeddings.position_embedding.weight", ("position_embedding",), "same")]
    rows += _ln_rows(f"{prefix}pre_layrnorm", "pre_layrnorm")
    rows += _encoder_rows(prefix, config.num_hidden_layers)
    rows += _ln_rows(f"{prefix}post_layernorm", "post_layernorm")
    if config.projection_dim is not None:
        rows.append(("visual_projection.weight", ("visual_projection", "kernel"), "linear"))
    return rows


def _with_text_prefix(sd):
    """transformers v5's CLIPTextModel saves its keys without the `text_model.` prefix that
    v4 (and every SD 1.x/2.x checkpoint) uses; accept both, as the prefixed form."""
    if any(k.startswith("text_model.") for k in sd):
        return sd
    return {(k if k == "text_projection.weight" else "text_model." + k): v
            for k, v in sd.items()}


def text_params_from_state_dict(sd, config: CLIPTextConfig, what="CLIP text checkpoint"):
    return state_dict_to_params(_with_text_prefix(sd), text_rows(config),
                                nn.meta.unbox(abstract_params(config)), what, IGNORED)


def vision_params_from_state_dict(sd, config: CLIPVisionConfig,
                                  what="CLIP vision checkpoint"):
    return state_dict_to_params(sd, vision_rows(config), nn.meta.unbox(abstract_params(config)), what,
                                IGNORED)


def text_params_to_state_dict(params, config: CLIPTextConfig):
    return params_to_state_dict(params, text_rows(config))


# ---------------------------------------------------------------- configs
_TEXT_KEYS = [f.name for f in dataclasses.fields(CLIPTextConfig)
              if f.name not in ("dtype", "attention_impl", "projection_dim")]

# Every parameter of transformers' CLIPTextConfig.__init__ (and of its PreTrainedConfig
# base) is in one of these (tests/test_model_options.py enumerates the installed
# transformers' signature): IMPLEMENTED (CLIPTextConfig fields; an unknown hidden_act or a
# list eos_token_id is refused by name) or NO_EFFECT (initialisation, training or
# bookkeeping only). Other keys are ignored, as transformers keeps them as inert attributes
# (SD 1.x text encoder configs carry dozens of generation keys).
IMPLEMENTED = tuple(_TEXT_KEYS) + ("projection_dim",)
NO_EFFECT = (
    "attention_dropout", "dropout", "initializer_range", "initializer_factor",
    "bos_token_id",  # tokenizer bookkeeping: the tower pools at eos_token_id
    "transformers_version", "architectures", "output_hidden_states", "output_attentions",
    "return_dict", "dtype", "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder",
    "id2label", "label2id", "problem_type", "model_type", "name_or_path", "_name_or_path",
)
# transformers' CLIPTextConfig default, used when a config.json omits it (pooling then
# takes the first 49407, not argmax(ids): they differ once tokens are added after it).
DEFAULT_EOS_TOKEN_ID = 49407


def clip_text_config_from_hf(d: dict, with_projection: bool | None = None) -> CLIPTextConfig:
    """A transformers CLIPTextConfig dict (config.json) -> CLIPTextConfig."""
    d = d.get("text_config", d)
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")
               if k not in d]
    if missing:
        raise WeightsError(f"CLIP text config lacks {missing}")
    archs = d.get("architectures") or []
    if with_projection is None:
        with_projection = any("WithProjection" in a for a in archs)
    kw = {k: d[k] for k in _TEXT_KEYS if k in d}
    kw.setdefault("eos_token_id", DEFAULT_EOS_TOKEN_ID)
    if not isinstance(kw["eos_token_id"], int):
        raise WeightsError(f"CLIP text config: eos_token_id={kw['eos_token_id']!r} is not "
                           f"supported (one token id)")
    if kw.get("layer_norm_eps", 1e-5) is None:
        raise WeightsError("CLIP text config: layer_norm_eps=None is not supported")
    try:
        return CLIPTextConfig(**kw, projection_dim=d.get("projection_dim", 512)
                              if with_projection else None)
    except ValueError as e:
        raise WeightsError(f"CLIP text config: {str(e).removeprefix('CLIPTextConfig: ')}") \
            from None


def clip_text_config_to_hf(config: CLIPTextConfig) -> dict:
    d = {k: getattr(config, k) for k in _TEXT_KEYS}
    d.update(model_type="clip_text_model", bos_token_id=0,
             architectures=["CLIPTextModelWithProjection" if config.projection_dim
                            else "CLIPTextModel"],
             projection_dim=config.projection_dim or 768, torch_dtype="float32",
             attention_dropout=0.0, dropout=0.0, initializer_factor=1.0,
             initializer_range=0.02)
    return d


# ---------------------------------------------------------------- folders
def load_text_encoder(folder: str) -> tuple[CLIPTextConfig, dict]:
    """A `text_encoder/` folder (config.json + model.safetensors | pytorch_model.bin)."""
    config = clip_text_config_from_hf(read_config_json(folder, "text encoder"))
    sd = load_state_dict(find_weights_file(folder, stem="model"))
    if config.projection_dim is None and "text_projection.weight" in sd:
        config = dataclasses.replace(config, projection_dim=sd["text_projection.weight"].shape[0])
    return config, text_params_from_state_dict(sd, config, f"text encoder in {folder}")


def export_text_encoder(config: CLIPTextConfig, params, folder: str,
                        dtype: str = "float32") -> None:
    """Write config.json + model.safetensors that transformers loads (`dtype`: storage)."""
    save_component(folder, text_params_to_state_dict(params, config), "model.safetensors",
                   clip_text_config_to_hf(config), dtype)


# ---------------------------------------------------------------- vision tower folders
_VISION_KEYS = [f.name for f in dataclasses.fields(CLIPVisionConfig)
                if f.name not in ("dtype", "attention_impl")]


def clip_vision_config_from_hf(d: dict) -> CLIPVisionConfig:
    """A transformers CLIPVisionConfig dict (or a CLIPConfig's vision_config) -> ours."""
    d = d.get("vision_config", d)
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                           "image_size", "patch_size") if k not in d]
    if missing:
        raise WeightsError(f"CLIP vision config lacks {missing}")
    return CLIPVisionConfig(**{k: d[k] for k in _VISION_KEYS if k in d})


def load_vision_encoder(folder: str) -> tuple[CLIPVisionConfig, dict]:
    """An `image_encoder/` folder (CLIPVisionModelWithProjection: config.json + weights)."""
    config = clip_vision_config_from_hf(read_config_json(folder, "image encoder"))
    sd = load_state_dict(find_weights_file(folder, stem="model"))
    if "visual_projection.weight" not in sd:
        config = dataclasses.replace(config, projection_dim=None)
    return config, vision_params_from_state_dict(sd, config, f"image encoder in {folder}")


def export_vision_encoder(config: CLIPVisionConfig, params, folder: str,
                          dtype: str = "float32") -> None:
    """config.json + model.safetensors that transformers' CLIPVisionModelWithProjection
    loads (CLIPVisionModel when projection_dim is None)."""
    d = {k: getattr(config, k) for k in _VISION_KEYS}
    d.update(model_type="clip_vision_model", projection_dim=config.projection_dim or 768,
             architectures=["CLIPVisionModelWithProjection" if config.projection_dim
                            else "CLIPVisionModel"], torch_dtype="float32",
             attention_dropout=0.0, dropout=0.0, initializer_factor=1.0,
             initializer_range=0.02)
    save_component(folder, params_to_state_dict(params, vision_rows(config)),
                   "model.safetensors", d, dtype)
