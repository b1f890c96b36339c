"""transformers DINOv2 checkpoints (`facebook/dinov2-*` folders) -> `Dinov2Model` params.

Reads a folder with config.json (a transformers Dinov2Config) and model.safetensors (or
pytorch_model.bin). Both key layouts are accepted: transformers 5's (`attention.q_proj`,
`attention.o_proj`, SwiGLU `mlp.gate_proj`/`up_proj`/`down_proj`) and the hub files'
older one (`attention.attention.query`, `attention.output.dense`, SwiGLU `mlp.weights_in`
holding gate and up stacked, `mlp.weights_out`), which transformers 5 itself renames on load.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

from diffjax.models.dinov2 import Dinov2Config
from diffjax.weights.io import WeightsError, find_weights_file, load_state_dict, read_config_json
from diffjax.weights.mapping import state_dict_to_params

_RENAMES = [(r"\.attention\.attention\.query\.", ".attention.q_proj."),
            (r"\.attention\.attention\.key\.", ".attention.k_proj."),
            (r"\.attention\.attention\.value\.", ".attention.v_proj."),
            (r"\.attention\.output\.dense\.", ".attention.o_proj."),
            (r"\.mlp\.weights_out\.", ".mlp.down_proj.")]
IGNORED = ("embeddings.mask_token",)   # pre-training only


def config_from_hf(d: dict) -> Dinov2Config:
    """A transformers Dinov2Config dict -> ours (unknown training-only keys ignored)."""
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")
               if k not in d]
    if missing:
        raise WeightsError(f"DINOv2 config lacks {missing}")
    if d.get("num_register_tokens"):
        raise WeightsError("DINOv2 with registers is not supported (num_register_tokens > 0)")
    names = {f.name for f in dataclasses.fields(Dinov2Config)} - {"dtype", "attention_impl"}
    return Dinov2Config(**{k: d[k] for k in names if k in d})


@functools.lru_cache(maxsize=8)
def abstract_dinov2_params(config: Dinov2Config):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from diffjax.models.dinov2 import Dinov2Model
    s = config.image_size // config.patch_size * config.patch_size
    return nn.meta.unbox(jax.eval_shape(lambda: Dinov2Model(config).init(
        jax.random.key(0), jnp.zeros((1, s, s, config.num_channels))))["params"])


def dinov2_rows(config: Dinov2Config):
    rows = [("embeddings.cls_token", ("cls_token",), "same"),
            ("embeddings.position_embeddings", ("position_embeddings",), "same"),
            ("embeddings.patch_embeddings.projection.weight", ("patch_embedding", "kernel"),
             "conv"),
            ("embeddings.patch_embeddings.projection.bias", ("patch_embedding", "bias"), "same"),
            ("layernorm.weight", ("layernorm", "scale"), "same"),
            ("layernorm.bias", ("layernorm", "bias"), "same")]
    mlp = ("gate_proj", "up_proj", "down_proj") if config.use_swiglu_ffn else ("fc1", "fc2")
    for i in range(config.num_hidden_layers):
        t, f = f"encoder.layer.{i}.", f"layer_{i}"
        for norm in ("norm1", "norm2"):
            rows += [(f"{t}{norm}.weight", (f, norm, "scale"), "same"),
                     (f"{t}{norm}.bias", (f, norm, "bias"), "same")]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            rows.append((f"{t}attention.{proj}.weight", (f, proj, "kernel"), "linear"))
            if proj == "o_proj" or config.qkv_bias:
                rows.append((f"{t}attention.{proj}.bias", (f, proj, "bias"), "same"))
        for name in mlp:
            rows += [(f"{t}mlp.{name}.weight", (f, name, "kernel"), "linear"),
                     (f"{t}mlp.{name}.bias", (f, name, "bias"), "same")]
        rows += [(f"{t}layer_scale1.lambda1", (f, "layer_scale1"), "same"),
                 (f"{t}layer_scale2.lambda1", (f, "layer_scale2"), "same")]
    return rows


def _canonical(sd: dict) -> dict:
    """Either key layout -> transformers 5's, the leading [1, 1, D] / [1, N, D] dropped."""
    out = {}
    for key, v in sd.items():
        key = key[len("dinov2."):] if key.startswith("dinov2.") else key
        if key.startswith(IGNORED) or key.startswith("classifier."):
            continue
        for pattern, new in _RENAMES:
            key = re.sub(pattern, new, key)
        m = re.match(r"^(.*)\.mlp\.weights_in\.(weight|bias)$", key)
        if m:
            gate, up = np.split(np.asarray(v), 2, axis=0)
            out[f"{m[1]}.mlp.gate_proj.{m[2]}"], out[f"{m[1]}.mlp.up_proj.{m[2]}"] = gate, up
            continue
        if key in ("embeddings.cls_token", "embeddings.position_embeddings"):
            v = np.asarray(v).reshape(-1, np.shape(v)[-1])
            v = v[0] if key == "embeddings.cls_token" else v
        out[key] = v
    return out


def params_from_state_dict(sd: dict, config: Dinov2Config, what="DINOv2 checkpoint") -> dict:
    return state_dict_to_params(_canonical(sd), dinov2_rows(config),
                                abstract_dinov2_params(config), what)


def load_dinov2(folder: str) -> tuple[Dinov2Config, dict]:
    """A transformers Dinov2Model folder (config.json + weights) -> (config, params)."""
    config = config_from_hf(read_config_json(folder, "DINOv2 model"))
    sd = load_state_dict(find_weights_file(folder, stem="model"))
    return config, params_from_state_dict(sd, config, f"DINOv2 weights in {folder}")
