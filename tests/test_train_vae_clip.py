"""VAE and CLIP trainers and train dispatch (the training logs: test_run_log.py)."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.commands.train import TRAINERS, get_trainer
from diffjax.train.clip_trainer import contrastive_loss
from diffjax.train.vae_trainer import edge_map, kl_to_standard_normal, vae_loss


def _config(name, arg):
    """The packaged training config `diffjax.configs.train.NAME` with `arg`, unlocked."""
    import importlib
    return importlib.import_module(f"diffjax.configs.train.{name}").get_config(arg)


# ---------------------------------------------------------------------------------------
# Losses against their references
# ---------------------------------------------------------------------------------------
@pytest.mark.parity
def test_kl_matches_diffusers_diagonal_gaussian():
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    rng = np.random.default_rng(0)
    moments = rng.standard_normal((3, 8, 5, 6)).astype(np.float32)  # NCHW [B, 2C, H, W]
    ref = DiagonalGaussianDistribution(torch.from_numpy(moments)).kl().numpy()
    nhwc = moments.transpose(0, 2, 3, 1)
    mean, logvar = nhwc[..., :4], nhwc[..., 4:]
    got = np.asarray(kl_to_standard_normal(jnp.asarray(mean), jnp.asarray(logvar)))
    # float32 sums of 120 terms of size ~1: 1e-5 relative is a few ulps of the total.
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    x = jnp.asarray(rng.standard_normal((3, 4, 4, 3)), jnp.float32)
    loss, aux = vae_loss(x + 0.5, x, jnp.asarray(mean), jnp.asarray(logvar), kl_weight=1e-3)
    np.testing.assert_allclose(float(aux["recon"]), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(loss), 0.5 + 1e-3 * ref.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="recon_loss must be 'l1' or 'l2', got 'lpips'"):
        vae_loss(x, x, mean, logvar, kl_weight=0.0, recon_loss="lpips")


def test_edge_weighted_recon_loss():
    x = np.full((1, 6, 6, 3), -1.0, np.float32)
    x[0, :, 3:, 0] = 1.0  # a vertical edge between columns 2 and 3, red channel only
    e = np.asarray(edge_map(jnp.asarray(x)))
    expect = np.zeros((1, 6, 6), np.float32)
    expect[0, :, 2:4] = 1.0  # both sides of a full-range step, nothing elsewhere
    np.testing.assert_array_equal(e, expect)
    mean = logvar = jnp.zeros((1, 2, 2, 4))
    flat = jnp.full((1, 6, 6, 3), 0.3)
    # a flat image has no edges: the weighted loss is the plain one
    _, a = vae_loss(flat + 0.1, flat, mean, logvar, kl_weight=0.0, edge_weight=9.0)
    np.testing.assert_allclose(float(a["recon"]), 0.1, rtol=1e-6)
    # an error of 1 on one edge pixel (of 36, 12 on the edge): weight 10 of total 36 + 12*9
    err = np.zeros_like(x)
    err[0, 0, 2, 0] = 1.0
    _, a = vae_loss(jnp.asarray(x + err), jnp.asarray(x), mean, logvar, kl_weight=0.0,
                    edge_weight=9.0)
    np.testing.assert_allclose(float(a["recon"]), 10.0 / 3 / (36 + 12 * 9), rtol=1e-6)
    _, a = vae_loss(jnp.asarray(x + err), jnp.asarray(x), mean, logvar, kl_weight=0.0)
    np.testing.assert_allclose(float(a["recon"]), 1.0 / (36 * 3), rtol=1e-6)
    with pytest.raises(ValueError, match="edge_weight must be >= 0, got -1"):
        vae_loss(x, x, mean, logvar, kl_weight=0.0, edge_weight=-1.0)


@pytest.mark.parity
def test_contrastive_loss_matches_transformers_clip():
    import torch
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss
    logits = np.random.default_rng(1).standard_normal((6, 6)).astype(np.float32) * 3
    ref = float(image_text_contrastive_loss(torch.from_numpy(logits)))
    loss, aux = contrastive_loss(jnp.asarray(logits))
    np.testing.assert_allclose(float(loss), ref, rtol=1e-6)  # float32 log-softmax of 6
    eye = jnp.eye(4) * 20.0
    loss, aux = contrastive_loss(eye)
    assert float(aux["accuracy"]) == 1.0 and float(loss) < 1e-7
    with pytest.raises(ValueError, match=r"expected square logits \[texts, images\], got "
                                         r"shape \(2, 3\)"):
        contrastive_loss(jnp.zeros((2, 3)))


# ---------------------------------------------------------------------------------------
# Trainers
# ---------------------------------------------------------------------------------------
def test_vae_step_learns_a_fixed_batch():
    """Six AdamW steps on one batch: the reconstruction error falls (one small compile)."""
    import dataclasses

    from diffjax.models import presets
    from diffjax.models.vae import AutoencoderKL
    from diffjax.train.state import OptimizerConfig, create_train_state, make_optimizer
    from diffjax.train.vae_trainer import init_vae_params, make_vae_step
    cfg = dataclasses.replace(presets.VAE_PRESETS["tiny"], sample_size=16)
    tx = make_optimizer(OptimizerConfig(learning_rate=3e-3, weight_decay=0.0))
    step = jax.jit(make_vae_step(AutoencoderKL(cfg), kl_weight=1e-6)(tx))
    state = create_train_state(init_vae_params(cfg, 0), tx)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    recon = []
    for _ in range(6):
        state, m = step(state, {"image": x}, jax.random.key(0))
        recon.append(float(m["recon"]))
        np.testing.assert_allclose(float(m["loss"]), recon[-1] + 1e-6 * float(m["kl"]),
                                   rtol=1e-6)
    assert int(state.step) == 6
    # Measured 0.56 -> 0.50 on this seed; 5% is far above run-to-run noise (none: CPU is
    # deterministic) and far below what 6 steps achieve.
    assert recon[-1] < 0.95 * recon[0], recon


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    from diffjax.data import builders
    return builders.build_shapes(str(tmp_path_factory.mktemp("data")), 32, {"train": 32})


def test_clip_trainer_end_to_end_logs_and_resumes(shapes_data, tmp_path):
    """Through the CLI's dispatch: 2 contrastive steps on an 8-device mesh, logs, resume."""
    c = _config("clip", "steps=2,batch=8")
    c.data.dataset = shapes_data
    c.optimizer.warmup_steps = 1
    c.train.save_every = 2
    assert c.trainer == "clip" and get_trainer(c).__module__ == TRAINERS["clip"]
    work = str(tmp_path / "clip")
    state, hist = get_trainer(c)(c, work)
    assert [h["step"] for h in hist] == [1, 2]
    for h in hist:
        # Untrained, 8 pairs: loss near ln 8 = 2.08; the temperature starts at exp(2.6592)
        # = 14.28 and moves by at most lr-sized steps.
        assert 1.0 < h["loss"] < 4.0 and 0.0 <= h["accuracy"] <= 1.0
        assert abs(h["logit_scale"] - 14.2857) < 0.1
    assert [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))] == hist
    # The same dicts go to TensorBoard (what it reads back: test_run_log.py).
    assert len(glob.glob(os.path.join(work, "tb", "events.out.tfevents.*"))) == 1
    assert json.load(open(os.path.join(work, "config.json")))["trainer"] == "clip"
    before = np.asarray(state.params["logit_scale"])
    state2, hist2 = get_trainer(c)(c, work)  # resumes at step 2 == num_steps: no step
    assert hist2 == [] and int(state2.step) == 2
    np.testing.assert_array_equal(np.asarray(state2.params["logit_scale"]), before)


