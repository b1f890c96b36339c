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


@pytest.mark.slow  # two compiles of the tiny train step (~90 s CPU)
def test_fsdp_sharded_params_match_data_parallel(tmp_path):
    """One step on a (data 2, fsdp 4) mesh, where params, EMA and Adam moments are sharded
    by their logical axes, equals the step on (data 8) with replicated params (same global
    batch, same key): float32 reduction order only, so rtol 1e-5 on the loss. Params: Adam's
    first update is lr * g / (|g| + eps), about +-lr whatever |g| is, so where a gradient
    element is ~0 its float32 reduction order can move it by up to 2 lr: every element
    within 2 lr, and >= 99.9% within rtol 1e-4 / atol 1e-6 (measured: 1 of 9216 outside)."""
    import jax
    data = builders.build_shapes(str(tmp_path / "data"), 32, {"train": 16})
    runs = {}
    for name, shape in (("dp", (8, 1, 1)), ("fsdp", (2, 4, 1))):
        c = _config(data, 1)
        c.optimizer.warmup_steps = 0
        c.mesh.shape = shape
        runs[name] = train_and_evaluate(c, str(tmp_path / name))
    (s_dp, h_dp), (s_fs, h_fs) = runs["dp"], runs["fsdp"]
    sharded = [x for x in jax.tree.leaves(s_fs.params) if not x.sharding.is_fully_replicated]
    assert len(sharded) > 10, "fsdp mesh left the UNet params replicated"
    mu = [x for x in jax.tree.leaves(s_fs.opt_state)
          if hasattr(x, "sharding") and not x.sharding.is_fully_replicated]
    assert len(mu) >= 2 * len(sharded)  # Adam's mu and nu follow their params
    np.testing.assert_allclose(h_fs[0]["loss"], h_dp[0]["loss"], rtol=1e-5)
    lr = _config(data, 1).optimizer.learning_rate
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(s_fs.params)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(s_dp.params)])
    assert np.max(np.abs(a - b)) <= 2 * lr
    assert np.mean(np.abs(a - b) <= 1e-6 + 1e-4 * np.abs(b)) >= 0.999
