"""Test setup: 8 fake CPU devices (set before jax is imported) so sharding tests run here,
and the `parity` marker's skip.

JAX_PLATFORMS set beforehand (e.g. =cuda, tools/gpu_check.sh) runs the tests there; the
sharding tests that need 8 devices are then deselected with -k "not shard".

Parity tests compare against PyTorch references (torch, diffusers, transformers' models) that
only the dev extra installs. They carry `@pytest.mark.parity`; without the dev extra
(`pip install -e . pytest`) they are skipped with the reason, and `pytest -m "not parity"`
leaves them out. With the dev extra installed (CI) nothing is skipped. Test modules import
these references inside a `try` so the pure-JAX tests beside them still run.
"""

import importlib.util
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Parity tests compare float32 results at ~1e-5; keep matmuls at full precision on CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import jax  # noqa: E402
import pytest  # noqa: E402

import reference_imports  # noqa: E402

# The CPU torch cannot load PyPI's torchvision ops: torchvision imports without them, here
# and in the subprocesses tests start (tests/reference_imports.py says why).
reference_imports.install_torchvision_finder()
_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_SITE, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

if os.environ["JAX_PLATFORMS"] == "cpu":
    assert jax.device_count() == 8, "conftest must run before anything imports jax"


def pytest_configure(config):
    """With pytest-xdist's -n N, one worker per test file (`--dist loadfile`): module fixtures
    (compiled pipelines, trained runs) are then built once. Set here rather than in addopts so
    that plain `pytest`, without pytest-xdist installed, still parses its options."""
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadfile"


PARITY_REFERENCES = ("torch", "diffusers")


def missing_parity_references() -> list[str]:
    """The dev extra's reference packages that are not installed (find_spec: nothing imported)."""
    return [name for name in PARITY_REFERENCES if importlib.util.find_spec(name) is None]


def pytest_addoption(parser):
    parser.addoption("--tpu-full", action="store_true",
                     help="also compile the published-size programs for TPU topologies "
                          "(tests marked tpu_full: 1-24 min of wall time each on a 2-core "
                          "machine; the SD1.5 train step needs 21 GB of memory)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--tpu-full"):
        full = pytest.mark.skip(reason="published-size TPU compile (minutes of CPU each): "
                                       "run with pytest --tpu-full")
        for item in items:
            if item.get_closest_marker("tpu_full"):
                item.add_marker(full)
    missing = missing_parity_references()
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"parity test: {', '.join(missing)} not installed "
                                   "(the dev extra: pip install -e '.[dev]')")
    for item in items:
        if item.get_closest_marker("parity"):
            item.add_marker(skip)
