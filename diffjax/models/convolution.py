"""2D convolutions of the UNet and VAE, with a faster CPU lowering of the small ones.

XLA's CPU convolution kernel reaches about half the speed of its matmul, so small
stride-1 3x3 convolutions with many input channels run on CPU as one matmul over the
shifted input copies (im2col). Every other platform and shape goes to XLA's convolution
unchanged; the platform is the one a program is lowered for, so a program traced here and
compiled for TPU gets XLA's convolution.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.axes import CONV_IN, CONV_OUT

# Stride-1 convolutions on at most this many input pixels run as one matmul over the
# 3x3 patches (im2col) on CPU. Alone, a conv is faster as im2col only at the smallest
# resolutions, but inside a whole UNet call (fused with its neighbouring ops) im2col up
# to 32x32 is the fastest setting measured (docs/performance.md).
IM2COL_MAX_PIXELS = 1024
# ... and only from this many input channels: with few channels the 9 shifted copies cost
# more than XLA's kernel loses (the mini VAE's 16-64 channels train slower as im2col;
# SD1.5's convolutions, >= 320 channels, are unaffected).
IM2COL_MIN_IN_CHANNELS = 256


def _im2col_applies(lhs_shape, rhs_shape, window_strides, padding, lhs_dilation,
                    rhs_dilation, dimension_numbers, feature_group_count) -> bool:
    """Whether a conv is one of the small stride-1 NHWC 3x3-like convs that CPU runs faster
    as im2col (shapes only; the platform is decided at lowering)."""
    kh, kw, c_in, _ = rhs_shape
    _, h, w, _ = lhs_shape
    return not (tuple(window_strides) != (1, 1) or (kh, kw) == (1, 1)
                or h * w > IM2COL_MAX_PIXELS or feature_group_count != 1
                or c_in < IM2COL_MIN_IN_CHANNELS
                or (dimension_numbers is not None
                    and tuple(dimension_numbers.lhs_spec) != (0, 3, 1, 2))  # not NHWC
                or any(d not in (None, 1) for d in (*(lhs_dilation or ()),
                                                     *(rhs_dilation or ())))
                or isinstance(padding, str))


def _im2col_conv(lhs, rhs, padding, precision, **kwargs):
    """A stride-1 NHWC conv as one matmul over the kh*kw shifted input copies."""
    kh, kw, c_in, c_out = rhs.shape
    n = lhs.shape[0]
    x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    patches = jnp.concatenate([x[:, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw)],
                              axis=-1)                                 # [n, oh, ow, 9*c_in]
    out = jnp.dot(patches.reshape(-1, kh * kw * c_in), rhs.reshape(kh * kw * c_in, c_out),
                  precision=precision, **kwargs)
    return out.reshape(n, oh, ow, c_out)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
    """`lax.conv_general_dilated` with a faster lowering of small stride-1 NHWC convs on
    CPU, where XLA's convolution kernel reaches about half its matmul speed; every other
    platform and shape gets XLA's convolution unchanged. Same signature, same result up to
    float reassociation of the 9*C_in-term sums.

    The platform is the one the program is lowered for (`lax.platform_dependent`), not the
    machine tracing it: a program traced on a CPU host and compiled for a TPU slice
    (`diffjax plan`, ahead-of-time lowering) gets XLA's convolution, where im2col would
    write nine copies of every activation to HBM."""
    def xla_conv(lhs, rhs):
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision, **kwargs)

    if not _im2col_applies(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation,
                           rhs_dilation, dimension_numbers, feature_group_count):
        return xla_conv(lhs, rhs)
    return jax.lax.platform_dependent(
        lhs, rhs, cpu=lambda lhs, rhs: _im2col_conv(lhs, rhs, padding, precision, **kwargs),
        default=xla_conv)


def conv(features, kernel=3, stride=1, padding=1, dtype=jnp.float32, name=None):
    """A square 2D conv (NHWC, `padding` pixels on each side or explicit pairs) whose
    kernel is born with logical axes (input, output channels) and which lowers through
    `conv_general_dilated` (im2col on CPU where that is faster)."""
    pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad,
                   dtype=dtype, name=name, conv_general_dilated=conv_general_dilated,
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.lecun_normal(),
                       (None, None, CONV_IN, CONV_OUT)),  # kernel h, w: replicated
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (CONV_OUT,)))
