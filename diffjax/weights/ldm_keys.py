"""Key maps between the original LDM/SGM layout (single-file checkpoints) and diffusers'.

Single `.safetensors` files as A1111, ComfyUI and model-sharing sites use them hold the
networks under the names of the original training code (CompVis `ldm`, Stability `sgm`):
`model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight` is diffusers'
`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight`. Each map here is a pair
of per-key functions (diffusers -> LDM for export, LDM -> diffusers for import) written from
the same block arithmetic, so the two directions cannot drift apart; a key that matches no
rule is returned as None and reported by the caller (never dropped). The only value changes
are the ones diffusers' own converter makes: the VAE attention projections (1x1 convs in
LDM, linears in diffusers) and OpenCLIP's fused `in_proj` (q, k, v stacked) and transposed
`text_projection`.
"""

from __future__ import annotations

import re

import numpy as np

# ---------------------------------------------------------------------------------- UNet
_UNET_FIXED = {  # diffusers -> LDM, below `model.diffusion_model.`
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
           "conv_shortcut": "skip_connection"}
_RESNET_INV = {v: k for k, v in _RESNET.items()}


def _rename_head(rest: str, table: dict) -> str | None:
    """`rest`'s leading module name(s) through `table` ("conv1.weight" -> "in_layers.2.weight")."""
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return None


def unet_to_ldm(key: str, layers_per_block: int, up_has_attention) -> str | None:
    """A diffusers UNet key -> its LDM name (below `model.diffusion_model.`), or None.

    layers_per_block: diffusers' (LDM's num_res_blocks); up_has_attention(b): whether up
    block b has attentions (its upsampler then sits at index 2 of the output block).
    """
    per = layers_per_block + 1
    module, _, leaf = key.rpartition(".")
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{leaf}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            rest = _rename_head(rest, _RESNET)
            return None if rest is None else f"input_blocks.{1 + b * per + j}.0.{rest}"
        if kind == "attentions":
            return f"input_blocks.{1 + b * per + j}.1.{rest}"
        if j == 0 and rest.startswith("conv."):
            return f"input_blocks.{(b + 1) * per}.0.op.{rest[5:]}"
        return None
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        j, rest = int(m[2]), m[3]
        if m[1] == "resnets":
            rest = _rename_head(rest, _RESNET)
            return None if rest is None else f"middle_block.{2 * j}.{rest}"
        return f"middle_block.1.{rest}" if j == 0 else None
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            rest = _rename_head(rest, _RESNET)
            return None if rest is None else f"output_blocks.{b * per + j}.0.{rest}"
        if kind == "attentions":
            return f"output_blocks.{b * per + j}.1.{rest}"
        if j == 0 and rest.startswith("conv."):
            return f"output_blocks.{b * per + per - 1}.{2 if up_has_attention(b) else 1}.{rest}"
    return None


def unet_from_ldm(key: str, layers_per_block: int) -> str | None:
    """An LDM UNet key (below `model.diffusion_model.`) -> diffusers' name, or None."""
    per = layers_per_block + 1
    module, _, leaf = key.rpartition(".")
    for new, old in _UNET_FIXED.items():
        if module == old:
            return f"{new}.{leaf}"
    m = re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3]
        if i == 0:
            return None
        b, layer = (i - 1) // per, (i - 1) % per
        if j == 0 and rest.startswith("op."):
            return f"down_blocks.{b}.downsamplers.0.conv.{rest[3:]}" if layer == per - 1 else None
        if layer == per - 1:
            return None
        if j == 0:
            rest = _rename_head(rest, _RESNET_INV)
            return None if rest is None else f"down_blocks.{b}.resnets.{layer}.{rest}"
        return f"down_blocks.{b}.attentions.{layer}.{rest}" if j == 1 else None
    m = re.fullmatch(r"middle_block\.(\d+)\.(.+)", key)
    if m:
        i, rest = int(m[1]), m[2]
        if i in (0, 2):
            rest = _rename_head(rest, _RESNET_INV)
            return None if rest is None else f"mid_block.resnets.{i // 2}.{rest}"
        return f"mid_block.attentions.0.{rest}" if i == 1 else None
    m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3]
        b, layer = i // per, i % per
        if j == 0:
            rest = _rename_head(rest, _RESNET_INV)
            return None if rest is None else f"up_blocks.{b}.resnets.{layer}.{rest}"
        if rest.startswith("conv."):     # attention sub-modules are never named conv
            return f"up_blocks.{b}.upsamplers.0.{rest}" if layer == per - 1 else None
        return f"up_blocks.{b}.attentions.{layer}.{rest}" if j == 1 else None
    return None


# ----------------------------------------------------------------------------------- VAE
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
             "to_out.0": "proj_out"}
_VAE_ATTN_INV = {v: k for k, v in _VAE_ATTN.items()}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_RESNET_INV = {"nin_shortcut": "conv_shortcut"}


def _same_or(rest: str, table: dict) -> str:
    return _rename_head(rest, table) or rest


def vae_to_ldm(key: str, n_levels: int) -> str | None:
    """A diffusers AutoencoderKL key -> its LDM name (below `first_stage_model.`), or None.
    n_levels: the number of resolution levels (LDM numbers decoder levels bottom-up)."""
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        return key if re.fullmatch(r"(post_)?quant_conv\.(weight|bias)", key) else None
    side, rest = m[1], m[2]
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out.{rest[len('conv_norm_out.'):]}"
    if re.fullmatch(r"conv_(in|out)\.(weight|bias)", rest):
        return key
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)",
                     rest)
    if m:
        level = int(m[2]) if m[1] == "down" else n_levels - 1 - int(m[2])
        if m[3] == "resnets":
            return f"{side}.{m[1]}.{level}.block.{m[4]}.{_same_or(m[5], _VAE_RESNET)}"
        if m[4] == "0" and m[5].startswith("conv."):
            return f"{side}.{m[1]}.{level}.{m[1]}sample.{m[5]}"
        return None
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest)
    if m:
        return f"{side}.mid.block_{int(m[1]) + 1}.{_same_or(m[2], _VAE_RESNET)}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest)
    if m:
        renamed = _rename_head(m[1], _VAE_ATTN)
        return None if renamed is None else f"{side}.mid.attn_1.{renamed}"
    return None


