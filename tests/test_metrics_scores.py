"""FID, FID statistics files, KID, precision/recall and CLIP score against the reference tools
(pytorch-fid, torch-fidelity, torchmetrics), on the same features / images.

Tolerances: FID 1e-6 relative (both sides float64; ours takes the eigenvalues of the
symmetric sqrt(C1) C2 sqrt(C1), pytorch-fid scipy's sqrtm of C1 C2: same number up to
round-off of the 64-d problems here). KID 1e-6 relative, features handed to torch-fidelity
as float64 so both sides sum in float64 over the same subsets (its RandomState draws).
Precision/recall: equal counts (float64 distances on both sides). CLIP score: 1e-5 relative,
per pair and aggregated (float32 towers on both sides: cosines agree to ~2e-7, i.e. scores
of ~30 to ~2e-5 absolute, measured max 7e-7 relative; torchmetrics also sums the pair scores
in float32).
"""

import os
import shutil

import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
except ModuleNotFoundError:
    torch = None

from diffjax.metrics import fid_stats, kid, precision_recall
from diffjax.metrics.frechet import frechet_distance, gaussian_stats


def _features(n, d, shift, seed):
    """Correlated, non-Gaussian features (a random linear map of |normal| + shift)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return np.abs(rng.normal(size=(n, d))) @ mix + shift


@pytest.fixture(scope="module")
def feats():
    return _features(400, 64, 0.0, 0), _features(300, 64, 0.3, 1)


@pytest.mark.parity
def test_fid_and_stats_files_equal_pytorch_fid(feats, tmp_path):
    import reference_imports
    reference_imports.import_torchvision()
    from pytorch_fid import fid_score
    a, b = feats
    mu1, s1 = fid_stats.stats_of_features(a)
    mu2, s2 = fid_stats.stats_of_features(b)
    ref = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert abs(ours - ref) <= 1e-6 * abs(ref), (ours, ref)
    assert abs(fid_stats.fid_from_features(a, mu2, s2) - ref) <= 1e-6 * abs(ref)
    # ours -> pytorch-fid: its own reader of a `.npz` path
    fid_stats.write_stats(str(tmp_path / "ours.npz"), mu1, s1)
    m, s = fid_score.compute_statistics_of_path(str(tmp_path / "ours.npz"), None, 1, 1, "cpu")
    assert np.array_equal(m, mu1) and np.array_equal(s, s1)
    # pytorch-fid -> ours: what its save_fid_stats writes (np.savez_compressed(mu=, sigma=))
    np.savez_compressed(tmp_path / "theirs.npz", mu=mu2, sigma=s2)
    m, s = fid_stats.read_stats(str(tmp_path / "theirs.npz"), dim=64)
    assert np.array_equal(m, mu2) and np.array_equal(s, s2)
    # pytorch-fid's statistics are ours (np.mean, np.cov rowvar=False)
    assert np.array_equal(gaussian_stats(a)[1], np.cov(a, rowvar=False))


def test_stats_file_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(fid_stats.StatsFileError, match="no mu or sigma"):
        fid_stats.read_stats(str(tmp_path / "bad.npz"))
    fid_stats.write_stats(str(tmp_path / "ok.npz"), np.zeros(3), np.eye(3))
    with pytest.raises(fid_stats.StatsFileError, match="3-d features, but .* 2048-d"):
        fid_stats.read_stats(str(tmp_path / "ok.npz"), dim=2048)
    with pytest.raises(fid_stats.StatsFileError, match="do not exist"):
        fid_stats.read_stats(str(tmp_path / "none.npz"))


@pytest.mark.parity
def test_kid_and_precision_recall_equal_torch_fidelity(feats):
    import reference_imports
    reference_imports.import_torchvision()
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric
    a, b = feats
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)      # float64 on both sides
    ref = kid_features_to_metric(ta, tb, kid_subsets=7, kid_subset_size=150, rng_seed=2020,
                                 kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
                                 verbose=False)
    mean, std = kid.kid(a, b, subsets=7, subset_size=150)
    assert abs(mean - ref["kernel_inception_distance_mean"]) <= 1e-6 * abs(mean)
    assert abs(std - ref["kernel_inception_distance_std"]) <= 1e-6 * abs(std)
    assert mean > 1e-3                                      # the shift is seen
    a, b = a[:, :4], b[:, :4]      # low-dimensional: the k-NN balls overlap partly
    ref = prc_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), prc_neighborhood=3,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    p, r = precision_recall.precision_recall(a, b)
    # the same counts (torch-fidelity averages its booleans in float32)
    assert round(p * len(a)) == round(ref["precision"] * len(a)), (p, ref)
    assert round(r * len(b)) == round(ref["recall"] * len(b)), (r, ref)
    assert 0 < p < 1 and 0 < r < 1
    with pytest.raises(ValueError, match="subset size 1000"):
        kid.kid(a, b)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random transformers CLIPModel saved as a folder, with the packaged tokenizer and a
    CLIPImageProcessor config (crop 28, normalisation not OpenAI's)."""
    import reference_imports
    reference_imports.import_torchvision()
    import transformers
    folder = str(tmp_path_factory.mktemp("clip"))
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=28, patch_size=7),
        projection_dim=16)
    model = transformers.CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    from diffjax.text import default_tokenizer_dir
    tok = transformers.CLIPTokenizer.from_pretrained(default_tokenizer_dir())
    for name in ("vocab.json", "merges.txt"):       # as in the hub's openai/clip-* folders
        shutil.copy(os.path.join(default_tokenizer_dir(), name), folder)
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 28},
                                           crop_size={"height": 28, "width": 28},
                                           image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25])
    proc.save_pretrained(folder)
    return folder, model, transformers.CLIPProcessor(image_processor=proc, tokenizer=tok)


