"""The `diffjax` command and the torch-free import, run as a user would (subprocesses)."""

import subprocess
import sys


def _run(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "diffjax.cli", *args], capture_output=True,
                       text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_help_lists_every_command():
    out = _run("--help").stdout
    for name in ("sample", "train", "data", "compare", "convert", "bench", "samplers", "info"):
        assert name in out
    for name in ("info", "samplers", "train", "data", "convert", "bench"):
        assert "usage: diffjax " + name in _run(name, "--help").stdout


def test_info_reports_devices_and_mesh():
    out = _run("info", "--config", "configs/sample.py", "--config.mesh.shape=(-1,1,1)").stdout
    assert "backend" in out and "cpu" in out
    assert "mesh" in out and "'data':" in out


def test_packaged_config_by_module_name_and_a_missing_one():
    out = _run("info", "--config", "diffjax.configs.sample:steps=3",
               "--config.mesh.shape=(-1,1,1)").stdout
    assert "mesh" in out and "'data':" in out
    for spec in ("diffjax.configs.nope", "configs/nope.py"):
        r = _run("info", "--config", spec, check=False)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr, r.stderr


def test_typo_override_exits_nonzero_naming_the_key():
    r = _run("info", "--config", "configs/sample.py", "--config.num_stepz=3", check=False)
    assert r.returncode != 0
    assert "num_stepz" in r.stderr and "sampler.steps" in r.stderr


def test_import_and_tokenize_without_torch():
    code = ("import sys; import diffjax, diffjax.text, diffjax.config, diffjax.sharding, "
            "diffjax.cli; diffjax.text.load_tokenizer()('a cat'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
