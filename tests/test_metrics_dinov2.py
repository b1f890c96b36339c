"""DINOv2: our Flax ViT through our converter equals transformers' `Dinov2Model` (random
weights, hidden size 32), at the position grid it was built for and at another size (the
position embeddings then go through torch's bicubic interpolation, reproduced as matrices).
Tolerance 1e-5 max abs on layer-normed outputs of order 1 (float32 both sides, op order
only). Also: the hub's older key layout (attention.attention.query, SwiGLU weights_in)
converts to the same params, and the sharded extractor gives the same features on 1 and 8
devices.
"""

import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
except ModuleNotFoundError:
    torch = None

import jax

from diffjax.metrics.dinov2_features import Dinov2Features, preprocess
from diffjax.models.dinov2 import Dinov2Model, torch_bicubic_matrix
from diffjax.weights import dinov2 as wdino

HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=28,
          patch_size=7, mlp_ratio=2, layerscale_value=0.7)


def _hf_model(**extra):
    import reference_imports
    reference_imports.install_torchvision_finder()
    import transformers
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(**HF, **extra)
    model = transformers.Dinov2Model(cfg).eval()
    with torch.no_grad():                    # non-trivial LayerScale, norms and embeddings
        for name, p in model.named_parameters():
            if name.endswith(("lambda1", "norm1.weight", "norm2.weight", "layernorm.weight")):
                p.copy_(0.5 + torch.rand_like(p))
            elif name.endswith("bias") or "position" in name or "cls" in name:
                p.copy_(0.1 * torch.randn_like(p))
    return cfg, model


@pytest.mark.parity
@pytest.mark.parametrize("swiglu", [False, True])
def test_dinov2_equals_transformers(swiglu):
    cfg, model = _hf_model(use_swiglu_ffn=swiglu)
    config = wdino.config_from_hf(cfg.to_dict())
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    params = wdino.params_from_state_dict(sd, config)
    net = Dinov2Model(config)
    rng = np.random.default_rng(0)
    for h, w in ((28, 28), (42, 35)):       # the native 4x4 grid, then 6x5 (interpolated)
        x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x).permute(0, 3, 1, 2))
        hidden, pooled = net.apply({"params": params}, x)
        np.testing.assert_allclose(np.asarray(hidden), ref.last_hidden_state.numpy(),
                                   rtol=0, atol=1e-5)
        np.testing.assert_allclose(np.asarray(pooled), ref.pooler_output.numpy(),
                                   rtol=0, atol=1e-5)
    if swiglu:   # the hub's older layout: separate names, gate and up stacked in weights_in
        old = {}
        for k, v in sd.items():
            k = (k.replace("attention.q_proj", "attention.attention.query")
                 .replace("attention.o_proj", "attention.output.dense")
                 .replace("mlp.down_proj", "mlp.weights_out"))
            if "mlp.up_proj" in k:
                continue
            if "mlp.gate_proj" in k:
                v = np.concatenate([v, sd[k.replace("gate_proj", "up_proj")]], 0)
                k = k.replace("gate_proj", "weights_in")
            old["dinov2." + k] = v
        again = wdino.params_from_state_dict(old, config)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                        jax.tree.leaves(again)))


@pytest.mark.parity
def test_bicubic_matrix_equals_interpolate():
    import torch.nn.functional as F
    x = np.random.default_rng(1).normal(size=(37, 37)).astype(np.float32)
    for out in ((16, 16), (40, 9)):
        ref = F.interpolate(torch.from_numpy(x)[None, None], size=out, mode="bicubic",
                            align_corners=False)[0, 0].numpy()
        got = torch_bicubic_matrix(37, out[0]) @ x @ torch_bicubic_matrix(37, out[1]).T
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


def test_features_equal_on_one_and_eight_devices():
    config = wdino.config_from_hf(dict(HF, use_swiglu_ffn=False))
    params = jax.tree.map(np.asarray, Dinov2Model(config).init(
        jax.random.key(0), np.zeros((1, 28, 28, 3), np.float32))["params"])
    images = np.random.default_rng(2).integers(0, 256, (11, 40, 30, 3), dtype=np.uint8)
    one = Dinov2Features(params, config, size=28, batch=1, devices=jax.devices()[:1])(images)
    eight = Dinov2Features(params, config, size=28, batch=8)(images)
    assert one.shape == (11, 32)
    # one image per device on both: the same per-device program, so the same bits (other
    # per-device batch sizes differ by matmul round-off only, ~1e-6 here)
    np.testing.assert_array_equal(eight, one)
    assert preprocess(images[:1], 28).shape == (1, 28, 28, 3)