def vae_from_ldm(key: str, n_levels: int) -> str | None:
    """An LDM VAE key (below `first_stage_model.`) -> diffusers' name, or None."""
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        return key if re.fullmatch(r"(post_)?quant_conv\.(weight|bias)", key) else None
    side, rest = m[1], m[2]
    if rest.startswith("norm_out."):
        return f"{side}.conv_norm_out.{rest[len('norm_out.'):]}"
    if re.fullmatch(r"conv_(in|out)\.(weight|bias)", rest):
        return key
    m = re.fullmatch(r"(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.+)", rest)
    if m and (side, m[1]) in (("encoder", "down"), ("decoder", "up")):
        index = int(m[2]) if m[1] == "down" else n_levels - 1 - int(m[2])
        if m[4] is not None:
            return (f"{side}.{m[1]}_blocks.{index}.resnets.{m[4]}."
                    f"{_same_or(m[5], _VAE_RESNET_INV)}")
        if m[3] == f"{m[1]}sample" and m[5].startswith("conv."):
            return f"{side}.{m[1]}_blocks.{index}.{m[1]}samplers.0.{m[5]}"
        return None
    m = re.fullmatch(r"mid\.block_([12])\.(.+)", rest)
    if m:
        return f"{side}.mid_block.resnets.{int(m[1]) - 1}.{_same_or(m[2], _VAE_RESNET_INV)}"
    m = re.fullmatch(r"mid\.attn_1\.(.+)", rest)
    if m:
        renamed = _rename_head(m[1], _VAE_ATTN_INV)
        return None if renamed is None else f"{side}.mid_block.attentions.0.{renamed}"
    return None


def vae_value_from_ldm(key: str, value: np.ndarray) -> np.ndarray:
    """LDM's VAE attention projections are 1x1 convs ([C, C, 1, 1]); diffusers' are
    linears ([C, C]): the same numbers without the trailing unit axes (diffusers'
    `conv_attn_to_linear`)."""
    if ".mid.attn_1." in key and value.ndim > 2 and not key.endswith("norm.weight"):
        return value.reshape(value.shape[:2])
    return value


def vae_value_to_ldm(key: str, value: np.ndarray) -> np.ndarray:
    """The inverse of `vae_value_from_ldm`: linear [C, C] -> 1x1 conv [C, C, 1, 1]."""
    if ".mid.attn_1." in key and value.ndim == 2:
        return value.reshape(*value.shape, 1, 1)
    return value


# ------------------------------------------------------------------- OpenCLIP text tower
_OPEN_CLIP_FIXED = {  # diffusers (transformers CLIPTextModel) -> OpenCLIP, below `*.model.`
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
                    "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}
_OPEN_CLIP_LAYER_INV = {v: k for k, v in _OPEN_CLIP_LAYER.items()}


def open_clip_from_ldm(sd: dict) -> tuple[dict, list[str]]:
    """An OpenCLIP text tower (keys below `...model.`) -> transformers CLIP keys and values.

    The fused attention input projection `in_proj_weight` [3D, D] splits into q, k, v (in
    that order); `text_projection` (used as x @ P) becomes the linear weight P^T. Returns
    (state dict, keys that match no rule)."""
    out, unknown = {}, []
    inv_fixed = {v: k for k, v in _OPEN_CLIP_FIXED.items()}
    for key, value in sd.items():
        if key in inv_fixed:
            out[inv_fixed[key]] = value.T if key == "text_projection" else value
            continue
        m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key)
        if not m:
            unknown.append(key)
            continue
        p, rest = f"text_model.encoder.layers.{m[1]}.", m[2]
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            leaf = rest.rsplit("_", 1)[1]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3, axis=0)):
                out[f"{p}self_attn.{name}.{leaf}"] = part
            continue
        renamed = _rename_head(rest, _OPEN_CLIP_LAYER_INV)
        if renamed is None:
            unknown.append(key)
        else:
            out[p + renamed] = value
    return out, unknown


def open_clip_to_ldm(sd: dict) -> dict:
    """transformers CLIP keys and values -> an OpenCLIP text tower (the inverse of
    `open_clip_from_ldm`): q, k, v fused back into `in_proj_*`, the projection transposed."""
    out = {}
    for key, value in sd.items():
        if key in _OPEN_CLIP_FIXED:
            out[_OPEN_CLIP_FIXED[key]] = value.T if key == "text_projection.weight" else value
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key)
        if not m:
            raise KeyError(f"no OpenCLIP name for text-encoder key {key!r}")
        p, rest = f"transformer.resblocks.{m[1]}.", m[2]
        q = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if q:
            if q[1] == "q":
                parts = [sd[f"text_model.encoder.layers.{m[1]}.self_attn.{n}_proj.{q[2]}"]
                         for n in "qkv"]
                out[f"{p}attn.in_proj_{q[2]}"] = np.concatenate(parts, axis=0)
            continue
        renamed = _rename_head(rest, _OPEN_CLIP_LAYER)
        if renamed is None:
            raise KeyError(f"no OpenCLIP name for text-encoder key {key!r}")
        out[p + renamed] = value
    return out
