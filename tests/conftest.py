"""Test setup: 8 fake CPU devices (set before jax is imported) so sharding tests run here.

JAX_PLATFORMS set beforehand (e.g. =cuda, tools/gpu_check.sh) runs the tests there; the
sharding tests that need 8 devices are then deselected with -k "not shard".
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Parity tests compare float32 results at ~1e-5; keep matmuls at full precision on CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import jax  # noqa: E402

if os.environ["JAX_PLATFORMS"] == "cpu":
    assert jax.device_count() == 8, "conftest must run before anything imports jax"
