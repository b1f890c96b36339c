"""`diffjax sample` as a user runs it: a killed job resumes to exactly the uninterrupted
result; the saved config reproduces the files; bad input fails before anything is written."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

FAST = ["--config.sampler.steps=2", "--config.sampler.name=euler", "--config.batch_size=8"]


def _cmd(out, cache, *extra):
    return [sys.executable, "-m", "diffjax.cli", "sample", "--out", str(out),
            f"--config.compilation_cache={cache}", *FAST, *extra]


def _run(args):
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def _pngs(d):
    return {p: open(os.path.join(d, p), "rb").read()
            for p in sorted(os.listdir(d)) if p.endswith(".png")}


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    lines = [json.dumps({"prompt": f"shape number {i}", "seed": i}) for i in range(200)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_killed_job_resumes_to_identical_output(tmp_path, prompt_file):
    cache = tmp_path / "cache"
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_cmd(killed, cache, "--prompt-file", str(prompt_file)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if killed.exists() and len([p for p in os.listdir(killed) if p.endswith(".png")]) >= 40:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(_pngs(killed))
    assert 40 <= n_before < 200
    r = _run(_cmd(killed, cache, "--prompt-file", str(prompt_file)))
    assert r.returncode == 0, r.stderr
    r = _run(_cmd(clean, cache, "--prompt-file", str(prompt_file)))
    assert r.returncode == 0, r.stderr
    a, b = _pngs(killed), _pngs(clean)
    assert len(a) == 200 and a.keys() == b.keys()
    assert a == b                                   # byte-identical, none truncated
    assert not [p for p in os.listdir(killed) if ".tmp-" in p]
    index = [json.loads(line) for line in open(killed / "index.jsonl")]
    assert [e["index"] for e in index] == list(range(200))
    # the saved config reproduces the run
    again = tmp_path / "again"
    r = _run([sys.executable, "-m", "diffjax.cli", "sample", "--config",
              str(clean / "config.json"), "--out", str(again)])
    assert r.returncode == 0, r.stderr
    assert _pngs(again) == b


@pytest.mark.parametrize("content,msg", [("", "has no prompts"),
                                         ('{"prompt": "a"}\n{"prompt": \n', ":2: not valid JSON")])
def test_bad_prompt_file_writes_nothing(tmp_path, content, msg):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    out = tmp_path / "out"
    r = _run(_cmd(out, tmp_path / "cache", "--prompt-file", str(p)))
    assert r.returncode == 2 and msg in r.stderr
    assert not out.exists()


def test_bad_size_and_other_job_are_named(tmp_path):
    out = tmp_path / "out"
    r = _run(_cmd(out, tmp_path / "cache", "--prompt", "a", "--config.height=30"))
    assert r.returncode == 2 and "height 30 is not a multiple of 4, the VAE's size factor" in r.stderr
    assert not out.exists()
    r = _run(_cmd(out, tmp_path / "cache", "--prompt", "a", "--seeds", "0:2"))
    assert r.returncode == 0, r.stderr
    r = _run(_cmd(out, tmp_path / "cache", "--prompt", "b", "--seeds", "0:2"))
    assert r.returncode == 2 and "holds another job (config keys differ: prompt)" in r.stderr


def test_sampler_options_are_set_recorded_and_checked(tmp_path):
    """--config.sampler.options.s_churn=40 adds the option for heun: config.json and every
    PNG record it, and config.json reruns it; an option heun does not take exits 2 naming
    it and the valid ones, before anything is written."""
    from diffjax import outputs
    cache, out = tmp_path / "cache", tmp_path / "out"
    heun = ["--prompt", "a red circle", "--seeds", "0", "--config.sampler.name=heun"]
    r = _run(_cmd(out, cache, *heun, "--config.sampler.options.s_churn=40"))
    assert r.returncode == 0, r.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["sampler"]["options"] == {"s_churn": 40}
    assert "eta" not in saved["sampler"] and "order" not in saved["sampler"]
    meta = outputs.read_png_metadata(out / "000000-seed0.png")
    assert meta["sampler_options"] == {"s_churn": 40}
    from PIL import Image
    assert "Sampler options: s_churn=40" in Image.open(out / "000000-seed0.png").text["parameters"]
    # s_churn reaches the sampler: the image differs from heun's default
    plain = tmp_path / "plain"
    assert _run(_cmd(plain, cache, *heun)).returncode == 0
    assert "sampler_options" not in outputs.read_png_metadata(plain / "000000-seed0.png")
    assert _pngs(plain) != _pngs(out)
    again = tmp_path / "again"
    r = _run([sys.executable, "-m", "diffjax.cli", "sample", "--config",
              str(out / "config.json"), "--out", str(again)])
    assert r.returncode == 0, r.stderr
    assert _pngs(again) == _pngs(out)

    bad = tmp_path / "bad"
    r = _run(_cmd(bad, cache, *heun, "--config.sampler.options.eta=0.5"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'eta'" in r.stderr and "s_churn" in r.stderr and "s_noise" in r.stderr
    assert not bad.exists()


@pytest.mark.parametrize("sampler,eta,order,options", [
    ("dpmpp_2m_sde", 0.5, 0, (("eta", 0.5),)),
    ("dpmpp_2m_sde", -1.0, 0, ()),
    ("euler", 0.5, 3, ()),             # euler takes neither: they were never passed
    ("lms", -1.0, 3, (("order", 3),)),
    ("lms", -1.0, 0, ()),
])
def test_old_config_json_eta_and_order_become_options(tmp_path, sampler, eta, order, options):
    """config.json files written before sampler.options existed (sampler.eta -1 / order 0
    meaning the sampler's default) still load and run the same options as then."""
    from diffjax.config import config_to_dict, load_config
    from diffjax.sample_spec import spec_from_config
    data = config_to_dict(load_config("diffjax.configs.sample"))
    del data["sampler"]["options"]
    data["sampler"].update(name=sampler, eta=eta, order=order)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert spec_from_config(load_config(str(path))).sampler_options == options
