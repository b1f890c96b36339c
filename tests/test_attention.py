"""diffjax.models.attention: every kernel ("chunked", "cudnn", "auto") equals the plain
einsum softmax ("xla")."""

import numpy as np
import pytest

import jax.numpy as jnp

from diffjax.models import attention as attention_kernels
from diffjax.models.attention import attention


@pytest.mark.parametrize("group", [1, 2, 6])
def test_attention_impls_agree(monkeypatch, group):
    """Every kernel equals the plain einsum softmax (atol 1e-5: float32 reassociation of a
    300-key sum). The chunked kernel's block budget is shrunk so that its loop runs with 1,
    2 and all 6 (batch, head) pairs per block over 3 blocks of rows, one of them padded,
    with and without a causal mask."""
    monkeypatch.setattr(attention_kernels, "CHUNK_BLOCK_ELEMENTS", group * 128 * 300)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 300, 3, 8)), jnp.float32) for _ in range(3))
    for causal in (False, True):
        ref = attention(q, k, v, impl="xla", is_causal=causal)
        for impl in ("chunked", "cudnn", "auto"):
            np.testing.assert_allclose(
                attention(q, k, v, impl=impl, chunk_size=128, is_causal=causal), ref,
                atol=1e-5, rtol=0, err_msg=f"{impl} causal={causal}")


def test_auto_is_chosen_for_the_platform_lowered_for(monkeypatch):
    """"auto" is the chunked kernel in a program lowered for CPU and XLA's einsum in the
    same trace lowered for TPU (ahead of time, as `diffjax plan` does on a CPU host): the
    choice follows the target platform, not the tracing machine's backend. The chunked
    kernel's loop over blocks is a while loop; XLA's einsum has none."""
    import jax
    monkeypatch.setattr(attention_kernels, "CHUNK_BLOCK_ELEMENTS", 128 * 300)
    q = jnp.zeros((2, 300, 3, 8), jnp.float32)
    traced = jax.jit(lambda q: attention(q, q, q, impl="auto", chunk_size=128)).trace(q)
    cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    tpu = traced.lower(lowering_platforms=("tpu",)).as_text()
    assert "stablehlo.while" in cpu
    assert "stablehlo.while" not in tpu and "stablehlo.dot_general" in tpu
