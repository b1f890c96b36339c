"""open_clip CLIP (the layout of ViT-H-14, MLPerf's CLIP-score model) through our converter:
image and text embeddings equal open_clip's own `encode_image` / `encode_text` on a tiny
random model (GELU, head width 8 as ViT-H's config style), 1e-5 max abs on embeddings of
order 1 (float32 both sides, op order only). Text goes through our tokenizer (the packaged
CLIP vocabulary) and open_clip's own; images through open_clip's preprocessing transform
(PIL bicubic, centre crop) and ours, within one grey level.
"""

import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
except ModuleNotFoundError:
    torch = None

from diffjax.weights.io import WeightsError
from diffjax.weights.open_clip import configs_from_open_clip

MODEL_CFG = {"embed_dim": 16,
             "vision_cfg": {"image_size": 28, "layers": 2, "width": 32, "head_width": 8,
                            "patch_size": 7},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4,
                          "layers": 2}}
CAPTIONS = ["a red circle in the top left", "a small blue square", "two words"]


@pytest.mark.parity
def test_open_clip_embeddings_equal(tmp_path):
    import reference_imports
    reference_imports.import_torchvision()
    import open_clip
    from open_clip.model import CLIP
    from PIL import Image
    from safetensors.torch import save_file

    from diffjax.metrics.clip_features import CLIPFeatures
    torch.manual_seed(0)
    model = CLIP(**MODEL_CFG).eval()
    with torch.no_grad():                         # non-trivial norms (init: ones / zeros)
        for name, p in model.named_parameters():
            if ("ln" in name) and p.ndim == 1:
                p.copy_((0.5 + torch.rand_like(p)) if name.endswith("weight")
                        else 0.1 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "open_clip_model.safetensors"))
    ours = CLIPFeatures.from_open_clip(str(tmp_path / "open_clip_model.safetensors"),
                                       MODEL_CFG)
    with torch.no_grad():
        ref_text = model.encode_text(open_clip.tokenize(CAPTIONS)).numpy()
    np.testing.assert_allclose(ours._text(ours.text_params, np.asarray(
        ours._tokenizer(CAPTIONS))), ref_text, rtol=0, atol=1e-5)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 50, 3), np.uint8) for _ in range(3)]
    preprocess = open_clip.transform.image_transform(28, is_train=False)
    pixels = torch.stack([preprocess(Image.fromarray(im)) for im in images])
    with torch.no_grad():
        ref_image = model.encode_image(pixels).numpy()
    got_pixels = ours.preprocess(images)
    assert np.abs(got_pixels - pixels.permute(0, 2, 3, 1).numpy()).max() <= 1.01 / (255 * 0.26)
    pooled, embeds = ours._image(ours.vision_params, pixels.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(np.asarray(embeds), ref_image, rtol=0, atol=1e-5)


def test_unsupported_open_clip_configs_are_named():
    text, vision = configs_from_open_clip({**MODEL_CFG, "quick_gelu": True})
    assert (text.hidden_act, vision.num_attention_heads, text.projection_dim) == (
        "quick_gelu", 4, 16)
    with pytest.raises(WeightsError, match="timm_model_name"):
        configs_from_open_clip({**MODEL_CFG, "vision_cfg": {"timm_model_name": "x"}})
