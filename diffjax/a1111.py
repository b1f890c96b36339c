"""AUTOMATIC1111's conventions: sampler and schedule names, the PNG `parameters` text, hashes.

Images shared on model sites are read by A1111-compatible parsers (A1111's own
`parse_generation_parameters`, Civitai, ComfyUI importers). They expect the last line of
the `parameters` chunk to be `Key: value` pairs with A1111's names ("Sampler: DPM++ 2M",
"Schedule type: Karras"), values containing `,` `:` or a newline JSON-quoted (A1111's
`quote`), and the hashes it computes: `Model hash` is the first 10 hex digits of the
checkpoint file's sha256, `Lora hashes` the first 12 of a LoRA's "addnet" hash (sha256 of a
safetensors file after its header; of the whole file otherwise), `TI hashes` the first 12
of the embedding file's sha256.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping

# diffjax sampler name -> A1111's (modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py)
SAMPLER_NAMES = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_2m": "DPM++ 2M", "dpmpp_sde": "DPM++ SDE", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE", "ddim": "DDIM", "plms": "PLMS", "unipc": "UniPC",
    "ddpm": "DDPM",
}

# diffjax schedule name -> A1111's "Schedule type" label (modules/sd_schedulers.py)
SCHEDULE_NAMES = {
    "karras": "Karras", "exponential": "Exponential", "polyexponential": "Polyexponential",
    "uniform": "Uniform", "simple": "Simple", "ddim_uniform": "DDIM", "beta": "Beta",
    "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps", "normal": "Normal",
}


def sampler_name(name: str) -> str:
    """A1111's label for a diffjax sampler; samplers A1111 lacks keep diffjax's name."""
    return SAMPLER_NAMES.get(name, name)


def schedule_name(name: str) -> str:
    return SCHEDULE_NAMES.get(name, name)


def quote(value) -> str:
    """A1111's `quote`: JSON-quote a value containing `,`, `:` or a newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------------------- hashes
def _sha256(path: str, skip: int = 0) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(skip)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime: float, skip: int) -> str:
    return _sha256(path, skip)


def file_sha256(path: str) -> str:
    st = os.stat(path)
    return _cached_sha256(os.path.abspath(path), st.st_size, st.st_mtime, 0)


def addnet_sha256(path: str) -> str:
    """kohya's addnet hash: sha256 of a safetensors file's tensor bytes (after the 8-byte
    length and the JSON header), so editing metadata keeps the hash; other files: whole."""
    if not path.endswith(".safetensors"):
        return file_sha256(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    st = os.stat(path)
    return _cached_sha256(os.path.abspath(path), st.st_size, st.st_mtime, 8 + n)


def model_hash(path: str) -> str:
    """A1111's `Model hash`: sha256 of the checkpoint file, first 10 hex digits."""
    return file_sha256(path)[:10]


def lora_hash(path: str) -> str:
    """A1111's `Lora hashes` entry: the addnet hash, first 12 hex digits."""
    return addnet_sha256(path)[:12]


def embedding_hash(path: str) -> str:
    """A1111's `TI hashes` entry: sha256 of the embedding file, first 12 hex digits."""
    return file_sha256(path)[:12]


def _hash_list(hashes: Mapping[str, str]) -> str:
    return ", ".join(f"{name}: {h}" for name, h in hashes.items())


# ----------------------------------------------------------------------- parameters
def parameters_text(meta: Mapping) -> str:
    """The A1111 `parameters` text of an image's metadata dict (diffjax's PNG `diffjax`
    JSON): prompt, `Negative prompt: ...`, then one line of `Key: value` pairs."""
    fields = [
        ("Steps", meta.get("steps")),
        ("Sampler", sampler_name(meta["sampler"]) if meta.get("sampler") else None),
        ("Schedule type", schedule_name(meta["schedule"]) if meta.get("schedule") else None),
        ("CFG scale", meta.get("guidance_scale")),
        ("Seed", meta.get("seed")),
        ("Size", f"{meta['width']}x{meta['height']}" if "width" in meta else None),
        ("Model hash", meta.get("model_hash")),
        ("Model", meta.get("model")),
        ("Denoising strength", meta.get("strength")),
        # A1111 counts from 1 (its "Clip skip: 2" is diffusers' clip_skip=1)
        ("Clip skip", meta["clip_skip"] + 1 if meta.get("clip_skip") else None),
        ("Guidance rescale", meta.get("guidance_rescale") or None),
        ("Sampler options", " ".join(f"{k}={v}" for k, v in meta["sampler_options"].items())
         if meta.get("sampler_options") else None),
        ("Lora hashes", _hash_list(meta["lora_hashes"]) if meta.get("lora_hashes") else None),
        ("TI hashes", _hash_list(meta["ti_hashes"]) if meta.get("ti_hashes") else None),
        ("Version", f"diffjax {meta['version']}" if "version" in meta else None),
    ]
    text = meta.get("prompt", "")
    if meta.get("negative_prompt"):
        text += f"\nNegative prompt: {meta['negative_prompt']}"
    return text + "\n" + ", ".join(f"{k}: {quote(v)}" for k, v in fields if v is not None)
