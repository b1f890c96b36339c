"""images.py: init image and mask checks (sizes, channels, ranges, resizing), strength,
output sizes from an aspect ratio, with errors that name what is wrong."""

import numpy as np
import pytest

from diffjax import images

H = W = 32


def test_nearest_size():
    assert images.nearest_size("16:9", 262144, 8) == (384, 680)
    assert images.nearest_size("1:1", 262144, 64) == (512, 512)
    assert images.nearest_size("2:3", 393216, 64) == (768, 512)
    h, w = images.nearest_size("16:9", 262144, 64)
    assert h % 64 == 0 and w % 64 == 0 and (h, w) == (384, 704)
    for bad, msg in (("16x9", "W:H"), ("0:1", "positive"), ("-2", "positive")):
        with pytest.raises(images.ImageConditioningError, match=msg):
            images.nearest_size(bad, 262144, 8)
    with pytest.raises(images.ImageConditioningError, match="pixels"):
        images.nearest_size("1:1", 10, 8)


def test_bad_inputs_are_named():
    big = np.zeros((40, 48, 3), np.uint8)
    with pytest.raises(images.ImageConditioningError, match=r"40x48 .* output is 32x32"):
        images.check_init_image(big, H, W, resize=False)
    with pytest.warns(UserWarning, match="resized to 32x32"):
        assert images.check_init_image(big, H, W, resize=True).shape == (H, W, 3)
    with pytest.raises(images.ImageConditioningError, match=r"\[H, W, 3\]"):
        images.check_init_image(np.zeros((H, W)), H, W)
    with pytest.raises(images.ImageConditioningError, match="single-channel"):
        images.check_mask(np.zeros((H, W, 3), np.uint8), H, W)
    with pytest.raises(images.ImageConditioningError, match=r"mask is 16x32 .* image is 32x32"):
        images.check_mask(np.zeros((16, 32), np.uint8), H, W)
    for s in (-0.1, 1.5):
        with pytest.raises(images.ImageConditioningError, match=r"strength .* \[0, 1\]"):
            images.check_strength(s)
