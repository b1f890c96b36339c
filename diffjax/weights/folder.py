"""Whole models: a diffusers-format Stable Diffusion folder, or a named preset (random init).

A `Components` bundle is what the pipeline needs: the three networks' configs and params,
the tokenizer folder, and the noise schedule the UNet was trained with.
"""

from __future__ import annotations

import dataclasses
import json
import os

from diffjax.weights.io import WeightsError

SUBFOLDERS = ("text_encoder", "unet", "vae", "tokenizer", "scheduler")


@dataclasses.dataclass
class Components:
    name: str
    text_config: object
    text_params: dict
    unet_config: object
    unet_params: dict
    vae_config: object
    vae_params: dict
    tokenizer_dir: str | None          # None: the packaged CLIP vocabulary
    scheduler: dict                    # beta_schedule, beta_start, beta_end, ..., prediction_type
    vision_config: object = None       # the CLIP image tower (`image_encoder/`), if the model
    vision_params: dict | None = None  # has one: CLIP score / Frechet features (diffjax-mini)
    clip_skip: int = 0                 # the text-encoder layer the UNet was trained on (see
    #                                    CLIPTextModel); a sample's clip_skip -1 means this one


SD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    num_train_timesteps=1000, prediction_type="epsilon",
                    rescale_betas_zero_snr=False)

# preset name -> (CLIP text preset, UNet preset, VAE preset, prediction type)
PRESET_MODELS = {
    "tiny": ("tiny", "tiny", "tiny", "epsilon"),
    "sd15": ("sd1", "sd15", "sd", "epsilon"),
    "sd21-base": ("sd2", "sd21-base", "sd", "epsilon"),
    "sd21-768": ("sd2", "sd21-768", "sd", "v_prediction"),
}


# Trained models that ship inside the package (diffjax/assets/<dir>), by name. Unlike the
# presets above they are real weights: "mini" is trained by tools/mini_recipe.py.
PACKAGED_MODELS = {"mini": "mini"}


def packaged_model_dir(name: str) -> str:
    """The folder of a packaged model; a named error if this install lacks its weights."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "assets", PACKAGED_MODELS[name])
    if not os.path.exists(os.path.join(path, "model_index.json")):
        raise WeightsError(f"packaged model {name!r} is not in this install ({path} has no "
                           "model_index.json); train it with tools/mini_recipe.py")
    return path


def upcast_half(params):
    """float16/bfloat16 leaves -> float32: params are float32 masters whatever the file
    stores (the compute dtype is the pipeline's choice)."""
    import jax
    import numpy as np
    return jax.tree.map(lambda a: a.astype(np.float32)
                        if a.dtype.kind == "f" and a.dtype.itemsize < 4
                        or str(a.dtype) == "bfloat16" else a, params)


def random_params(abstract_params, seed: int) -> dict:
    """Seeded random weights for a param tree of known shapes, leaf by leaf in numpy.

    Much faster than `jax.jit(module.init)` (which compiles the whole forward pass: 10 s
    for the tiny UNet on CPU) and deterministic per (seed, param path): kernels and
    embeddings ~ N(0, 1/fan_in), norm scales 1, biases 0 — what a freshly initialised
    network looks like, which is all a random-weight preset promises.
    """
    import zlib

    import numpy as np

    from diffjax.weights.mapping import _set_path, flatten_paths
    out: dict = {}
    for path, leaf in flatten_paths(abstract_params).items():
        shape, name = tuple(leaf.shape), path[-1]
        if name == "bias":
            value = np.zeros(shape, np.float32)
        elif name == "scale":
            value = np.ones(shape, np.float32)
        else:
            rng = np.random.default_rng([seed, zlib.crc32("/".join(path).encode())])
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
            std = 0.02 if name in ("embedding", "position_embedding",
                                   "class_embedding") else fan_in ** -0.5
            value = (rng.standard_normal(shape, np.float32) * std).astype(np.float32)
        _set_path(out, path, value)
    return out


def preset_components(name: str, seed: int = 0, dtype: str = "float32",
                      attention: str = "auto") -> Components:
    """A preset with random weights (seeded): for tests, benchmarks, and the default model
    until a trained one ships."""
    import flax.linen as nn

    from diffjax.models import presets
    from diffjax.models.abstract import abstract_params
    if name not in PRESET_MODELS:
        raise WeightsError(f"unknown model preset {name!r}; presets: {', '.join(PRESET_MODELS)}"
                           " (or give a diffusers-format folder)")
    t_name, u_name, v_name, prediction = PRESET_MODELS[name]
    tc = dataclasses.replace(presets.CLIP_TEXT_PRESETS[t_name], dtype=dtype,
                             attention_impl=attention)
    uc = dataclasses.replace(presets.UNET_PRESETS[u_name], dtype=dtype, attention_impl=attention)
    vc = dataclasses.replace(presets.VAE_PRESETS[v_name], attention_impl=attention)
    tp = random_params(nn.meta.unbox(abstract_params(tc)), seed)
    up = random_params(nn.meta.unbox(abstract_params(uc)), seed + 1)
    vp = random_params(nn.meta.unbox(abstract_params(vc)), seed + 2)
    return Components(name, tc, tp, uc, up, vc, vp, None,
                      dict(SD_SCHEDULER, prediction_type=prediction))


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


# model_index.json key of a folder's trained clip_skip: diffusers ignores "_" keys.
CLIP_SKIP_KEY = "_diffjax_clip_skip"


def read_clip_skip(path: str) -> int:
    """The clip_skip a folder's UNet was trained with (model_index.json; 0 when absent, as
    for every public SD 1.x/2.x folder)."""
    with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
        value = json.load(f).get(CLIP_SKIP_KEY, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WeightsError(f"{path}/model_index.json: {CLIP_SKIP_KEY} must be an integer "
                           f">= 0, got {value!r}")
    return value


def resolve_clip_skip(requested: int, components: Components, name: str = "clip_skip") -> int:
    """The text layer to condition on: `requested`, or with -1 the one the model declares;
    sampling and training resolve it alike. Errors name the key and the tower's depth."""
    from diffjax.config import ConfigError
    clip_skip = requested if requested >= 0 else components.clip_skip
    layers = components.text_config.num_hidden_layers
    if clip_skip > layers:
        raise ConfigError(f"{name} {clip_skip} must be <= the text encoder's {layers} layers")
    return clip_skip


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
    from diffjax.weights.unet import _write_json, export_unet
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
    _write_json(os.path.join(path, "scheduler", "scheduler_config.json"),
                dict(c.scheduler, _class_name="PNDMScheduler", skip_prk_steps=True,
                     steps_offset=1, set_alpha_to_one=False, clip_sample=False))
    _write_json(os.path.join(path, "model_index.json"), {
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None],
        "requires_safety_checker": False, **extra})
