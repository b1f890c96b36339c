"""UNet trainer end to end on `shapes` (tiny preset, 8-device CPU mesh): runs, resumes."""

import json
import os

import numpy as np
import pytest

from diffjax.data import builders
from diffjax.train.unet_trainer import train_and_evaluate


def _config(dataset, steps, batch=8):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "unet_cfg", os.path.join(os.path.dirname(__file__), "..", "configs", "train", "unet.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config(f"steps={steps},batch={batch}")
    c.data.dataset = dataset
    c.optimizer.warmup_steps = 1
    c.train.save_every = 2
    return c


@pytest.mark.slow  # one compile of the tiny UNet+CLIP+VAE train step: ~45 s CPU
def test_train_resume_and_bad_batch(tmp_path):
    data = builders.build_shapes(str(tmp_path / "data"), 32, {"train": 16})
    work = str(tmp_path / "run")
    state, hist = train_and_evaluate(_config(data, 2), work)
    assert [h["step"] for h in hist] == [1, 2]
    assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in hist)
    assert json.load(open(os.path.join(work, "config.json")))["data"]["dataset"] == data
    logged = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    assert logged == hist
    # A second call restores the step-2 checkpoint (params, EMA, optimizer, data position)
    # and, already at num_steps, runs nothing (no second compile: bitwise resume of the
    # loop itself is tested in test_train_loop.py).
    before = np.asarray(state.params["conv_in"]["kernel"])
    state2, hist2 = train_and_evaluate(_config(data, 2), work)
    assert hist2 == [] and int(state2.step) == 2
    np.testing.assert_array_equal(np.asarray(state2.params["conv_in"]["kernel"]), before)
    with pytest.raises(ValueError, match="batch_size 12 is not divisible by the mesh's data "
                                         r"axes \(data x fsdp = 8\)"):
        train_and_evaluate(_config(data, 3, batch=12), str(tmp_path / "run2"))
