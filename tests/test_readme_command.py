"""The README's command 1 keeps producing the same files, byte for byte.

`diffjax sample --prompt "a red circle in the top left" --seeds 0:4 --out DIR` with the packaged
diffjax-mini model. The hashes were recorded from main before the package redesign (issue 24,
2026-11-30, 2-core AMD EPYC VM, jax 0.10.2 CPU, one device): a refactor of the sampling path,
the loader or the configs that changes a single latent bit, the PNG encoding or the metadata
fails here. Exact equality is the point, so there is no tolerance; the command runs as a user
runs it (one CPU device, no test-only XLA or precision flags), in a subprocess.
"""

import hashlib
import os
import subprocess
import sys

README_COMMAND_1_PNG_SHA256 = {
    "000000-seed0.png": "34da00db7c4ce5f248c29cf67e0002231af76d99839dbe626633c8650b3eb8ec",
    "000001-seed1.png": "d8a73e11c2940673f3b5717835a0ae219f8dcca12dd15a8fc2ed05e98c3127da",
    "000002-seed2.png": "e1f413604257670d1f1546c6d85bbe6f58c2dae13b1304182d3c289c6c88b504",
    "000003-seed3.png": "ef7cb96a93928a36a6f485d6fb932b5d3857db4665a794ce27254f6f250fceb5",
}


def _user_env() -> dict:
    """The environment without conftest's 8 fake devices and matmul precision flag."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_DEFAULT_MATMUL_PRECISION", None)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_readme_command_1_pngs_are_byte_identical(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "diffjax.cli", "sample", "--prompt",
         "a red circle in the top left", "--seeds", "0:4", "--out", str(out),
         f"--config.compilation_cache={tmp_path / 'cache'}"],
        cwd=tmp_path, env=_user_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
           for name in sorted(os.listdir(out)) if name.endswith(".png")}
    assert got == README_COMMAND_1_PNG_SHA256
    assert (out / "config.json").exists() and (out / "index.jsonl").exists()