def test_short_text_rows_train_the_same_clip():
    """data.text_length: captions tokenized to 16 instead of 77 give the same contrastive
    loss and the same gradient for every parameter (the causal text tower pools at the end
    token). Tolerance 1e-5 x the largest |gradient| of the model: float32 sums over fewer
    padded rows; a per-leaf scale would fail on leaves whose true gradient is 0 (attention
    key biases: the softmax ignores them) and whose computed one is rounding noise."""
    from diffjax.models.clip import CLIPModel
    from diffjax.text import load_tokenizer
    from diffjax.train.clip_trainer import (clip_configs, init_clip_params,
                                            training_text_length)
    model = CLIPModel(*clip_configs("tiny", "tiny", 32))
    params = init_clip_params(model, 0)
    captions = ["a red circle", "a small blue star at the top left", "", "a green cross"]
    pixels = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)

    def loss_and_grads(length):
        ids = jnp.asarray(load_tokenizer(max_length=length)(captions))
        return jax.value_and_grad(
            lambda p: contrastive_loss(model.apply({"params": p}, ids, pixels))[0])(params)
    (l77, g77), (l16, g16) = loss_and_grads(77), loss_and_grads(16)
    np.testing.assert_allclose(l16, l77, rtol=1e-5)
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(g77))
    for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g77)):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0)
    assert training_text_length(32, 77) == 32
    for bad in (2, 78):
        with pytest.raises(ValueError, match=f"data.text_length {bad} must be in \\[3, 77\\]"):
            training_text_length(bad, 77)


def test_named_errors_before_any_compile(shapes_data, tmp_path):
    from diffjax.train import clip_trainer, vae_trainer
    c = _config("vae", "steps=2,batch=12")
    c.data.dataset = shapes_data
    c.optimizer.warmup_steps = 1
    with pytest.raises(ValueError, match=r"batch_size 12 is not divisible by the mesh's data "
                                         r"axes \(data x fsdp = 8\)"):
        vae_trainer.train_and_evaluate(c, str(tmp_path / "v"), progress=False)
    c.model.name = "huge"
    with pytest.raises(ValueError, match="model.name 'huge' is not a VAE preset; presets: "):
        vae_trainer.train_and_evaluate(c, str(tmp_path / "v"), progress=False)
    # model.init_from naming a run of another preset (here a saved "tiny" VAE for "mini")
    import jax.numpy as jnp

    from diffjax.models import presets
    from diffjax.train import checkpoint
    from diffjax.train.state import TrainState
    tiny = vae_trainer.init_vae_params(presets.VAE_PRESETS["tiny"], 0)
    checkpoint.save(checkpoint.make_manager(str(tmp_path / "tiny_run")),
                    TrainState(jnp.asarray(1, jnp.int32), tiny, tiny, {"count": jnp.zeros(())}))
    c.data.batch_size = 8
    c.model.name, c.model.init_from = "mini", str(tmp_path / "tiny_run")
    with pytest.raises(ValueError, match=r"model.init_from '.*tiny_run' holds params of "
                                         r"another structure"):
        vae_trainer.train_and_evaluate(c, str(tmp_path / "v"), progress=False)
    c = _config("clip", "steps=2,batch=8")
    c.optimizer.warmup_steps = 1   # the whole config is checked first (warmup < total steps)
    c.data.resolution = 36
    with pytest.raises(ValueError, match="data.resolution 36 is not a multiple of the vision "
                                         "tower's patch_size 8"):
        clip_trainer.train_and_evaluate(c, str(tmp_path / "c"), progress=False)
    c.trainer = "gan"
    with pytest.raises(ValueError, match="config.trainer 'gan' is not a trainer; valid: "
                                         "unet, vae, clip"):
        get_trainer(c)
    assert _config("unet", "").trainer == "unet" and _config("vae", "").trainer == "vae"
