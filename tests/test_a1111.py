"""A1111-compatible PNG `parameters`: written by diffjax, read back by A1111's own parser
(`parse_generation_parameters` of modules/infotext_utils.py, re-typed below from its
published code), with A1111's sampler/schedule names and hashes computed as A1111 does."""

import hashlib
import json
import re

import numpy as np
from PIL import Image

from diffjax import a1111, outputs
from diffjax.weights.io import save_state_dict

# ---- A1111 modules/infotext_utils.py (v1.10), as published -----------------------------
re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str):
    res = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ''
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in re_param.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    return res


def a1111_hash_list(text):   # extensions-builtin/Lora: "name: hash, name: hash"
    return dict(item.split(": ", 1) for item in text.split(", "))
# ------------------------------------------------------------------------------------------


def test_parameters_round_trip_through_a1111_parser(tmp_path):
    meta = dict(prompt="a (red:1.2) cat, sitting: on a mat", negative_prompt="blurry, lowres",
                seed=1234, steps=30, sampler="dpmpp_2m", schedule="karras",
                guidance_scale=7.5, width=640, height=512, model="my_model",
                model_hash="0123456789", clip_skip=1, strength=0.6,
                sampler_options={"s_noise": 1.0},
                lora_hashes={"style_a": "aaaaaaaaaaaa", "detail": "bbbbbbbbbbbb"},
                ti_hashes={"<cat-toy>": "cccccccccccc"}, version="0.1")
    img = outputs.to_uint8(np.zeros((4, 4, 3)))
    path = tmp_path / "x.png"
    outputs.atomic_write(path, outputs.png_bytes(img, meta))
    with Image.open(path) as im:
        text = im.text["parameters"]
    got = parse_generation_parameters(text)
    assert got["Prompt"] == meta["prompt"]
    assert got["Negative prompt"] == meta["negative_prompt"]
    assert got["Sampler"] == "DPM++ 2M" and got["Schedule type"] == "Karras"
    assert (got["Steps"], got["Seed"], got["CFG scale"]) == ("30", "1234", "7.5")
    assert (got["Size-1"], got["Size-2"]) == ("640", "512")
    assert got["Model hash"] == "0123456789" and got["Model"] == "my_model"
    assert got["Clip skip"] == "2" and got["Denoising strength"] == "0.6"
    assert a1111_hash_list(got["Lora hashes"]) == meta["lora_hashes"]
    assert a1111_hash_list(got["TI hashes"]) == meta["ti_hashes"]
    assert got["Sampler options"] == "s_noise=1.0"
    assert got["Version"] == "diffjax 0.1"


def test_names_and_hashes(tmp_path):
    assert [a1111.sampler_name(s) for s in ("euler_ancestral", "dpmpp_2m_sde", "ddim",
                                             "ipndm")] == ["Euler a", "DPM++ 2M SDE", "DDIM",
                                                           "ipndm"]
    assert a1111.schedule_name("exponential") == "Exponential"
    path = str(tmp_path / "lora.safetensors")
    save_state_dict({"a": np.arange(6, dtype=np.float32)}, path, {"ss_network_dim": "4"})
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    assert a1111.lora_hash(path) == hashlib.sha256(raw[8 + n:]).hexdigest()[:12]
    assert a1111.model_hash(path) == hashlib.sha256(raw).hexdigest()[:10]
    assert a1111.embedding_hash(path) == hashlib.sha256(raw).hexdigest()[:12]
    # the addnet hash ignores metadata edits; the file hash does not
    save_state_dict({"a": np.arange(6, dtype=np.float32)}, path, {"ss_network_dim": "8"})
    assert a1111.lora_hash(path) == hashlib.sha256(raw[8 + n:]).hexdigest()[:12]
    assert a1111.quote("a, b") == '"a, b"' and a1111.quote("plain") == "plain"
