"""Prompt files -> fixed item lists; PNGs with A1111-readable metadata, written atomically."""

import json

import numpy as np
import pytest
from PIL import Image

from diffjax import outputs, prompts


def test_seed_specs():
    assert tuple(prompts.parse_seeds("0:4")) == (0, 1, 2, 3)
    assert prompts.parse_seeds("7") == (7,)
    assert prompts.parse_seeds("1, 5,9") == (1, 5, 9)
    for bad in ("4:2", "a:b", "", "-1"):
        with pytest.raises(prompts.PromptFileError):
            prompts.parse_seeds(bad)


def test_txt_and_jsonl_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red circle\n\n  a blue square  \n")
    items = prompts.read_prompt_file(str(txt), default_seeds=(0, 1), default_negative="ugly")
    assert [(i.index, i.prompt, i.seed, i.negative_prompt) for i in items] == [
        (0, "a red circle", 0, "ugly"), (1, "a red circle", 1, "ugly"),
        (2, "a blue square", 0, "ugly"), (3, "a blue square", 1, "ugly")]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "a", "seeds": [5, 6]}\n{"prompt": "b", "seed": 9, '
                  '"negative_prompt": "n"}\n{"prompt": "c"}\n')
    items = prompts.read_prompt_file(str(jl), default_seeds=(0,))
    assert [(i.prompt, i.seed, i.negative_prompt) for i in items] == [
        ("a", 5, ""), ("a", 6, ""), ("b", 9, "n"), ("c", 0, "")]
    assert items[2].stem == "000002-seed9"


@pytest.mark.parametrize("content,msg", [
    ("", "has no prompts"),
    ("\n  \n", "has no prompts"),
    ('{"prompt": "a"}\n{"prompt": "b",\n', r"p.jsonl:2: not valid JSON"),
    ('{"prompt": 3}\n', r"p.jsonl:1: expected an object with a string \"prompt\""),
    ('{"prompt": "a", "sede": 3}\n', r"p.jsonl:1: unknown field\(s\) \['sede'\]"),
    ('{"prompt": "a", "seeds": [-1]}\n', r"p.jsonl:1: seeds must be"),
])
def test_bad_prompt_files_are_named(tmp_path, content, msg):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    with pytest.raises(prompts.PromptFileError, match=msg):
        prompts.read_prompt_file(str(p), default_seeds=(0,))


def test_missing_prompt_file(tmp_path):
    with pytest.raises(prompts.PromptFileError, match="does not exist"):
        prompts.read_prompt_file(str(tmp_path / "nope.txt"), default_seeds=(0,))


def test_batches_fixed_and_padded_tail():
    items = prompts.items_for_prompt("x", range(7))
    b = prompts.batches(items, 3)
    assert [len(x) for x in b] == [3, 3, 1] and b[2][0].index == 6


def test_png_metadata_round_trip(tmp_path):
    img = outputs.to_uint8(np.linspace(0, 1, 4 * 4 * 3).reshape(4, 4, 3))
    meta = dict(prompt="a red circle", negative_prompt="blurry", seed=3, steps=20,
                sampler="euler", guidance_scale=5.0, width=4, height=4, model="tiny",
                clip_skip=1)
    path = tmp_path / "x.png"
    outputs.atomic_write(path, outputs.png_bytes(img, meta))
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp file left
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), img)
        params = im.text["parameters"]
    assert params.splitlines()[0] == "a red circle"
    assert params.splitlines()[1] == "Negative prompt: blurry"
    assert ("Steps: 20, Sampler: Euler, CFG scale: 5.0, Seed: 3, Size: 4x4, Model: tiny, "
            "Clip skip: 2") in params    # A1111 counts from 1: its 2 is the penultimate layer
    #                                      (and names the sampler its own way: diffjax.a1111)
    assert outputs.read_png_metadata(path) == json.loads(json.dumps(meta))


def test_to_uint8_clips_and_rounds():
    np.testing.assert_array_equal(outputs.to_uint8([-0.5, 0.0, 0.5, 1.0, 2.0]),
                                  [0, 0, 128, 255, 255])
