"""diffjax.hlo_roofline: the per-op roofline `diffjax plan` falls back on, read from
programs really compiled for a v5e chip (libtpu's compile-only client).

Its matmul flops must be exact for the forms XLA's TPU compiler writes matmuls in (a dot,
a convolution, a dense layer whose heads become a padded window, attention's batched
einsums as lhs-dilated windows, a Pallas kernel's declared cost), and a memory-bound op
is charged its bytes / bandwidth, not hidden behind the program's flops.
"""

import pytest

from diffjax import tpu

pytestmark = pytest.mark.skipif(not tpu.libtpu_available(),
                                reason="libtpu not installed: pip install -e '.[tpu]'")

PEAK, BANDWIDTH = 197e12, 819e9      # v5e


def _compiled(fn, *shapes):
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding
    tpu.quiet_libtpu()
    device = tpu.topology_devices("v5e:2x2")[0]
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=SingleDeviceSharding(device))
            for s in shapes]
    return jax.jit(fn).lower(*args).compile()


def _summary(compiled):
    from diffjax.hlo_roofline import Roofline
    return Roofline(compiled.as_text(), PEAK, BANDWIDTH).summary()


def test_matmul_forms_count_exact_flops():
    import jax
    import jax.numpy as jnp

    def dense_heads(x, w):       # a projection to 8 heads x 40, as to_q/to_k/to_v
        return jnp.einsum("bld,dhk->blhk", x, w)

    def attention_logits(q, k):
        return jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    cases = [
        (lambda a, b: a @ b, ((512, 1024), (1024, 256)), 2 * 512 * 1024 * 256),
        (dense_heads, ((2, 4096, 320), (320, 8, 40)), 2 * 2 * 4096 * 320 * 320),
        (attention_logits, ((2, 1024, 8, 40), (2, 1024, 8, 40)), 2 * 2 * 8 * 1024 ** 2 * 40),
    ]
    for fn, shapes, expected in cases:
        s = _summary(_compiled(fn, *shapes))
        assert s["matmul_flops"] == pytest.approx(expected, rel=1e-6), (shapes, s)
    # A 3x3 conv: the TPU compiler re-tiles it ([2,32,32] -> [32,16,5] output rows, 25%
    # padding it really computes), so the count is the compiled conv's, within 3% of XLA's
    # own cost analysis (which adds the elementwise flops) and above the unpadded count.
    compiled = _compiled(conv, (2, 32, 32, 320), (3, 3, 320, 640))
    s = _summary(compiled)
    assert 2 * 2 * 32 * 32 * 640 * 9 * 320 <= s["matmul_flops"]
    assert s["matmul_flops"] == pytest.approx(compiled.cost_analysis()["flops"], rel=0.03)


def test_pallas_kernel_declares_its_flops():
    from diffjax.models.attention import attention
    b, length, h, d = 1, 1024, 4, 64
    s = _summary(_compiled(lambda q, k, v: attention(q, k, v, impl="pallas"),
                           *[(b, length, h, d)] * 3))
    # QK^T and PV: 4 b h L^2 d (the kernel's own cost estimate)
    assert s["matmul_flops"] >= 4 * b * h * length ** 2 * d


def test_memory_bound_ops_cost_their_bytes():
    """An elementwise op on 64 MiB moves at least its input and output through HBM; its
    time is bytes / bandwidth, with no flops. A matmul-heavy program is compute-bound."""
    import jax.numpy as jnp
    n = 32 * 1024 * 1024                            # bf16: 64 MiB in, 64 MiB out
    s = _summary(_compiled(lambda x: jnp.tanh(x) * 2, (n,)))
    assert s["matmul_flops"] == 0
    assert s["hbm_bytes"] >= 2 * 2 * n
    assert s["seconds"] == pytest.approx(s["hbm_bytes"] / BANDWIDTH)
    assert s["memory_bound_seconds"] == pytest.approx(s["seconds"])
    # A large matmul is compute-bound: the compiler's prefetch of an operand into VMEM
    # (an async copy) overlaps it and adds no time.
    big = _summary(_compiled(lambda a, b: a @ b, (4096, 4096), (4096, 4096)))
    assert big["seconds"] == pytest.approx(2 * 4096 ** 3 / PEAK, rel=1e-6)
    assert big["memory_bound_seconds"] == 0


def test_a_loop_body_is_estimated_alone():
    """A scan's body (what the sampler repeats per step) is found and estimated by itself:
    one step's matmul, while the whole program counts the body once (as XLA does)."""
    import jax
    from diffjax.hlo_roofline import Roofline

    def steps(x, w):
        return jax.lax.fori_loop(0, 6, lambda i, y: jax.numpy.tanh(y @ w), x)
    roof = Roofline(_compiled(steps, (1024, 1024), (1024, 1024)).as_text(), PEAK, BANDWIDTH)
    bodies = roof.loop_bodies()
    assert len(bodies) == 1
    step = roof.summary(bodies[0])
    assert step["matmul_flops"] == 2 * 1024 ** 3
    assert roof.summary()["matmul_flops"] == step["matmul_flops"]
    assert 0 < step["seconds"] <= roof.summary()["seconds"]