def _torchmetrics_model(model):
    """torchmetrics 1.9 expects transformers 4's `get_*_features` (tensors); transformers 5
    returns `BaseModelOutputWithPooling` whose `pooler_output` is that tensor (projected).
    This adapter only unwraps it; the model and processor are the real ones."""
    class Unwrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = model
            self.config = model.config

        def get_image_features(self, *a, **k):
            return self.clip.get_image_features(*a, **k).pooler_output

        def get_text_features(self, *a, **k):
            return self.clip.get_text_features(*a, **k).pooler_output
    return Unwrapped().eval()


CAPTIONS = ["a red circle in the top left", "a small blue square", "green triangle",
            "a large yellow star on a white background", "x", "two words"]


@pytest.mark.parity
def test_clip_score_equals_torchmetrics(tiny_clip):
    """Pixels at the processor's crop size (its resize and crop are then identities, in
    transformers and here), so the comparison is exact up to float32 op order."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    from diffjax.metrics.clip_features import CLIPFeatures, aggregate_clip_score
    folder, model, processor = tiny_clip
    images = np.random.default_rng(0).integers(0, 256, (len(CAPTIONS), 28, 28, 3), np.uint8)
    model = _torchmetrics_model(model)
    metric = CLIPScore(model_name_or_path=lambda: (model, processor))
    metric.update([torch.from_numpy(im).permute(2, 0, 1) for im in images], CAPTIONS)
    ref = float(metric.compute())
    ours_features = CLIPFeatures.from_transformers_folder(folder)
    raw = ours_features.cosine_scores(images, CAPTIONS)
    # torchmetrics accumulates the float32 pair scores in a float32 sum (ulp at 35: 4e-6)
    assert abs(aggregate_clip_score(raw) - ref) < 1e-5 * abs(ref), (aggregate_clip_score(raw), ref)
    # the per-pair scores are torchmetrics' too (its functional form, unclamped)
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    pairs, _ = _clip_score_update([torch.from_numpy(im).permute(2, 0, 1) for im in images],
                                  CAPTIONS, model, processor)
    np.testing.assert_allclose(raw, pairs.detach().numpy(), rtol=1e-5)
    assert np.ptp(raw) > 1.0                                   # scores differ per pair


@pytest.mark.parity
def test_clip_processor_resize_and_crop(tiny_clip):
    """Other sizes: shortest-edge resize + centre crop as transformers' CLIPImageProcessor.
    PIL's uint8 bicubic vs torchvision's uint8 antialiased bicubic (same algorithm, integer
    rounding may differ): pixel values within 1 grey level of 255, normalised."""
    from diffjax.metrics.clip_processor import CLIPProcessorConfig, preprocess
    folder, _, processor = tiny_clip
    config = CLIPProcessorConfig.from_folder(folder)
    rng = np.random.default_rng(1)
    for h, w in ((40, 64), (90, 30), (28, 50), (50, 50)):
        im = rng.integers(0, 256, (h, w, 3), np.uint8)
        ref = processor(images=[torch.from_numpy(im).permute(2, 0, 1)],
                        return_tensors="pt")["pixel_values"][0].permute(1, 2, 0).numpy()
        got = preprocess([im], config)[0]
        assert got.shape == ref.shape == (28, 28, 3)
        assert np.abs(got - ref).max() <= 1.01 / (255 * 0.2), (h, w, np.abs(got - ref).max())


def test_compare_image_scorer_hooks():
    """`diffjax compare`'s pipeline scorer computes kid / precision / recall beside frechet
    on the study's CLIP features against the real images (the same functions as above)."""
    from types import SimpleNamespace

    from diffjax.studies.compare_samplers import ImageScorer, real_images
    images = real_images("shapes:train", 24)
    study = SimpleNamespace(grid_prompts=0, feature_extractor="mini",
                            real_images="shapes:test")
    model = SimpleNamespace(seeds=list(range(24)), decode=lambda x: x, prompts=["x"] * 24)
    scorer = ImageScorer(study, model, ("frechet", "kid", "precision", "recall"))
    row = scorer.score(images)
    ours, real = scorer.clip.frechet_features(images), scorer.real_features
    assert row["kid"] == 1000 * kid.kid(ours, real, subset_size=24)[0]
    assert (row["precision"], row["recall"]) == precision_recall.precision_recall(ours, real)
    assert row["frechet"] == frechet_distance(*gaussian_stats(ours), *gaussian_stats(real))
