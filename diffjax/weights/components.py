"""A whole model as the pipeline needs it (`Components`), and the models diffjax knows by name.

A `Components` bundle holds the networks' configs and params, the tokenizer folders and
the noise schedule the UNet was trained with, whatever format it came from (`load.load`).
SDXL has a second text encoder (OpenCLIP bigG, `text_config_2`) beside CLIP ViT-L; the SDXL
refiner has only that second one (`text_config` is None), as diffusers' folders have it.
By name: presets (published architectures with seeded random weights, for tests and
benchmarks) and packaged models (trained weights shipped inside the package).
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources

from diffjax.weights.io import WeightsError


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
    # SDXL (None / False for SD1/SD2): the second text encoder (`text_encoder_2/`,
    # `tokenizer_2/`; None: the packaged vocabulary padding with "!") and the pipeline flags
    # diffusers reads from model_index.json (defaults: its SDXL pipelines' own).
    text_config_2: object = None
    text_params_2: dict | None = None
    tokenizer_2_dir: str | None = None
    force_zeros_for_empty_prompt: bool = False   # no negative prompt: zero uncond embeddings
    requires_aesthetics_score: bool = False      # refiner: time ids end with an aesthetic score

    @property
    def is_sdxl(self) -> bool:
        """Two-tower (or refiner: second-tower-only) text conditioning with pooled
        embedding and micro-conditioning time ids."""
        return self.text_config_2 is not None

    def text_towers(self) -> list[tuple[object, str]]:
        """The text encoders present, in diffusers' order: (config, params field)."""
        return [(cfg, field) for cfg, field in ((self.text_config, "text_params"),
                                                 (self.text_config_2, "text_params_2"))
                if cfg is not None]


SD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    num_train_timesteps=1000, prediction_type="epsilon",
                    rescale_betas_zero_snr=False)

# preset name -> (CLIP text preset | None, UNet preset, VAE preset, prediction type[,
# second (bigG) text preset]): SDXL's have the second tower, the refiner only it.
PRESET_MODELS = {
    "tiny": ("tiny", "tiny", "tiny", "epsilon"),
    "sd15": ("sd1", "sd15", "sd", "epsilon"),
    "sd21-base": ("sd2", "sd21-base", "sd", "epsilon"),
    "sd21-768": ("sd2", "sd21-768", "sd", "v_prediction"),
    "sdxl": ("sdxl-l", "sdxl", "sdxl", "epsilon", "sdxl-bigg"),
    "sdxl-refiner": (None, "sdxl-refiner", "sdxl", "epsilon", "sdxl-bigg"),
}

# SDXL pipeline flags per preset (diffusers' model_index.json of the published folders).
PRESET_FLAGS = {
    "sdxl": dict(force_zeros_for_empty_prompt=True),
    "sdxl-refiner": dict(requires_aesthetics_score=True, force_zeros_for_empty_prompt=False),
}


# Trained models that ship inside the package (diffjax/assets/<dir>), by name. Unlike the
# presets above they are real weights: "mini" is trained by tools/mini_recipe.py.
PACKAGED_MODELS = {"mini": "mini"}


def packaged_model_dir(name: str) -> str:
    """The folder of a packaged model; a named error if this install lacks its weights."""
    path = str(resources.files("diffjax") / "assets" / PACKAGED_MODELS[name])
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
                      attention: str = "auto", weights: bool = True) -> Components:
    """A preset with random weights (seeded): for tests, benchmarks, and the default model
    until a trained one ships. weights=False: configs only, every params field None (what
    lowering and compiling for a TPU topology need: `diffjax plan`, no host memory)."""
    import flax.linen as nn

    from diffjax.models import presets
    from diffjax.models.abstract import abstract_params
    if name not in PRESET_MODELS:
        raise WeightsError(f"unknown model preset {name!r}; presets: {', '.join(PRESET_MODELS)}"
                           " (or give a diffusers-format folder)")
    t_name, u_name, v_name, prediction, *second = PRESET_MODELS[name]

    def text(preset, offset):
        if preset is None:
            return None, None
        tc = dataclasses.replace(presets.CLIP_TEXT_PRESETS[preset], dtype=dtype,
                                 attention_impl=attention)
        return tc, (random_params(nn.meta.unbox(abstract_params(tc)), seed + offset)
                    if weights else None)
    tc, tp = text(t_name, 0)
    tc2, tp2 = text(second[0] if second else None, 3)
    uc = dataclasses.replace(presets.UNET_PRESETS[u_name], dtype=dtype, attention_impl=attention)
    vc = dataclasses.replace(presets.VAE_PRESETS[v_name], attention_impl=attention)
    up = random_params(nn.meta.unbox(abstract_params(uc)), seed + 1) if weights else None
    vp = random_params(nn.meta.unbox(abstract_params(vc)), seed + 2) if weights else None
    return Components(name, tc, tp, uc, up, vc, vp, None,
                      dict(SD_SCHEDULER, prediction_type=prediction),
                      text_config_2=tc2, text_params_2=tp2, **PRESET_FLAGS.get(name, {}))


def resolve_clip_skip(requested: int, components: Components, name: str = "clip_skip") -> int:
    """The text layer to condition on: `requested`, or with -1 the one the model declares;
    sampling and training resolve it alike. Errors name the key and the tower's depth.
    SDXL counts from the penultimate layer (diffusers' `hidden_states[-(clip_skip + 2)]`),
    so there it must be below each tower's depth."""
    from diffjax.spec import ConfigError
    clip_skip = requested if requested >= 0 else components.clip_skip
    sdxl = components.is_sdxl
    for config, _ in components.text_towers():
        layers = config.num_hidden_layers
        if clip_skip > layers - sdxl:
            raise ConfigError(f"{name} {clip_skip} must be <= the text encoder's {layers} "
                              "layers" + (" minus 1 (SDXL counts from the penultimate one)"
                                          if sdxl else ""))
    return clip_skip
