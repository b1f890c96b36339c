"""Single-file checkpoints (the original LDM/SGM layout) <-> `Components`, without torch.

Most Stable Diffusion weights in the wild are one `.safetensors` file holding every network
under the training code's names: the UNet below `model.diffusion_model.`, the VAE below
`first_stage_model.`, the text encoder(s) below `cond_stage_model.` (SD 1.x: transformers
CLIP; SD 2.x: OpenCLIP) or `conditioner.embedders.N.` (SDXL). Import goes
LDM keys -> diffusers keys (`ldm_keys`, checked against diffusers' own converters in
tests/test_single_file.py) -> the diffusers -> diffjax rows every other loader uses; export is
the same two steps backwards, so file -> Components -> file is the identity.

The model kind is told from the keys (`detect_kind`). What the keys cannot tell is taken
from the published architectures (CLIP and SD2/SDXL UNet heads are 64 wide, SD1's UNet has 8
heads, GroupNorm has 32 groups) unless the file carries diffjax's own configs in its
metadata (`diffjax.configs`, written by `export_single_file`, so tiny test models round
trip too). SD 2.x's prediction type (eps for 512-base, v for 768-v) is not in the weights:
it comes from the caller, the file's `modelspec.prediction_type` metadata or an LDM
`<file>.yaml` beside it (`parameterization: "v"`), else a named error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import numpy as np

from diffjax.weights import ldm_keys
from diffjax.weights.io import WeightsError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_TEXT = "cond_stage_model.transformer."
SD2_TEXT = "cond_stage_model.model."
SDXL_TEXT_1 = "conditioner.embedders.0.transformer."
SDXL_TEXT_2 = "conditioner.embedders.1.model."
REFINER_TEXT = "conditioner.embedders.0.model."
CONFIG_KEY = "diffjax.configs"
KINDS = ("sd1", "sd2", "sdxl", "sdxl-refiner", "vae")

# Saved buffers and training state that are not network parameters: LDM's noise-schedule
# tables, EMA copies (a file with EMA weights also has the plain ones), OpenCLIP's unused
# logit scale, position-id buffers, SGM's sigma tables and a VAE's training-loss nets.
_NOT_PARAMS = re.compile(
    r"^(betas|alphas_cumprod(_prev)?|sqrt_(one_minus_)?alphas_cumprod|"
    r"log_one_minus_alphas_cumprod|sqrt_recip(m1)?_alphas_cumprod|posterior_\w+|logvar|"
    r"lvlb_weights|model_ema\..*|denoiser\..*|(first_stage_model\.)?loss\..*|"
    r".*\.logit_scale|.*position_ids)$")

# SD 2.x's OpenCLIP keys diffusers drops (its `SD_2_TEXT_ENCODER_KEYS_TO_IGNORE`): SD2
# conditions on the penultimate layer, so the 24th layer and the projection are unused.
_SD2_DROPPED = re.compile(r"^transformer\.resblocks\.23\.|^text_projection$")


class SingleFileError(WeightsError):
    """A single-file checkpoint diffjax cannot read (unknown kind, unknown keys)."""


@dataclasses.dataclass
class SingleFile:
    """A single-file checkpoint split into diffusers-layout state dicts (numpy)."""

    kind: str                      # one of KINDS
    inpainting: bool
    unet: dict | None
    vae: dict | None
    text: dict | None              # SD1/SD2 text encoder; SDXL: CLIP ViT-L
    text_2: dict | None            # SDXL: OpenCLIP ViT-bigG (the refiner's only encoder)
    metadata: dict


# ------------------------------------------------------------------------------- kinds
def detect_kind(keys) -> str:
    """The model kind from the key names (see KINDS); a named error when unknown."""
    keys = list(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has(UNET):
        if has(SDXL_TEXT_2):
            return "sdxl"
        if has(REFINER_TEXT):
            return "sdxl-refiner"
        if has(SD2_TEXT):
            return "sd2"
        if has(SD1_TEXT):
            return "sd1"
        raise SingleFileError(
            "single-file checkpoint has a UNet (model.diffusion_model.*) but no text encoder "
            f"diffjax knows (expected {SD1_TEXT}*, {SD2_TEXT}* or conditioner.embedders.*); "
            f"top-level names: {_top_level(keys)}")
    if has("encoder.") and has("decoder."):
        return "vae"
    if has(VAE):
        return "vae"
    raise SingleFileError(
        "not a Stable Diffusion single-file checkpoint (SD 1.x/2.x, SDXL, SDXL refiner or a "
        f"VAE): top-level names {_top_level(keys)}")


def _top_level(keys) -> str:
    heads = sorted({".".join(k.split(".")[:2]) for k in keys})
    return ", ".join(heads[:8]) + (f", ... ({len(heads) - 8} more)" if len(heads) > 8 else "")


# ------------------------------------------------------------------------------ import
def _below(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _layers_per_block(ldm_unet: dict) -> int:
    ops = sorted(int(m[1]) for k in ldm_unet
                 if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k)))
    if ops:
        return ops[0] - 1
    return len({k.split(".")[1] for k in ldm_unet if k.startswith("input_blocks.")}) - 1


def _convert(sd: dict, fn, what: str, unknown: list) -> dict:
    out = {}
    for key, value in sd.items():
        new = fn(key)
        if new is None:
            unknown.append(f"{what}{key}")
        else:
            out[new] = value
    return out


def split_single_file(sd: dict, metadata: dict | None = None) -> SingleFile:
    """LDM/SGM keys -> diffusers-layout state dicts per network; keys that are neither a
    known parameter nor a known non-parameter are a named error (never dropped)."""
    kind = detect_kind(sd)
    sd = {k: v for k, v in sd.items() if not _NOT_PARAMS.match(k)}
    unknown: list[str] = []
    unet = vae = text = text_2 = None
    if kind == "vae":
        prefix = VAE if any(k.startswith(VAE) for k in sd) else ""
        vae_sd = _below(sd, prefix)
        if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in vae_sd):
            vae = vae_sd                                   # already diffusers-layout
        else:
            n = _vae_levels(vae_sd)
            vae = {ldm_keys.vae_from_ldm(k, n) or k: ldm_keys.vae_value_from_ldm("." + k, v)
                   for k, v in vae_sd.items()}
            unknown += [prefix + k for k in vae_sd if ldm_keys.vae_from_ldm(k, n) is None]
        consumed = (prefix,) if prefix else ("encoder.", "decoder.", "quant_conv.",
                                             "post_quant_conv.")
    else:
        ldm_unet = _below(sd, UNET)
        lpb = _layers_per_block(ldm_unet)
        unet = _convert(ldm_unet, lambda k: ldm_keys.unet_from_ldm(k, lpb), UNET, unknown)
        ldm_vae = _below(sd, VAE)
        n = _vae_levels(ldm_vae)
        vae = {}
        for k, v in ldm_vae.items():
            new = ldm_keys.vae_from_ldm(k, n)
            if new is None:
                unknown.append(VAE + k)
            else:
                vae[new] = ldm_keys.vae_value_from_ldm("." + k, v)
        consumed = [UNET, VAE]
        if kind == "sd1":
            text, consumed = _below(sd, SD1_TEXT), consumed + [SD1_TEXT]
        elif kind == "sd2":
            open_clip = {k: v for k, v in _below(sd, SD2_TEXT).items()
                         if not _SD2_DROPPED.match(k)}
            text, bad = ldm_keys.open_clip_from_ldm(open_clip)
            unknown += [SD2_TEXT + k for k in bad]
            consumed.append(SD2_TEXT)
        elif kind == "sdxl":
            text = _below(sd, SDXL_TEXT_1)
            text_2, bad = ldm_keys.open_clip_from_ldm(_below(sd, SDXL_TEXT_2))
            unknown += [SDXL_TEXT_2 + k for k in bad]
            consumed += [SDXL_TEXT_1, SDXL_TEXT_2]
        else:
            text_2, bad = ldm_keys.open_clip_from_ldm(_below(sd, REFINER_TEXT))
            unknown += [REFINER_TEXT + k for k in bad]
            consumed.append(REFINER_TEXT)
        consumed = tuple(consumed)
    unknown += [k for k in sd if not k.startswith(consumed)]
    if unknown:
        shown = ", ".join(sorted(unknown)[:10])
        raise SingleFileError(f"{kind} single-file checkpoint has {len(unknown)} key(s) diffjax "
                              f"has no place for: {shown}"
                              + (" ..." if len(unknown) > 10 else ""))
    inpainting = unet is not None and "conv_in.weight" in unet and \
        unet["conv_in.weight"].shape[1] == 9
    return SingleFile(kind, inpainting, unet, vae, text, text_2, dict(metadata or {}))


def _vae_levels(ldm_vae: dict) -> int:
    return len({m[1] for k in ldm_vae if (m := re.match(r"encoder\.down\.(\d+)\.", k))})


# ----------------------------------------------------------------------------- configs
def _count(sd: dict, pattern: str) -> int:
    return len({m[1] for k in sd if (m := re.match(pattern, k))})


def unet_config_dict(unet: dict, kind: str, prediction_type: str) -> dict:
    """A diffusers UNet config for the published architecture these weights have."""
    n = _count(unet, r"down_blocks\.(\d+)\.")
    channels = [int(unet[f"down_blocks.{b}.resnets.0.conv1.weight"].shape[0]) for b in range(n)]
    has_attn = lambda side, b: any(k.startswith(f"{side}_blocks.{b}.attentions.")  # noqa
                                   for k in unet)
    # transformer depth per block (diffusers gives the mid block the last entry and the up
    # blocks the reversed list, so blocks without attention carry the mid block's depth)
    mid = _count(unet, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.") or 1
    depth = [_count(unet, rf"down_blocks\.{b}\.attentions\.0\.transformer_blocks\.(\d+)\.")
             or mid for b in range(n)]
    k = next((k for k in unet if k.endswith("attn2.to_k.weight")), None)
    proj = next((k for k in unet if k.endswith("proj_in.weight")), None)
    d = dict(
        sample_size={"sd2": 96 if prediction_type == "v_prediction" else 64}.get(
            kind, 128 if kind.startswith("sdxl") else 64),
        in_channels=int(unet["conv_in.weight"].shape[1]),
        out_channels=int(unet["conv_out.weight"].shape[0]),
        block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if has_attn("down", b) else "DownBlock2D"
                          for b in range(n)],
        up_block_types=["CrossAttnUpBlock2D" if has_attn("up", b) else "UpBlock2D"
                        for b in range(n)],
        layers_per_block=_count(unet, r"down_blocks\.0\.resnets\.(\d+)\."),
        attention_head_dim=8 if kind == "sd1" else [max(1, c // 64) for c in channels],
        cross_attention_dim=int(unet[k].shape[1]) if k else None,
        use_linear_projection=bool(proj and unet[proj].ndim == 2),
        transformer_layers_per_block=depth if len(set(depth)) > 1 else depth[0],
        norm_num_groups=32)
    if "add_embedding.linear_1.weight" in unet:
        d.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=int(
                     unet["add_embedding.linear_1.weight"].shape[1]))
    return d


def vae_config_dict(vae: dict, kind: str) -> dict:
    """A diffusers AutoencoderKL config for these weights (SD's KL-f8 family)."""
    n = _count(vae, r"encoder\.down_blocks\.(\d+)\.")
    return dict(
        in_channels=int(vae["encoder.conv_in.weight"].shape[1]),
        out_channels=int(vae["decoder.conv_out.weight"].shape[0]),
        latent_channels=int(vae["post_quant_conv.weight"].shape[0]),
        block_out_channels=[int(vae[f"encoder.down_blocks.{b}.resnets.0.conv1.weight"].shape[0])
                            for b in range(n)],
        layers_per_block=_count(vae, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        norm_num_groups=32,
        sample_size=1024 if kind.startswith("sdxl") else 512,
        scaling_factor=0.13025 if kind.startswith("sdxl") else 0.18215,
        **({"force_upcast": True} if kind.startswith("sdxl") else {}),
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n)


def text_config_dict(text: dict, open_clip: bool, with_projection: bool) -> dict:
    """A transformers CLIPTextConfig dict: OpenAI CLIP (quick_gelu) or OpenCLIP (gelu)."""
    vocab, hidden = text["text_model.embeddings.token_embedding.weight"].shape
    d = dict(vocab_size=int(vocab), hidden_size=int(hidden),
             intermediate_size=int(text["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
             num_hidden_layers=_count(text, r"text_model\.encoder\.layers\.(\d+)\."),
             num_attention_heads=max(1, int(hidden) // 64),
             max_position_embeddings=int(
                 text["text_model.embeddings.position_embedding.weight"].shape[0]),
             hidden_act="gelu" if open_clip else "quick_gelu", layer_norm_eps=1e-5,
             eos_token_id=2, pad_token_id=1,
             architectures=["CLIPTextModelWithProjection" if with_projection
                            else "CLIPTextModel"])
    if with_projection:
        d["projection_dim"] = int(text["text_projection.weight"].shape[0])
    return d


def scheduler_dict(prediction_type: str) -> dict:
    """The training noise schedule of every SD 1.x/2.x/XL model (diffusers'
    single-file default), with the checkpoint's prediction type."""
    from diffjax.weights.components import SD_SCHEDULER
    return dict(SD_SCHEDULER, prediction_type=prediction_type, timestep_spacing="leading",
                steps_offset=1)


# ---------------------------------------------------------------------- prediction type
_PREDICTION = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction",
               "v_prediction": "v_prediction", "v-prediction": "v_prediction"}


def resolve_prediction_type(kind: str, path: str | None, metadata: dict,
                            requested: str | None = None) -> str:
    """The prediction type: `requested`, else the file's metadata, else an LDM yaml beside
    the file, else epsilon where the kind has only that (SD1, SDXL); SD2 otherwise fails."""
    for source, value in (("requested prediction type", requested),
                          ("modelspec.prediction_type metadata",
                           metadata.get("modelspec.prediction_type"))):
        if value:
            if value not in _PREDICTION:
                raise SingleFileError(f"{source} {value!r} is not one of "
                                      f"{sorted(set(_PREDICTION))}")
            return _PREDICTION[value]
    if path:
        for yaml in (os.path.splitext(path)[0] + ".yaml", os.path.splitext(path)[0] + ".yml"):
            if os.path.exists(yaml):
                with open(yaml, encoding="utf-8") as f:
                    m = re.search(r"parameterization:\s*[\"']?(\w+)", f.read())
                return "v_prediction" if m and m[1] == "v" else "epsilon"
    if kind == "sd2":
        raise SingleFileError(
            f"{path or 'this SD 2.x checkpoint'}: the prediction type cannot be told from the "
            "weights (SD 2.x 512-base predicts epsilon, 768-v predicts v); pass "
            "--prediction-type epsilon|v_prediction, or put the LDM .yaml beside the file")
    return "epsilon"


# --------------------------------------------------------------------------- reading
def read_file(path: str, allow_pickle: bool = False) -> tuple[dict, dict]:
    """(state dict, metadata) of a single-file checkpoint; pickles only when allowed."""
    from diffjax.weights.io import load_state_dict
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, framework="numpy") as f:
            metadata = dict(f.metadata() or {})
        return load_state_dict(path), metadata
    from diffjax.weights.pickle_reader import load_pickle_state_dict
    return load_pickle_state_dict(path, allow_pickle=allow_pickle), {}


def is_single_file(source: str) -> bool:
    return os.path.isfile(source) and source.endswith(
        (".safetensors", ".ckpt", ".pt", ".pth", ".bin"))


@functools.lru_cache(maxsize=1)
def open_clip_tokenizer_dir() -> str:
    """OpenCLIP's tokenizer as transformers reads it, for SD 2.x's only tokenizer: CLIP's
    vocabulary padding with "!" (id 0). The packaged vocabulary copied into a temporary
    folder with that pad token (no download)."""
    import tempfile

    from diffjax.text import BANG_PAD, write_tokenizer_dir
    out = tempfile.mkdtemp(prefix="diffjax-open-clip-tokenizer-")
    write_tokenizer_dir(out, pad_token=BANG_PAD)
    return out


# ----------------------------------------------------------------------- to Components
def _configs(f: SingleFile, prediction_type: str) -> dict:
    """diffusers-format config dicts per network: the file's own (diffjax metadata) or the
    published architecture's."""
    if CONFIG_KEY in f.metadata:
        return json.loads(f.metadata[CONFIG_KEY])
    out = {"unet": unet_config_dict(f.unet, f.kind, prediction_type),
           "vae": vae_config_dict(f.vae, f.kind),
           "scheduler": scheduler_dict(prediction_type), "clip_skip": 0}
    if f.text is not None:
        out["text_encoder"] = text_config_dict(f.text, f.kind == "sd2", False)
    if f.text_2 is not None:
        out["text_encoder_2"] = text_config_dict(f.text_2, True, True)
    return out


def load_vae_file(path: str, attention: str = "auto", allow_pickle: bool = False):
    """A standalone VAE file (LDM or diffusers layout) -> (VAEConfig, params)."""
    from diffjax.weights.components import upcast_half
    from diffjax.weights.vae import vae_config_from_diffusers, vae_params_from_state_dict
    sd, metadata = read_file(path, allow_pickle)
    f = split_single_file(sd, metadata)
    if f.kind != "vae":
        raise SingleFileError(f"{path}: a {f.kind} checkpoint, not a VAE")
    d = (json.loads(metadata[CONFIG_KEY])["vae"] if CONFIG_KEY in metadata
         else vae_config_dict(f.vae, "sd"))
    config = vae_config_from_diffusers(d, attention_impl=attention)
    return config, upcast_half(vae_params_from_state_dict(f.vae, config, f"VAE in {path}"))


def load_single_file(path: str, dtype: str = "float32", attention: str = "auto",
                     prediction_type: str | None = None, allow_pickle: bool = False):
    """A single-file SD 1.x/2.x/XL checkpoint -> `Components` (float32 params)."""
    from diffjax.weights.clip import clip_text_config_from_hf, text_params_from_state_dict
    from diffjax.weights.components import Components, upcast_half
    from diffjax.weights.unet import unet_config_from_diffusers, unet_params_from_state_dict
    from diffjax.weights.vae import vae_config_from_diffusers, vae_params_from_state_dict
    sd, metadata = read_file(path, allow_pickle)
    f = split_single_file(sd, metadata)
    if f.kind == "vae":
        raise SingleFileError(f"{path} is a standalone VAE, not a whole model; use it as the "
                              "VAE of a model (weights.single_file.load_vae_file)")
    prediction = resolve_prediction_type(f.kind, path, metadata, prediction_type)
    configs = _configs(f, prediction)
    scheduler = dict(configs["scheduler"], prediction_type=prediction)
    uc = unet_config_from_diffusers(configs["unet"], dtype=dtype, attention_impl=attention)
    vc = vae_config_from_diffusers(configs["vae"], attention_impl=attention)
    name = os.path.splitext(os.path.basename(path))[0]
    up = unet_params_from_state_dict(f.unet, uc, f"UNet in {path}")
    vp = vae_params_from_state_dict(f.vae, vc, f"VAE in {path}")
    texts = []
    for key, tsd in (("text_encoder", f.text), ("text_encoder_2", f.text_2)):
        if tsd is None:
            texts.append((None, None))
            continue
        tc = dataclasses.replace(clip_text_config_from_hf(configs[key]), dtype=dtype,
                                 attention_impl=attention)
        texts.append((tc, upcast_half(text_params_from_state_dict(tsd, tc, f"{key} in {path}"))))
    (tc, tp), (tc2, tp2) = texts
    comps = Components(name, tc, tp, uc, upcast_half(up), vc, upcast_half(vp),
                      open_clip_tokenizer_dir() if f.kind == "sd2" else None, scheduler,
                      clip_skip=int(configs.get("clip_skip", 0)),
                      # SDXL: the second tower (bigG; the refiner's only one) with the
                      # packaged vocabulary padding with "!" (tokenizer_2_dir None), and
                      # the pipeline flags of diffusers' published SDXL folders
                      text_config_2=tc2, text_params_2=tp2,
                      force_zeros_for_empty_prompt=configs.get(
                          "force_zeros_for_empty_prompt", f.kind == "sdxl"),
                      requires_aesthetics_score=configs.get(
                          "requires_aesthetics_score", f.kind == "sdxl-refiner"))
    comps.source_file = os.path.abspath(path)     # A1111's "Model hash" (pipeline metadata)
    return comps


# ---------------------------------------------------------------------------- export
def _kind_of(c) -> str:
    if getattr(c, "text_params_2", None) is not None:
        return "sdxl" if c.text_params is not None else "sdxl-refiner"
    return "sd2" if c.text_config.hidden_act == "gelu" else "sd1"


def to_ldm(kind: str, unet: dict, vae: dict, text: dict | None, text_2: dict | None,
           layers_per_block: int, up_block_types, vae_levels: int) -> dict:
    """diffusers-layout state dicts -> one LDM/SGM-layout state dict (the inverse of
    `split_single_file`). Values pass through untouched except where the layouts differ."""
    up_attn = lambda b: "CrossAttn" in up_block_types[b]  # noqa: E731
    out = {UNET + ldm_keys.unet_to_ldm(k, layers_per_block, up_attn): v
           for k, v in unet.items()}
    for k, v in vae.items():
        new = ldm_keys.vae_to_ldm(k, vae_levels)
        out[VAE + new] = ldm_keys.vae_value_to_ldm("." + new, v)
    if text is not None:
        if kind == "sd2":
            out.update({SD2_TEXT + k: v for k, v in ldm_keys.open_clip_to_ldm(text).items()})
        else:
            prefix = SDXL_TEXT_1 if kind == "sdxl" else SD1_TEXT
            out.update({prefix + k: v for k, v in text.items()})
    if text_2 is not None:
        prefix = SDXL_TEXT_2 if kind == "sdxl" else REFINER_TEXT
        out.update({prefix + k: v for k, v in ldm_keys.open_clip_to_ldm(text_2).items()})
    return out


def components_to_ldm(c) -> tuple[dict, dict]:
    """`Components` -> (LDM/SGM-layout state dict, metadata) of a single-file checkpoint."""
    from diffjax.weights.clip import clip_text_config_to_hf, text_params_to_state_dict
    from diffjax.weights.mapping import params_to_state_dict
    from diffjax.weights.unet import unet_config_to_diffusers, unet_params_to_state_dict
    from diffjax.weights.vae import vae_config_to_diffusers, vae_rows
    kind = _kind_of(c)
    uc = c.unet_config
    configs = {"unet": unet_config_to_diffusers(uc), "vae": vae_config_to_diffusers(c.vae_config),
               "scheduler": dict(c.scheduler), "clip_skip": int(c.clip_skip),
               "force_zeros_for_empty_prompt": bool(c.force_zeros_for_empty_prompt),
               "requires_aesthetics_score": bool(c.requires_aesthetics_score)}
    texts = []
    for key, config, params in (("text_encoder", c.text_config, c.text_params),
                                ("text_encoder_2", getattr(c, "text_config_2", None),
                                 getattr(c, "text_params_2", None))):
        texts.append(None if params is None else text_params_to_state_dict(params, config))
        if params is not None:
            configs[key] = clip_text_config_to_hf(config)
    out = to_ldm(kind, unet_params_to_state_dict(c.unet_params, uc),
                 params_to_state_dict(c.vae_params, vae_rows(c.vae_config)), *texts,
                 uc.layers_per_block, uc.up_block_types, len(c.vae_config.block_out_channels))
    prediction = c.scheduler.get("prediction_type", "epsilon")
    metadata = {CONFIG_KEY: json.dumps(configs), "format": "pt",
                "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon"}
    return out, metadata


def export_single_file(c, path: str, dtype: str = "float32") -> None:
    """Write `c` as one LDM/SGM-layout `.safetensors` file (A1111 / ComfyUI layout)."""
    from diffjax.weights.io import save_state_dict
    if not path.endswith(".safetensors"):
        raise SingleFileError(f"single-file output {path!r} must end in .safetensors")
    sd, metadata = components_to_ldm(c)
    save_state_dict({k: np.asarray(v, np.float32).astype(dtype) for k, v in sd.items()},
                    path, metadata)
