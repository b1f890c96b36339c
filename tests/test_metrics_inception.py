"""FID Inception: pool3 features equal pytorch-fid's `InceptionV3([3])` through our converter.

pytorch-fid is built as users build it (`use_fid_inception=True`: its FID blocks), with the
weight download patched to return a random state dict in the published file's layout
(torchvision Inception3 keys, `fc.*` included), which pytorch-fid loads strictly. Conv
weights are He-scaled and batch-norm statistics random, so every converted tensor matters.
Tolerance 1e-4 x max|ref| (float32 both sides; 94 conv+BN layers whose sums differ only in
order: measured ~5e-7). Images of three sizes: smaller than, equal to and larger than 299
(the resize is the bilinear, non-antialiased F.interpolate; ours is two matrices).
"""

import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
except ModuleNotFoundError:
    torch = None

import jax

from diffjax.metrics.inception_features import InceptionFeatures
from diffjax.metrics.resize import resize_clean, torch_bilinear_matrix
from diffjax.models.inception import InceptionConfig
from diffjax.weights import inception as winc
from diffjax.weights.io import WeightsError


def _pytorch_fid():
    import reference_imports
    reference_imports.import_torchvision()
    import pytorch_fid.inception as pif
    return pif


def _random_fid_state_dict(pif, seed=0):
    """A random state dict with exactly the keys of pytorch-fid's FID Inception (its own
    `fid_inception_v3` structure, built here without the download)."""
    inc = pif._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in (("Mixed_5b", pif.FIDInceptionA(192, pool_features=32)),
                        ("Mixed_5c", pif.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", pif.FIDInceptionA(288, pool_features=64)),
                        ("Mixed_6b", pif.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", pif.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6d", pif.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", pif.FIDInceptionC(768, channels_7x7=192)),
                        ("Mixed_7b", pif.FIDInceptionE_1(1280)),
                        ("Mixed_7c", pif.FIDInceptionE_2(2048))):
        setattr(inc, name, block)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in inc.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = v
        elif k.endswith(".weight") and v.ndim >= 2:          # conv / fc: He scale
            sd[k] = torch.randn(v.shape, generator=g) * (2 / v[0].numel()) ** 0.5
        elif k.endswith(("bn.weight", "running_var")):
            sd[k] = 0.5 + torch.rand(v.shape, generator=g)
        else:                                                 # bn.bias, running_mean, fc.bias
            sd[k] = 0.1 * torch.randn(v.shape, generator=g)
    return sd


@pytest.fixture(scope="module")
def reference():
    pif = _pytorch_fid()
    sd = _random_fid_state_dict(pif)
    download = pif.load_state_dict_from_url
    pif.load_state_dict_from_url = lambda *a, **k: sd      # nothing is downloaded
    try:
        model = pif.InceptionV3([3], use_fid_inception=True).eval()
    finally:
        pif.load_state_dict_from_url = download
    return model, {k: v.numpy() for k, v in sd.items()}


@pytest.mark.parity
def test_pool3_features_equal_pytorch_fid(reference, tmp_path):
    model, sd = reference
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
              for h, w in ((64, 64), (299, 299), (333, 256))]
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255)
                              [0][:, :, 0, 0].numpy() for im in images])
    # the published file's layout, read back from the .safetensors we keep instead of a pickle
    params = winc.params_from_state_dict(sd)
    winc.save_inception(params, str(tmp_path / "fid_inception.safetensors"))
    feats = InceptionFeatures.from_file(str(tmp_path / "fid_inception.safetensors"), batch=1,
                                        devices=jax.devices()[:1])
    got = feats(images)                     # three sizes in one call: grouped by shape
    assert got.shape == (3, 2048)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err
    # pytorch-fid's own module state dict (blocks.I.J.*) converts to the same params
    wrapper = winc.params_from_state_dict({k: v.numpy() for k, v in model.state_dict().items()})
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                    jax.tree.leaves(wrapper)))


@pytest.mark.parity
def test_resizes_equal_their_references():
    """The bilinear matrices reproduce F.interpolate (up- and downscaling, non-square), and
    the clean resize is clean-fid's own `make_resizer("PIL", False, "bicubic")`."""
    import torch.nn.functional as F
    rng = np.random.default_rng(1)
    for h, w in ((17, 40), (500, 123), (299, 299)):
        x = rng.random((h, w)).astype(np.float32)
        ref = F.interpolate(torch.from_numpy(x)[None, None], size=(299, 299), mode="bilinear",
                            align_corners=False)[0, 0].numpy()
        got = torch_bilinear_matrix(h, 299) @ x @ torch_bilinear_matrix(w, 299).T
        np.testing.assert_allclose(got, ref, atol=2e-6)
    from cleanfid.resize import make_resizer
    im = rng.integers(0, 256, (1, 100, 70, 3), dtype=np.uint8)
    ref = make_resizer("PIL", False, "bicubic", (299, 299))(im[0])
    np.testing.assert_allclose(resize_clean(im, 299)[0] * 255, ref, rtol=0, atol=1e-4)


@pytest.mark.parity
def test_pth_pickle_read_only_when_allowed(tmp_path):
    """A torch.save'd .pth (pytorch-fid's format) is refused by default and read by the
    restricted tensors-only unpickler when allowed (narrow network: a small file)."""
    config = InceptionConfig(channel_divisor=16)
    params = winc.random_inception_params(config, seed=1)
    sd = {k: torch.from_numpy(v) for k, v in winc.params_to_torch_state_dict(
        params, config).items()}
    sd["fc.weight"] = torch.zeros(1008, 128)                 # ignored, as pool3 never reads it
    torch.save(sd, tmp_path / "pt_inception.pth")
    with pytest.raises(WeightsError, match="pickle"):
        winc.load_inception(str(tmp_path / "pt_inception.pth"), config)
    again = winc.load_inception(str(tmp_path / "pt_inception.pth"), config, allow_pickle=True)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                    jax.tree.leaves(again)))


def test_converter_names_bad_keys():
    config = InceptionConfig(channel_divisor=16)
    keys = {r[0] for r in winc.inception_rows(config)}
    assert "Mixed_7c.branch_pool.bn.running_var" in keys and len(keys) == 94 * 5
    with pytest.raises(WeightsError, match="missing key"):
        winc.params_from_state_dict({"Conv2d_1a_3x3.conv.weight": np.zeros((2, 3, 3, 3))},
                                    config)
    with pytest.raises(WeightsError, match="blocks.4.0"):
        winc.params_from_state_dict({"blocks.4.0.conv.weight": np.zeros(1)}, config)
