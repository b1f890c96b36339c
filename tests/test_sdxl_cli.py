"""`diffjax sample` end to end on tiny SDXL diffusers folders (written by our converter):
base -> refiner (config.refiner.model / switch) at an odd size (72 x 104 px: 9 x 13
latents, the 1016 x 760 case scaled down, no multiple of the UNet's 2^(levels-1)), with
the SDXL keys recorded in config.json and the PNG metadata; `--aspect` on an SDXL model
picks its training bucket."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffjax.weights.diffusers_folder import export_sd_folder
from sdxl_tiny import base_a, refiner


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-cli")
    out = {}
    for c in (base_a(), refiner()):
        out[c.name] = str(root / c.name)
        export_sd_folder(c, out[c.name])
    return out


def test_sample_base_then_refiner_at_an_odd_size(folders, tmp_path):
    from diffjax import cli, outputs
    out = tmp_path / "run"
    args = ["sample", "--model", folders["base-a"], "--prompt", "a red circle",
            "--negative-prompt", "blurry", "--seeds", "0,5", "--out", str(out),
            "--config.refiner.model=" + folders["refiner"], "--config.refiner.switch=0.7",
            "--config.height=72", "--config.width=104", "--config.sampler.steps=4",
            "--config.original_size=1024,1024", "--config.aesthetic_score=7",
            "--config.compilation_cache=", "--config.batch_size=8"]
    assert cli.main(args) == 0
    for name in ("000000-seed0.png", "000001-seed5.png"):
        meta = outputs.read_png_metadata(out / name)
        assert (meta["height"], meta["width"]) == (72, 104)
        assert meta["refiner"] == "refiner" and meta["refiner_switch"] == 0.7
        assert meta["time_ids"] == [1024, 1024, 0, 0, 72, 104]
        from PIL import Image
        im = np.asarray(Image.open(out / name))
        assert im.shape == (72, 104, 3) and im.std() > 0
    config = json.loads((out / "config.json").read_text())
    assert config["refiner"] == {"model": folders["refiner"], "switch": 0.7}
    assert list(config["original_size"]) in (["1024", "1024"], [1024, 1024])


def test_aspect_picks_the_sdxl_bucket():
    from diffjax.commands.image_flags import sdxl_bucket
    assert sdxl_bucket("16:9") == (768, 1344)
    assert sdxl_bucket("1:1") == (1024, 1024)
    assert sdxl_bucket("2:3") == (1216, 832)
    assert sdxl_bucket("3:2", native=64) == (48, 80)     # a scaled-down model, x8
