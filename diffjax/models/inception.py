"""The FID Inception-v3 (TensorFlow's 2015-12-05 graph, as pytorch-fid ports it) in Flax.

FID is defined by one network: the Inception-v3 that TensorFlow's original FID code used.
pytorch-fid ports it as torchvision's `Inception3` with four blocks patched (`FIDInceptionA`,
`FIDInceptionC`: average pools that do not count padding; `FIDInceptionE_1` likewise;
`FIDInceptionE_2`: a max pool in the pool branch), and reads the 2048-d output of the final
average pool ("pool3"). This module is that network up to pool3, with parameter names
mirroring torchvision's module names (`Mixed_5b/branch1x1/conv`, `.../bn`), so the
converter (`diffjax.weights.inception`) is a name-by-name mapping of pytorch-fid's
`pt_inception-2015-12-05-*.pth`.

Batch norm is inference-only (running statistics stored as params `mean`/`var`: nothing
is ever trained here). `channel_divisor` > 1 divides every width (a cheap network of the same
graph, for tests and smoke runs; its features are NOT comparable with published FIDs).
Inputs are NHWC in [-1, 1] at any size >= 75 px; the resize and the 2x-1 scaling of
pytorch-fid live in `diffjax.metrics.inception_features`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class InceptionConfig:
    channel_divisor: int = 1      # 1: the FID network; > 1: a narrower copy (tests only)
    dtype: str = "float32"

    def __post_init__(self):
        if self.channel_divisor not in (1, 2, 4, 8, 16):
            raise ValueError(f"InceptionConfig.channel_divisor must divide every width "
                             f"(1, 2, 4, 8 or 16), got {self.channel_divisor}")

    @property
    def features(self) -> int:
        """Width of the pool3 features (2048 for the FID network)."""
        return 2048 // self.channel_divisor


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class BatchNormInference(nn.Module):
    """torch BatchNorm2d in eval mode: (x - mean) / sqrt(var + eps) * scale + bias."""
    eps: float = 1e-3

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        x = x.astype(jnp.float32)
        return (x - mean) * (scale / jnp.sqrt(var + self.eps)) + bias


class BasicConv2d(nn.Module):
    """torchvision's BasicConv2d: conv (no bias) -> batch norm (eps 1e-3) -> ReLU."""
    features: int
    kernel: int | tuple[int, int]
    stride: int = 1
    padding: int | tuple[int, int] = 0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel), strides=_pair(self.stride),
                    padding=((ph, ph), (pw, pw)), use_bias=False, dtype=jnp.dtype(self.dtype),
                    name="conv")(x)
        x = BatchNormInference(name="bn")(x)
        return nn.relu(x).astype(jnp.dtype(self.dtype))


def _convs(div: int, dtype: str):
    """`c(width, kernel, ..., name=...)`: a BasicConv2d of the published width divided by
    `div` (the reduced-width test configs), in `dtype`; every Inception block builds its
    branches with it."""
    def conv(features, *args, name, **kwargs):
        return BasicConv2d(features // div, *args, **kwargs, dtype=dtype, name=name)
    return conv


def _avg_pool_3x3_same(x):
    """TensorFlow's 3x3 stride-1 average pool: padding is not counted in the mean
    (pytorch-fid's `count_include_pad=False` patch)."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    pool_features: int
    div: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        c = _convs(self.div, self.dtype)
        b1 = c(64, 1, name="branch1x1")(x)
        b5 = c(48, 1, name="branch5x5_1")(x)
        b5 = c(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = c(64, 1, name="branch3x3dbl_1")(x)
        b3 = c(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = c(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = c(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
    div: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        c = _convs(self.div, self.dtype)
        b3 = c(384, 3, stride=2, name="branch3x3")(x)
        bd = c(64, 1, name="branch3x3dbl_1")(x)
        bd = c(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = c(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], -1)


class InceptionC(nn.Module):
    channels_7x7: int
    div: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        c = _convs(self.div, self.dtype)
        c7 = self.channels_7x7  # c() divides it like every width
        b1 = c(192, 1, name="branch1x1")(x)
        b7 = c(c7, 1, name="branch7x7_1")(x)
        b7 = c(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = c(c7, 1, name="branch7x7dbl_1")(x)
        bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = c(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = c(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = c(192, 1, name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
    div: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        c = _convs(self.div, self.dtype)
        b3 = c(192, 1, name="branch3x3_1")(x)
        b3 = c(320, 3, stride=2, name="branch3x3_2")(b3)
        b7 = c(192, 1, name="branch7x7x3_1")(x)
        b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = c(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], -1)


class InceptionE(nn.Module):
    """`max_pool`: FIDInceptionE_2 (Mixed_7c) pools its pool branch by max, not average,
    as TensorFlow's graph does (pytorch-fid: "likely an error" in that graph, kept for FID)."""
    max_pool: bool
    div: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        c = _convs(self.div, self.dtype)
        b1 = c(320, 1, name="branch1x1")(x)
        b3 = c(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([c(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              c(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
        bd = c(448, 1, name="branch3x3dbl_1")(x)
        bd = c(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([c(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              c(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3_same(x)
        bp = c(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], -1)


class FIDInceptionV3(nn.Module):
    """x [B, H, W, 3] in [-1, 1] -> pool3 features [B, 2048 / channel_divisor] (float32)."""
    config: InceptionConfig = InceptionConfig()

    @nn.compact
    def __call__(self, x):
        d, dt = self.config.channel_divisor, self.config.dtype
        c = _convs(d, dt)
        x = x.astype(jnp.dtype(dt))
        x = c(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = c(32, 3, name="Conv2d_2a_3x3")(x)
        x = c(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = c(80, 1, name="Conv2d_3b_1x1")(x)
        x = c(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool, d, dt, name=name)(x)
        x = InceptionB(d, dt, name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, d, dt, name=name)(x)
        x = InceptionD(d, dt, name="Mixed_7a")(x)
        x = InceptionE(False, d, dt, name="Mixed_7b")(x)
        x = InceptionE(True, d, dt, name="Mixed_7c")(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))   # adaptive average pool to 1x1
