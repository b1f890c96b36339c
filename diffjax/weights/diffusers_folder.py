"""diffusers-format Stable Diffusion folders <-> `Components`.

A diffusers folder is the exchange format (what the Hub and every other tool read): one
subfolder per component (`text_encoder/`, `unet/`, `vae/`, `tokenizer/`, `scheduler/`,
optionally the CLIP image tower in `image_encoder/`) and a `model_index.json` naming them.
SDXL folders add `text_encoder_2/` and `tokenizer_2/` (the refiner has only those two, its
`text_encoder` and `tokenizer` are null in model_index.json) and the pipeline flags
`force_zeros_for_empty_prompt` / `requires_aesthetics_score` in model_index.json.
The per-network key maps live in `clip`, `unet` and `vae`; this module walks the folder.
"""

from __future__ import annotations

import dataclasses
import json
import os

from diffjax.weights.components import (PACKAGED_MODELS, PRESET_MODELS, SD_SCHEDULER,
                                        Components, upcast_half)
from diffjax.weights.io import WeightsError, write_json

SUBFOLDERS = ("text_encoder", "unet", "vae", "tokenizer", "scheduler")
SDXL_SUBFOLDERS = ("text_encoder_2", "tokenizer_2")

# model_index.json key of a folder's trained clip_skip: diffusers ignores "_" keys.
CLIP_SKIP_KEY = "_diffjax_clip_skip"


def check_sd_folder(path: str) -> None:
    """Named errors for a folder that is not a complete diffusers SD checkpoint."""
    if not os.path.isdir(path):
        raise WeightsError(f"model {path!r} is neither a packaged model "
                           f"({', '.join(PACKAGED_MODELS)}), a preset "
                           f"({', '.join(PRESET_MODELS)}) nor an existing folder")
    if not os.path.exists(os.path.join(path, "model_index.json")):
        raise WeightsError(f"{path!r} has no model_index.json: not a diffusers-format folder")
    has = lambda s: os.path.isdir(os.path.join(path, s))  # noqa: E731
    required = ("unet", "vae", "scheduler")
    if all(has(s) for s in SDXL_SUBFOLDERS):      # SDXL; the refiner has no first encoder
        required += ("tokenizer",) if has("text_encoder") else ()
    else:
        required += ("text_encoder", "tokenizer")
    missing = [s for s in SUBFOLDERS + SDXL_SUBFOLDERS if s in required and not has(s)]
    if missing:
        raise WeightsError(f"model folder {path!r} is incomplete: missing "
                           f"{', '.join(m + '/' for m in missing)}")


def load_scheduler_config(folder: str) -> dict:
    path = os.path.join(folder, "scheduler_config.json")
    if not os.path.exists(path):
        raise WeightsError(f"scheduler folder {folder!r} has no scheduler_config.json")
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    # every key of the file is kept (timestep_spacing, steps_offset, use_karras_sigmas, ...:
    # schedule="model" reads them); the ones diffjax always needs get SD's defaults
    out = {**d, **{k: d.get(k, v) for k, v in SD_SCHEDULER.items()}}
    if out["beta_schedule"] not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        raise WeightsError(f"{path}: beta_schedule {out['beta_schedule']!r} not supported")
    return out


def read_model_index(path: str) -> dict:
    with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
        return json.load(f)


def read_pipeline_flags(path: str) -> dict:
    """SDXL's pipeline flags as diffusers reads them: model_index.json's value, else the
    pipeline class's default (`StableDiffusionXL*Pipeline`: force_zeros_for_empty_prompt
    True, requires_aesthetics_score False)."""
    index = read_model_index(path)
    flags = dict(force_zeros_for_empty_prompt="XL" in str(index.get("_class_name", "")),
                 requires_aesthetics_score=False)
    for key in flags:
        value = index.get(key, flags[key])
        if not isinstance(value, bool):
            raise WeightsError(f"{path}/model_index.json: {key} must be true or false, "
                               f"got {value!r}")
        flags[key] = value
    return flags


