"""The package boundary: a wheel installed into a fresh venv runs every command from a
directory outside the checkout (nothing a command needs at run time may live beside the
package: default configs, the study runner, the packaged model and vocabulary).

One build and one install for the file (module fixture, about two minutes on a 2-core CPU,
most of it pip unpacking jax and tensorflow-datasets); each command then runs on its
smallest settings. The build copies only what a wheel is built from (pyproject.toml,
README.md, diffjax/) into a temporary folder, so it leaves nothing in the checkout.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Test-harness settings that a user's shell does not have (conftest's 8 fake devices, full
# matmul precision) and anything that could put the checkout on the path.
HARNESS_ENV = ("PYTHONPATH", "XLA_FLAGS", "JAX_DEFAULT_MATMUL_PRECISION")


def _run(cmd, cwd, env, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n" + (
        r.stdout[-2000:] + r.stderr[-4000:])
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the venv's bin folder, a folder outside the checkout to run in, the subprocess env)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(os.path.join(REPO, "diffjax"), source / "diffjax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    env = {k: v for k, v in os.environ.items() if k not in HARNESS_ENV}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root / "dist"),
          str(source)], root, env)
    (wheel,) = (root / "dist").glob("diffjax-*.whl")
    _run([sys.executable, "-m", "venv", str(root / "venv")], root, env)
    bin_dir = root / "venv" / ("Scripts" if os.name == "nt" else "bin")
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "-c",
          os.path.join(REPO, "constraints.txt"), str(wheel)], root, env)
    work = root / "work"
    work.mkdir()
    yield bin_dir, work, env
    shutil.rmtree(root, ignore_errors=True)  # the venv is ~1.3 GB; pytest keeps 3 basetemps


def test_the_installed_package_is_imported_not_the_checkout(installed):
    bin_dir, work, env = installed
    r = _run([str(bin_dir / "python"), "-c", "import diffjax; print(diffjax.__file__)"],
             work, env)
    path = os.path.realpath(r.stdout.strip())
    assert path.startswith(os.path.realpath(bin_dir.parent)), path
    assert not path.startswith(os.path.realpath(REPO) + os.sep), path


def test_sample_with_the_default_model(installed):
    bin_dir, work, env = installed
    _run([str(bin_dir / "diffjax"), "sample", "--prompt", "a blue square in the center",
          "--seeds", "0:2", "--out", "out"], work, env)
    for name in ("000000-seed0.png", "000001-seed1.png", "index.jsonl", "config.json"):
        assert (work / "out" / name).stat().st_size > 0, name
    assert json.loads((work / "out" / "config.json").read_text())["model"] == "mini"


def test_compare_on_a_tiny_study(installed):
    """The default study (the exact GMM benchmark), shrunk to 2 samplers x 1 step count."""
    bin_dir, work, env = installed
    _run([str(bin_dir / "diffjax"), "compare", "--out", "study", "--no-progress",
          "--config.samplers=euler,dpmpp_2m", "--config.steps=3", "--config.seeds=8",
          "--config.model.dim=2", "--config.reference.steps=20", "--config.metrics=rmse"],
         work, env)
    for name in ("table.md", "results.json", "results.csv", "config.json"):
        assert (work / "study" / name).stat().st_size > 0, name
    rows = json.loads((work / "study" / "results.json").read_text())["rows"]
    assert [r["sampler"] for r in rows] == ["euler", "dpmpp_2m"]


def test_bench_on_the_tiny_preset(installed):
    bin_dir, work, env = installed
    _run([str(bin_dir / "diffjax"), "bench", "--out", "bench", "--config.steps=1",
          "--config.repeats=1", "--config.batch_sizes=(1,)", "--config.startup=false"],
         work, env)
    for name in ("results.json", "results.md", "config.json"):
        assert (work / "bench" / name).stat().st_size > 0, name
    (row,) = json.loads((work / "bench" / "results.json").read_text())["rows"]
    assert row["batch"] == 1 and row["sample_s"] > 0


def test_samplers(installed):
    bin_dir, work, env = installed
    out = _run([str(bin_dir / "diffjax"), "samplers"], work, env).stdout
    assert "euler" in out and "dpmpp_2m" in out
