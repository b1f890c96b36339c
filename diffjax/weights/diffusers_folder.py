"""diffusers-format Stable Diffusion folders <-> `Components`.

A diffusers folder is the exchange format (what the Hub and every other tool read): one
subfolder per component (`text_encoder/`, `unet/`, `vae/`, `tokenizer/`, `scheduler/`,
optionally the CLIP image tower in `image_encoder/`) and a `model_index.json` naming them.
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
    missing = [s for s in SUBFOLDERS if not os.path.isdir(os.path.join(path, s))]
    if missing:
        raise WeightsError(f"model folder {path!r} is incomplete: missing "
                           f"{', '.join(m + '/' for m in missing)}")


def load_scheduler_config(folder: str) -> dict:
    path = os.path.join(folder, "scheduler_config.json")
    if not os.path.exists(path):
        raise WeightsError(f"scheduler folder {folder!r} has no scheduler_config.json")
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    out = {k: d.get(k, v) for k, v in SD_SCHEDULER.items()}
    if out["beta_schedule"] not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        raise WeightsError(f"{path}: beta_schedule {out['beta_schedule']!r} not supported")
    return out


def read_clip_skip(path: str) -> int:
    """The clip_skip a folder's UNet was trained with (model_index.json; 0 when absent, as
    for every public SD 1.x/2.x folder)."""
    with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
        value = json.load(f).get(CLIP_SKIP_KEY, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WeightsError(f"{path}/model_index.json: {CLIP_SKIP_KEY} must be an integer "
                           f">= 0, got {value!r}")
    return value


def load_sd_folder(path: str, dtype: str = "float32", attention: str = "auto") -> Components:
    """Every component of a diffusers-format Stable Diffusion 1.x/2.x folder."""
    from diffjax.weights.clip import load_text_encoder
    from diffjax.weights.unet import load_unet
    from diffjax.weights.vae import load_vae
    check_sd_folder(path)
    tc, tp = load_text_encoder(os.path.join(path, "text_encoder"))
    uc, up = load_unet(os.path.join(path, "unet"), dtype=dtype, attention_impl=attention)
    vc, vp = load_vae(os.path.join(path, "vae"), attention_impl=attention)
    tc = dataclasses.replace(tc, dtype=dtype, attention_impl=attention)
    vision_config = vision_params = None
    if os.path.isdir(os.path.join(path, "image_encoder")):
        from diffjax.weights.clip import load_vision_encoder
        vision_config, vision_params = load_vision_encoder(os.path.join(path, "image_encoder"))
        vision_params = upcast_half(vision_params)
    return Components(os.path.basename(os.path.normpath(path)), tc, upcast_half(tp), uc,
                      upcast_half(up), vc, upcast_half(vp), os.path.join(path, "tokenizer"),
                      load_scheduler_config(os.path.join(path, "scheduler")),
                      vision_config, vision_params, read_clip_skip(path))


def export_sd_folder(c: Components, path: str, dtype: str = "float32") -> None:
    """Write a diffusers-format folder that `StableDiffusionPipeline.from_pretrained` reads.

    dtype: the storage dtype of the weights ("float16" halves a shipped model's size).
    The CLIP image tower, if `c` has one, goes to `image_encoder/`.
    """
    import shutil

    from diffjax.text import default_tokenizer_dir
    from diffjax.weights.clip import export_text_encoder
    from diffjax.weights.unet import export_unet
    from diffjax.weights.vae import export_vae
    os.makedirs(path, exist_ok=True)
    export_text_encoder(c.text_config, c.text_params, os.path.join(path, "text_encoder"),
                        dtype)
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
    shutil.copytree(c.tokenizer_dir or default_tokenizer_dir(), os.path.join(path, "tokenizer"),
                    dirs_exist_ok=True)
    os.makedirs(os.path.join(path, "scheduler"), exist_ok=True)
    write_json(os.path.join(path, "scheduler", "scheduler_config.json"),
               dict(c.scheduler, _class_name="PNDMScheduler", skip_prk_steps=True,
                    steps_offset=1, set_alpha_to_one=False, clip_sample=False))
    write_json(os.path.join(path, "model_index.json"), {
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None],
        "requires_safety_checker": False, **extra})
