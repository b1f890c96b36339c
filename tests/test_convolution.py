"""diffjax.models.convolution: the CPU lowering of convolutions (im2col where it is faster)
takes the expected path and equals XLA's convolution; other platforms keep XLA's."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from diffjax.models.convolution import conv_general_dilated


@pytest.mark.parametrize("shape,kernel,padding,im2col", [
    ((2, 8, 8, 256), 3, ((1, 1), (1, 1)), True), ((1, 5, 7, 256), 3, ((0, 1), (0, 1)), True),
    ((2, 8, 8, 16), 3, ((1, 1), (1, 1)), False), ((1, 5, 7, 3), 3, ((1, 1), (1, 1)), False),
    ((2, 4, 4, 8), 1, ((0, 0), (0, 0)), False)])
def test_conv_lowering_equals_xla(shape, kernel, padding, im2col):
    """conv's CPU lowering (im2col for small stride-1 convs with >= 256 input
    channels, XLA's conv otherwise and on other backends) takes the expected path and equals
    lax.conv_general_dilated, stride 1 and 2, odd sizes and asymmetric padding included.
    Tolerance 1e-5 x max|ref|: float32 sums of up to 2,304 terms reordered."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, shape[-1], 6)), jnp.float32)
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    for strides in ((1, 1), (2, 2)):
        ref = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)

        def lowered(x, w, strides=strides):
            return conv_general_dilated(x, w, strides, padding, lhs_dilation=(1, 1),
                                        rhs_dilation=(1, 1), dimension_numbers=dn)
        out = lowered(x, w)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=1e-5 * float(jnp.abs(ref).max()), rtol=0)
        as_matmul = strides == (1, 1) and im2col and jax.default_backend() == "cpu"
        here = jax.jit(lowered).lower(x, w).as_text()
        assert ("stablehlo.convolution" not in here) == as_matmul, strides
        # The platform is the one lowered for, not this machine's: the same trace lowered
        # for TPU (ahead of time, as `diffjax plan` does) keeps XLA's convolution.
        tpu = jax.jit(lowered).trace(x, w).lower(lowering_platforms=("tpu",)).as_text()
        assert "stablehlo.convolution" in tpu and "stablehlo.dot" not in tpu, strides
