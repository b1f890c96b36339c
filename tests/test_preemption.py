"""Preemption and resume of sampling jobs (diffjax/commands/job.py).

- SIGTERM during a real `diffjax sample` job: the batch in flight is finished and written,
  the job stops with exit status 75 and says how to resume, no partial file is left; a
  rerun completes the job without rewriting the finished files.
- A second signal ends the process at once.
- The job runner against a stand-in pipeline (no model, no compile): a billion-seed job
  starts at once in constant memory and stops cleanly on SIGTERM; a resumed job rewrites
  exactly the files that are missing, truncated or hold another item's metadata.
"""

import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from diffjax import outputs, prompts
from diffjax.commands import job

# `diffjax sample`, sending itself SIGTERM at its first PNG write: the signal lands while a
# batch is being written, deterministically.
_TERM_AT_FIRST_WRITE = r'''
import os, signal, sys
from diffjax import cli, outputs
real, sent = outputs.atomic_write, []
def atomic_write(path, data):
    if os.fspath(path).endswith(".png") and not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
    real(path, data)
outputs.atomic_write = atomic_write
sys.exit(cli.main(sys.argv[1:]))
'''


@pytest.mark.slow
def test_sigterm_stops_after_the_batch_and_rerun_completes(tmp_path):
    wrapper = tmp_path / "term.py"
    wrapper.write_text(_TERM_AT_FIRST_WRITE)
    out = tmp_path / "job"
    args = ["sample", "--prompt", "a red circle", "--model", "tiny", "--seeds", "0:24",
            "--config.sampler.steps=2", "--config.height=32", "--config.width=32",
            "--config.batch_size=8", f"--config.compilation_cache={tmp_path / 'cache'}",
            "--out", str(out)]
    r = subprocess.run([sys.executable, str(wrapper), *args], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == job.EXIT_STOPPED, r.stderr[-3000:]
    assert "SIGTERM" in r.stderr and "rerun the same command" in r.stderr.lower()
    assert "Traceback" not in r.stderr
    names = sorted(os.listdir(out))
    pngs = [n for n in names if n.endswith(".png")]
    assert len(pngs) == 8                                   # the batch in flight, whole
    assert not [n for n in names if ".tmp-" in n]
    for n in pngs:
        with Image.open(out / n) as im:
            im.load()
    assert len((out / "index.jsonl").read_text().splitlines()) == 8
    before = {n: os.stat(out / n).st_mtime_ns for n in pngs}
    r = subprocess.run([sys.executable, "-m", "diffjax.cli", *args], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len([n for n in os.listdir(out) if n.endswith(".png")]) == 24
    assert {n: os.stat(out / n).st_mtime_ns for n in pngs} == before   # not redone
    assert len((out / "index.jsonl").read_text().splitlines()) == 24


def test_second_signal_exits_at_once():
    code = ("import os, signal, sys, time\n"
            "from diffjax.commands.job import StopRequest\n"
            "with StopRequest() as stop:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(0.1)\n"
            "    assert stop.requested\n"
            "    print('first handled', flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(30)\n")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "first handled", r.stderr
    assert r.returncode == -signal.SIGINT and time.time() - t0 < 20


# ----------------------------------------------------------------------------------------
class FakePipe:
    """What run_job needs of a TextToImage: an image per seed, and its metadata."""

    def __init__(self, on_call=None):
        self.calls, self.on_call = 0, on_call

    def generate_local(self, prompts_, negatives, seeds):
        self.calls += 1
        if self.on_call:
            self.on_call(self.calls)
        images = np.stack([np.full((4, 4, 3), (s % 256) / 255.0, np.float32) for s in seeds])
        return images, list(range(len(seeds)))

    def metadata(self, prompt, negative_prompt, seed):
        return dict(prompt=prompt, negative_prompt=negative_prompt, seed=int(seed), steps=2,
                    version="test")


def _term_on(call):
    def hook(n):
        if n == call:
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def test_billion_seed_job_starts_at_once_and_stops_cleanly(tmp_path):
    from etils import epath
    tracemalloc.start()
    t0 = time.perf_counter()
    items = prompts.items_for_prompt("a red circle", prompts.parse_seeds("0:1000000000"))
    assert len(items) == 10**9 and items[999_999_999].seed == 999_999_999
    pipe = FakePipe(on_call=_term_on(2))
    code = job.run_job(pipe, items, epath.Path(tmp_path), 8, list(range(8)))
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == job.EXIT_STOPPED and pipe.calls == 2
    assert elapsed < 20 and peak < 50e6, (elapsed, peak)
    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    assert len(pngs) == 16 and pngs[0] == "000000-seed0.png"
    assert len((tmp_path / "index.jsonl").read_text().splitlines()) == 16


def test_resume_rewrites_exactly_the_bad_files(tmp_path):
    from etils import epath
    out = epath.Path(tmp_path)
    items = prompts.items_for_prompt("a red circle", range(20))
    assert job.run_job(FakePipe(), items, out, 8, list(range(8))) == 0
    files = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    assert len(files) == 20
    first = (tmp_path / files[0]).read_bytes()
    (tmp_path / files[3]).write_bytes((tmp_path / files[3]).read_bytes()[:80])   # truncated
    (tmp_path / files[5]).unlink()                                               # missing
    (tmp_path / files[17]).write_bytes(outputs.png_bytes(                        # foreign
        np.zeros((4, 4, 3), np.uint8), dict(prompt="another job", seed=17)))
    (tmp_path / ".000001-seed1.png.tmp-123").write_bytes(b"half")                 # killed write
    stamps = {f: os.stat(tmp_path / f).st_mtime_ns for f in files if f not in
              (files[3], files[5], files[17])}
    pipe = FakePipe()
    assert job.run_job(pipe, items, out, 8, list(range(8))) == 0
    assert pipe.calls == 2                        # batches 0 and 2; batch 1 is intact
    assert {f: os.stat(tmp_path / f).st_mtime_ns for f in stamps} == stamps
    assert (tmp_path / files[0]).read_bytes() == first
    for f in (files[3], files[5], files[17]):
        assert outputs.png_matches(tmp_path / f, FakePipe().metadata(
            "a red circle", "", int(f.split("seed")[1][:-4])))
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_full_disk_leaves_nothing_half_written(tmp_path, monkeypatch):
    """ENOSPC while writing: the temporary file is removed, the target untouched, and the
    CLI reports it as one line (exit 2)."""
    import errno

    from etils import epath
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def full(self, data):
        with open(self, "wb") as f:
            f.write(data[:3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self))
    monkeypatch.setattr(type(epath.Path(tmp_path)), "write_bytes", full)
    with pytest.raises(OSError) as e:
        outputs.atomic_write(target, b"new image")
    assert e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == ["x.png"] and target.read_bytes() == b"old"
    from diffjax import cli
    assert "No space left on device" in cli.one_line(e.value)


def test_ctrl_c_before_the_job_is_one_line(monkeypatch, capsys):
    from diffjax import cli
    from diffjax.commands import samplers

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(samplers, "run", interrupted)
    assert cli.main(["samplers"]) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_job_identity_ignores_launch_settings_and_new_default_keys():
    """A moved folder, a new coordinator, another process count, mesh or cache is the same
    job; so is a config.json written before a key existed, while the key keeps its
    default. Anything that changes the images is another job."""
    from diffjax.commands.sample import identity_changes
    from diffjax.config import config_to_dict, load_config
    old = config_to_dict(load_config("diffjax.configs.sample", ["prompt=a", "out=/a"]))
    moved = config_to_dict(load_config("diffjax.configs.sample", [
        "prompt=a", "out=/b", "distributed.coordinator=10.0.0.1:1234",
        "distributed.num_processes=4", "distributed.process_id=3", "mesh.shape=(2,2,2)",
        "compilation_cache="]))
    assert identity_changes(old, moved) == []
    older = dict(old)
    del older["guidance_rescale"]                  # a key this job's version lacked
    assert identity_changes(older, moved) == []
    changed = config_to_dict(load_config("diffjax.configs.sample", [
        "prompt=a", "guidance_rescale=0.5", "sampler.steps=3"]))
    assert identity_changes(older, changed) == ["guidance_rescale", "sampler.steps"]