def read_clip_skip(path: str) -> int:
    """The clip_skip a folder's UNet was trained with (model_index.json; 0 when absent, as
    for every public SD 1.x/2.x folder)."""
    value = read_model_index(path).get(CLIP_SKIP_KEY, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WeightsError(f"{path}/model_index.json: {CLIP_SKIP_KEY} must be an integer "
                           f">= 0, got {value!r}")
    return value


def _load_text(path: str, sub: str, dtype: str, attention: str):
    """(config, float32 params) of a text encoder subfolder, or (None, None) without one."""
    from diffjax.weights.clip import load_text_encoder
    if not os.path.isdir(os.path.join(path, sub)):
        return None, None
    tc, tp = load_text_encoder(os.path.join(path, sub))
    return dataclasses.replace(tc, dtype=dtype, attention_impl=attention), upcast_half(tp)


def load_sd_folder(path: str, dtype: str = "float32", attention: str = "auto") -> Components:
    """Every component of a diffusers-format Stable Diffusion 1.x/2.x or SDXL folder."""
    from diffjax.weights.unet import load_unet
    from diffjax.weights.vae import load_vae
    check_sd_folder(path)
    tc, tp = _load_text(path, "text_encoder", dtype, attention)
    tc2, tp2 = _load_text(path, "text_encoder_2", dtype, attention)
    uc, up = load_unet(os.path.join(path, "unet"), dtype=dtype, attention_impl=attention)
    vc, vp = load_vae(os.path.join(path, "vae"), attention_impl=attention)
    vision_config = vision_params = None
    if os.path.isdir(os.path.join(path, "image_encoder")):
        from diffjax.weights.clip import load_vision_encoder
        vision_config, vision_params = load_vision_encoder(os.path.join(path, "image_encoder"))
        vision_params = upcast_half(vision_params)
    sdxl = tc2 is not None
    tokenizer = os.path.join(path, "tokenizer")
    return Components(os.path.basename(os.path.normpath(path)), tc, tp, uc,
                      upcast_half(up), vc, upcast_half(vp),
                      tokenizer if os.path.isdir(tokenizer) else None,
                      load_scheduler_config(os.path.join(path, "scheduler")),
                      vision_config, vision_params, read_clip_skip(path),
                      text_config_2=tc2, text_params_2=tp2,
                      tokenizer_2_dir=os.path.join(path, "tokenizer_2") if sdxl else None,
                      **(read_pipeline_flags(path) if sdxl else {}))


def export_sd_folder(c: Components, path: str, dtype: str = "float32") -> None:
    """Write a diffusers-format folder that `StableDiffusionPipeline.from_pretrained` reads.

    dtype: the storage dtype of the weights ("float16" halves a shipped model's size).
    The CLIP image tower, if `c` has one, goes to `image_encoder/`.
    """
    from diffjax.text import BANG_PAD, write_tokenizer_dir
    from diffjax.weights.clip import export_text_encoder
    from diffjax.weights.unet import export_unet
    from diffjax.weights.vae import export_vae
    os.makedirs(path, exist_ok=True)
    if c.text_config is not None:
        export_text_encoder(c.text_config, c.text_params, os.path.join(path, "text_encoder"),
                            dtype)
        write_tokenizer_dir(os.path.join(path, "tokenizer"), c.tokenizer_dir)
    if c.is_sdxl:
        export_text_encoder(c.text_config_2, c.text_params_2,
                            os.path.join(path, "text_encoder_2"), dtype)
        # the packaged vocabulary stands in for bigG's, which pads with "!"
        write_tokenizer_dir(os.path.join(path, "tokenizer_2"), c.tokenizer_2_dir,
                            None if c.tokenizer_2_dir else BANG_PAD)
    export_unet(c.unet_config, c.unet_params, os.path.join(path, "unet"), dtype)
    export_vae(c.vae_config, c.vae_params, os.path.join(path, "vae"), dtype)
    extra = {}
    if c.vision_config is not None:
        from diffjax.weights.clip import export_vision_encoder
        export_vision_encoder(c.vision_config, c.vision_params,
                              os.path.join(path, "image_encoder"), dtype)
        extra["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
    if c.clip_skip:
        extra[CLIP_SKIP_KEY] = int(c.clip_skip)
    os.makedirs(os.path.join(path, "scheduler"), exist_ok=True)
    # every key the source had is kept (a folder round trip writes its own config back);
    # what it lacks gets the published pipelines' scheduler
    defaults = (dict(_class_name="EulerDiscreteScheduler", timestep_spacing="leading",
                     steps_offset=1, interpolation_type="linear", use_karras_sigmas=False)
                if c.is_sdxl else
                dict(_class_name="PNDMScheduler", skip_prk_steps=True, steps_offset=1,
                     set_alpha_to_one=False, clip_sample=False))
    scheduler = {**defaults, **c.scheduler}
    write_json(os.path.join(path, "scheduler", "scheduler_config.json"), scheduler)
    text = (["transformers", "CLIPTextModel"] if c.text_config is not None else [None, None])
    tokenizer = (["transformers", "CLIPTokenizer"] if c.text_config is not None
                 else [None, None])
    if c.is_sdxl:
        refiner = c.text_config is None
        index = {"_class_name": ("StableDiffusionXLImg2ImgPipeline" if refiner
                                 else "StableDiffusionXLPipeline"),
                 "text_encoder": text, "tokenizer": tokenizer,
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                 "tokenizer_2": ["transformers", "CLIPTokenizer"],
                 "force_zeros_for_empty_prompt": bool(c.force_zeros_for_empty_prompt)}
        if refiner or c.requires_aesthetics_score:
            index["requires_aesthetics_score"] = bool(c.requires_aesthetics_score)
    else:
        index = {"_class_name": "StableDiffusionPipeline", "text_encoder": text,
                 "tokenizer": tokenizer, "safety_checker": [None, None],
                 "feature_extractor": [None, None], "requires_safety_checker": False}
    write_json(os.path.join(path, "model_index.json"), {
        **index, "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", scheduler["_class_name"]], **extra})
