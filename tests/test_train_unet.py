"""UNet trainer end to end on `shapes` (tiny preset, 8-device CPU mesh): runs, resumes."""

import json
import os

import numpy as np
import pytest

from diffjax.data import builders
from diffjax.train.unet_trainer import train_and_evaluate


def _config(dataset, steps, batch=8):
    from diffjax.configs.train import unet
    c = unet.get_config(f"steps={steps},batch={batch}")
    c.data.dataset = dataset
    c.optimizer.warmup_steps = 1
    c.train.save_every = 2
    return c


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    """Two steps of the tiny UNet trainer on the (data 8) mesh, checkpointed at step 2: the
    run the tests below read (one compile, ~45 s CPU; `--dist loadfile` keeps this file on
    one worker, so it runs once)."""
    root = tmp_path_factory.mktemp("unet_trainer")
    data = builders.build_shapes(str(root / "data"), 32, {"train": 16})
    work = str(root / "dp")
    state, hist = train_and_evaluate(_config(data, 2), work)
    return data, work, state, hist


@pytest.mark.slow
def test_train_resume_and_bad_batch(dp_run, tmp_path):
    data, work, state, hist = dp_run
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
    bad = _config(data, 3)
    bad.train.clip_skip = 3   # the tiny text tower has 2 layers
    with pytest.raises(ValueError, match="train.clip_skip 3 must be <= the text encoder's 2"):
        train_and_evaluate(bad, str(tmp_path / "run3"))


@pytest.mark.slow  # one more compile of the tiny train step, sharded (~50 s CPU)
def test_fsdp_sharded_params_match_data_parallel(dp_run, tmp_path):
    """Two steps on a (data 2, fsdp 4) mesh, where params, EMA and Adam moments are sharded
    by their logical axes, equal the steps on (data 8) with replicated params (same global
    batches, same keys): float32 reduction order only, so rtol 1e-5 on the losses. Params:
    Adam's update is about lr * g / (|g| + eps), so where a gradient element is ~0 its
    float32 reduction order can flip it by up to 2 lr per step: every element within 4 lr
    after two steps, and >= 99.9% within rtol 1e-4 / atol 1e-6 (measured after one step:
    1 of 9216 outside)."""
    import jax
    data, _, s_dp, h_dp = dp_run
    c = _config(data, 2)
    c.mesh.shape = (2, 4, 1)
    s_fs, h_fs = train_and_evaluate(c, str(tmp_path / "fsdp"))
    sharded = [x for x in jax.tree.leaves(s_fs.params) if not x.sharding.is_fully_replicated]
    assert len(sharded) > 10, "fsdp mesh left the UNet params replicated"
    mu = [x for x in jax.tree.leaves(s_fs.opt_state)
          if hasattr(x, "sharding") and not x.sharding.is_fully_replicated]
    assert len(mu) >= 2 * len(sharded)  # Adam's mu and nu follow their params
    np.testing.assert_allclose([h["loss"] for h in h_fs], [h["loss"] for h in h_dp],
                               rtol=1e-5)
    lr = c.optimizer.learning_rate
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(s_fs.params)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(s_dp.params)])
    assert np.max(np.abs(a - b)) <= 4 * lr
    assert np.mean(np.abs(a - b) <= 1e-6 + 1e-4 * np.abs(b)) >= 0.999


@pytest.mark.slow  # one more compile of the tiny train step (~45 s CPU)
def test_cached_latents_train_the_same(dp_run, tmp_path):
    """train.cache_latents: the same two steps as encoding in the step (same batches, keys
    and caption dropout). Tolerance rtol 1e-5 on the losses: the encoder ran at another
    batch size (256 instead of 8), float32 reduction order only."""
    data, _, _, h_dp = dp_run
    c = _config(data, 2)
    c.train.cache_latents = True
    _, hist = train_and_evaluate(c, str(tmp_path / "cached"))
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in h_dp],
                               rtol=1e-5)
    c.data.flip = True
    with pytest.raises(ValueError, match="train.cache_latents needs deterministic pixels"):
        train_and_evaluate(c, str(tmp_path / "flip"))


def test_init_from_takes_a_finished_runs_ema_unet(dp_run):
    """`model.init_from` starts from a run's EMA UNet (how a second training stage continues
    a first); a run of another architecture is refused naming the parameter and both shapes."""
    import jax

    from diffjax.weights.load import load
    from diffjax.train.checkpoint import load_trained_params
    from diffjax.train.unet_trainer import _initial_unet_params
    data, work, _, _ = dp_run
    c = _config(data, 1)
    comps = load(c.model.name)
    assert _initial_unet_params(c, comps) is comps.unet_params      # no init_from
    c.model.init_from = work
    got = _initial_unet_params(c, comps)
    want, _ = load_trained_params(work, "ema_params")
    jax.tree.map(np.testing.assert_array_equal, got, want)
    other = jax.tree.map(lambda x: x, comps.unet_params)             # a copy of the tree
    other["conv_in"]["kernel"] = np.zeros((3, 3, 4, 7), np.float32)
    comps.unet_params = other
    with pytest.raises(ValueError, match=r"\['conv_in'\]\['kernel'\] has shape \(3, 3, 4, "
                                         r"\d+\), .* expects \(3, 3, 4, 7\)"):
        _initial_unet_params(c, comps)


def test_sample_grid_takes_the_configs_prompts_and_seeds(dp_run, tmp_path, monkeypatch):
    """train.sample_prompts / sample_seeds / sample_steps / sample_guidance reach the sample
    grid (the grid is replaced by a recorder that stops the run before any step)."""
    from diffjax.train import sample_grid
    data, _, _, _ = dp_run
    seen = {}

    class Recorder:
        def __init__(self, comps, prompts, seeds, **kw):
            seen.update(prompts=prompts, seeds=seeds, **kw)
            raise KeyboardInterrupt   # stop here: nothing below is under test

    monkeypatch.setattr(sample_grid, "GridSampler", Recorder)
    c = _config(data, 2)
    c.train.sample_every = 1
    c.train.sample_prompts = ("a red circle", "a green star")
    c.train.sample_seeds = (7,)
    c.train.sample_guidance = 5.5
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(c, str(tmp_path / "grid"))
    assert seen == dict(prompts=("a red circle", "a green star"), seeds=(7,), steps=20,
                        guidance_scale=5.5, clip_skip=0)
