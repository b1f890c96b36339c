"""open_clip checkpoints (e.g. ViT-H-14, MLPerf's CLIP-score model) -> diffjax CLIP towers.

An open_clip `CLIP` is the same network as transformers' CLIPModel with other names: fused
`attn.in_proj_weight` (q, k, v stacked), `mlp.c_fc`/`c_proj`, `ln_1`/`ln_2`, and the
projections stored as matrices applied on the right (`x @ proj`). The keys are renamed to
transformers' (the q/k/v split, projections transposed) and read by `diffjax.weights.clip`,
so there is one CLIP implementation. Head counts are not in the tensors: they come from
open_clip's model config (the JSON open_clip ships per model, e.g. ViT-H-14.json:
vision `head_width` 80, text `heads` 16). Text pooling is open_clip's default (argmax of
the ids: the end-of-text token); towers with other pooling or timm/HF backbones are refused.
"""

from __future__ import annotations

import re

import numpy as np

from diffjax.models.clip import CLIPTextConfig, CLIPVisionConfig
from diffjax.weights.io import WeightsError

_UNSUPPORTED_VISION = ("timm_model_name", "attentional_pool", "no_ln_pre", "input_patchnorm",
                       "final_ln_after_pool", "output_tokens")
_UNSUPPORTED_TEXT = ("hf_model_name", "no_causal_mask", "proj_bias", "embed_cls",
                     "output_tokens")


def configs_from_open_clip(model_cfg: dict) -> tuple[CLIPTextConfig, CLIPVisionConfig]:
    """open_clip's model config ({"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"?})."""
    v, t = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    bad = [k for k in _UNSUPPORTED_VISION if v.get(k)] + [k for k in _UNSUPPORTED_TEXT
                                                          if t.get(k)]
    if t.get("pool_type", "argmax") != "argmax" or v.get("pool_type", "tok") != "tok":
        bad.append("pool_type")
    if bad or "embed_dim" not in model_cfg:
        raise WeightsError(f"open_clip config: unsupported {bad or ['no embed_dim']} (a plain "
                           "ViT CLIP with argmax text pooling is supported)")
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    vw, tw = v["width"], t["width"]
    vision = CLIPVisionConfig(hidden_size=vw, intermediate_size=int(vw * v.get("mlp_ratio", 4.0)),
                              num_hidden_layers=v["layers"],
                              num_attention_heads=vw // v.get("head_width", 64),
                              image_size=v["image_size"], patch_size=v["patch_size"],
                              hidden_act=act, layer_norm_eps=1e-5,
                              projection_dim=model_cfg["embed_dim"])
    text = CLIPTextConfig(vocab_size=t.get("vocab_size", 49408), hidden_size=tw,
                          intermediate_size=int(tw * t.get("mlp_ratio", 4.0)),
                          num_hidden_layers=t["layers"], num_attention_heads=t.get("heads", 8),
                          max_position_embeddings=t.get("context_length", 77), hidden_act=act,
                          layer_norm_eps=1e-5, projection_dim=model_cfg["embed_dim"],
                          eos_token_id=2, pad_token_id=0)   # eos_token_id 2: argmax pooling
    return text, vision


_BLOCK = [(r"ln_1\.", "layer_norm1."), (r"ln_2\.", "layer_norm2."),
          (r"attn\.out_proj\.", "self_attn.out_proj."), (r"mlp\.c_fc\.", "mlp.fc1."),
          (r"mlp\.c_proj\.", "mlp.fc2.")]
_TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias"}
_IGNORED = ("logit_scale", "attn_mask", "logit_bias")


def to_transformers_state_dict(sd: dict) -> dict:
    """open_clip keys -> transformers CLIPModel keys (q/k/v split, projections transposed)."""
    out = {}
    for key, v in sd.items():
        v = np.asarray(v)
        if key in _IGNORED:
            continue
        if key in _TOP:
            out[_TOP[key]] = v
        elif key == "text_projection":
            out["text_projection.weight"] = v.T
        elif key == "visual.proj":
            out["visual_projection.weight"] = v.T
        else:
            m = re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.*)$", key)
            if not m:
                raise WeightsError(f"open_clip checkpoint: unexpected key {key!r}")
            tower = "vision_model" if m[1] else "text_model"
            p, rest = f"{tower}.encoder.layers.{m[2]}.", m[3]
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]            # weight | bias
                for name, part in zip(("q", "k", "v"), np.split(v, 3, axis=0)):
                    out[f"{p}self_attn.{name}_proj.{kind}"] = part
                continue
            for pattern, new in _BLOCK:
                rest = re.sub("^" + pattern, new, rest)
            out[p + rest] = v
    return out


def load_open_clip(checkpoint: str, model_cfg: dict, allow_pickle: bool = False):
    """(text config, text params, vision config, vision params) from an open_clip checkpoint
    (`open_clip_model.safetensors`, or the `.bin` pickle with `allow_pickle`) and its model
    config (`diffjax.metrics.clip_features.CLIPFeatures.from_open_clip` wraps them)."""
    from diffjax.weights.clip import text_params_from_state_dict, vision_params_from_state_dict
    from diffjax.weights.inception import read_tensors
    text, vision = configs_from_open_clip(model_cfg)
    sd = to_transformers_state_dict(read_tensors(checkpoint, allow_pickle))
    pick = lambda tower, proj: {k: v for k, v in sd.items()  # noqa: E731
                                if k.startswith(tower) or k == proj}
    tp = text_params_from_state_dict(pick("text_model.", "text_projection.weight"), text,
                                     f"open_clip text tower in {checkpoint}")
    vp = vision_params_from_state_dict(pick("vision_model.", "visual_projection.weight"),
                                       vision, f"open_clip vision tower in {checkpoint}")
    return text, tp, vision, vp
